"""Video classification / regression dataset (train, validation, test) and the bad-input policy.

Items are dicts, which ``VideoClsDataset.collate`` turns into the batch types of ``utils.batch``:
  train       ``{"video": (C,T,H,W) or (S,C,T,H,W), "label": scalar or (S,), "index": int, "bad": {path: reason}}``
              → ``TrainBatch``
  validation  ``{"video", "label", "video_id", "window", "segment", "crop", "valid"}`` (one view per item)
              → ``EvalBatch``
  test        the same; a video expands to window × segment × crop views.
Training items are keyed ``(epoch, index)`` (``utils.seeding.EpochSampler``; a plain index means epoch 0): their
frame indices, replacements and augmentations are a pure function of (seed, epoch, index, repeat), see
``utils.seeding``.
Bad input (unreadable, truncated, zero-byte, missing or non-video files) is logged once per file (per process:
each DataLoader worker holds its own copy of the dataset). Training replaces it by another random sample, at most
``max_retries`` times in a row (then ``BadInputError`` naming the files), and the item carries the files that
failed (``"bad"``, then ``TrainBatch.bad``), which the training loop counts over the whole run, every worker and
rank together: it raises ``BadInputError`` once more than ``max_bad_fraction`` of the list's files failed
(``BadInputTracker.add``). Validation and test never replace: the view comes back as zeros with ``valid=False``.
Evaluation frames are deterministic, so the last decoded clip is kept and reused by the next views of the same
window and segment (the other test crops).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.collate import collate_eval, collate_train
from datasets.lists import ListEntry
from datasets.readers import VideoDecodeError, VideoReader
from datasets.sampling import MODES, clip_indices, trimmed_windows, window_frame_range
from utils.batch import EvalBatch, TrainBatch
from utils.errors import UserError
from utils.seeding import AUGMENT, SAMPLE, sample_key, seed_sequence, seeded_rngs

logger = logging.getLogger(__name__)

T = TypeVar("T")
CHECKER_HINT = ("find every unreadable file before training with: python tools/check_videos.py LIST --prefix DIR "
                "--out CLEAN_DIR (it writes the list without them)")


class BadInputError(UserError, RuntimeError):
    """Training cannot go on: too many unreadable files, or no readable replacement within the retry budget."""


class BadInputTracker:
    """Every bad file with its reason. ``record`` (where files are read: in each DataLoader worker) logs each file
    once; ``add`` (the training loop, in the main process, with the files every rank's batches report) counts them
    over the whole run and stops it once more than ``max_bad_fraction`` of the ``num_files`` files are bad."""

    def __init__(self, num_files: int, max_bad_fraction: float = 0.1, max_retries: int = 10) -> None:
        self.num_files = num_files
        self.max_bad_fraction = max_bad_fraction
        self.max_retries = max_retries
        self.bad: dict[str, str] = {}

    def record(self, error: VideoDecodeError) -> None:
        """Count ``error.path`` as bad (logged the first time only)."""
        if error.path not in self.bad:
            self.bad[error.path] = error.reason
            logger.warning("bad input %s: %s (%d bad so far)", error.path, error.reason, len(self.bad))

    def add(self, bad: dict[str, str]) -> None:
        """Count the files of ``bad`` (path: reason); ``BadInputError`` naming every bad file once more than
        ``max_bad_fraction`` of the files are bad."""
        for path, reason in bad.items():
            self.bad.setdefault(path, reason)
        if self.too_many:
            raise BadInputError(
                f"{len(self.bad)} of {self.num_files} files are unreadable, more than --max_bad_fraction "
                f"{self.max_bad_fraction} allows; {CHECKER_HINT}, or raise --max_bad_fraction:\n{self.describe()}")

    @property
    def too_many(self) -> bool:
        """More than ``max_bad_fraction`` of the files are bad."""
        return len(self.bad) > self.max_bad_fraction * self.num_files

    def describe(self, paths: list[str] | None = None) -> str:
        """``path (reason)`` for ``paths`` (default: every bad file), one per line."""
        return "\n".join(f"  {p} ({self.bad.get(p, 'unknown')})" for p in (paths or list(self.bad)))


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of training sample ``index`` in ``epoch``: its frame indices and bad-input replacements."""
    return np.random.default_rng(seed_sequence(seed, SAMPLE, epoch, index))


def draw_repeats(make: Callable[[], T], count: int, seed: int, epoch: int, index: int) -> list[T]:
    """``make()`` for each repeat r < ``count`` under ``seeded_rngs(seed, AUGMENT, epoch, index, r)``: the
    augmentations of one training sample."""
    out = []
    for repeat in range(count):
        with seeded_rngs(seed, AUGMENT, epoch, index, repeat):
            out.append(make())
    return out


def load_with_replacement(index: int, num_items: int, load: Callable[[int], Any], tracker: BadInputTracker,
                          rng: np.random.Generator) -> tuple[int, Any, dict[str, str]]:
    """Training policy: ``(index, load(index), bad)``, replacing a failing item by random others, at most
    ``max_retries`` times in a row (then ``BadInputError``); ``bad`` holds the files that failed (path: reason),
    which the item carries to the main process's run-wide count (``BadInputTracker.add``)."""
    failed: dict[str, str] = {}
    for _ in range(tracker.max_retries + 1):
        try:
            return index, load(index), failed
        except VideoDecodeError as e:
            tracker.record(e)
            failed[e.path] = e.reason
            index = int(rng.integers(num_items))
    raise BadInputError(f"no readable sample after {tracker.max_retries} replacements in a row (--max_retries); "
                        f"{CHECKER_HINT}; failed files:\n{tracker.describe(list(failed))}")


@dataclass(frozen=True)
class View:
    """One item: a list entry, its window (seconds, or None for the whole clip) and the test segment/crop."""

    video_id: int
    window_index: int
    window: tuple[float, float] | None
    segment: int = 0
    crop: int = 0


class VideoClsDataset(Dataset):
    """Clips of the list ``entries`` sampled by ``sampling`` (see ``datasets.sampling.clip_indices``).

    ``transform`` maps uint8 frames (T,H,W,3) to a float tensor (C,T,H,W); in test mode it also takes the crop
    index. ``open_clip`` turns an entry into a reader. ``windows`` = (trimmed, stride) seconds cuts every entry
    (which then needs a duration) into trimmed windows, each a training sample or an evaluation view.
    """

    def __init__(self, entries: list[ListEntry], mode: str, transform: Callable[..., torch.Tensor], *,
                 sampling: str, num_frames: int, open_clip: Callable[[ListEntry], VideoReader],
                 rate: int = 1, num_segments: int = 1, num_crops: int = 1,
                 windows: tuple[float, float] | None = None, num_sample: int = 1, regression: bool = False,
                 max_retries: int = 10, max_bad_fraction: float = 0.1, zero_frame_size: int = 224,
                 seed: int = 0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        self.entries = entries
        self.mode = mode
        self.transform = transform
        self.sampling = sampling
        self.num_frames = num_frames
        self.open_clip = open_clip
        self.rate = rate
        self.num_segments = num_segments if mode == "test" else 1
        self.num_crops = num_crops if mode == "test" else 1
        self.num_sample = num_sample if mode == "train" else 1
        self.regression = regression
        self.zero_frame_size = zero_frame_size
        self.seed = seed
        self.tracker = BadInputTracker(len(entries), max_bad_fraction, max_retries)
        self.views = self._make_views(windows)
        self._zero: torch.Tensor | None = None
        self._last_clip: tuple[tuple[int, int, int], np.ndarray] | None = None

    def _make_views(self, windows: tuple[float, float] | None) -> list[View]:
        views = []
        for video_id, entry in enumerate(self.entries):
            if windows is None:
                spans: list[tuple[float, float] | None] = [None]
            elif entry.duration is None:
                raise ValueError(f"{entry.path}: trimmed windows need a duration column in the list file")
            else:
                spans = list(trimmed_windows(entry.duration, *windows))
            for w, span in enumerate(spans):
                views += [View(video_id, w, span, s, c)
                          for s in range(self.num_segments) for c in range(self.num_crops)]
        return views

    def __len__(self) -> int:
        return len(self.views)

    @property
    def bad_files(self) -> dict[str, str]:
        """Paths found unreadable so far (in this process) with the reason."""
        return dict(self.tracker.bad)

    def _label(self, video_id: int) -> torch.Tensor:
        value = self.entries[video_id].label
        return torch.tensor(value, dtype=torch.float32 if self.regression else torch.int64)

    def load_frames(self, view: View, rng: np.random.Generator | None = None) -> np.ndarray:
        """Decode the frames of ``view`` (uint8 T×H×W×3); raises ``VideoDecodeError``."""
        reader = self.open_clip(self.entries[view.video_id])
        try:
            total = reader.num_frames
            first, last = (0, None) if view.window is None else window_frame_range(*view.window, reader.fps, total)
            indices = clip_indices(self.sampling, self.mode, total, self.num_frames, rng=rng,
                                   segment=view.segment, num_segments=self.num_segments, rate=self.rate,
                                   first=first, last=last)
            return reader.get_frames(indices)
        finally:
            reader.close()

    def collate(self, items: list[dict[str, Any]]) -> TrainBatch | EvalBatch:
        """The DataLoader's ``collate_fn``: a ``TrainBatch`` in training, else an ``EvalBatch``."""
        return collate_train(items, self.num_sample) if self.mode == "train" else collate_eval(items)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Training: ``key`` is ``(epoch, index)`` or an index; evaluation: the view index."""
        if self.mode == "train":
            return self._train_item(*sample_key(key))
        return self._eval_item(key)

    def _train_item(self, epoch: int, index: int) -> dict[str, Any]:
        rng = sample_rng(self.seed, epoch, index)
        source, frames, bad = load_with_replacement(index, len(self),
                                                    lambda i: self.load_frames(self.views[i], rng), self.tracker, rng)
        label = self._label(self.views[source].video_id)
        clips = draw_repeats(lambda: self.transform(frames), self.num_sample, self.seed, epoch, index)
        if self.num_sample > 1:
            video = torch.stack(clips)
            label = label.repeat(self.num_sample)
        else:
            video = clips[0]
        return {"video": video, "label": label, "index": source, "bad": bad}

    def _apply_eval_transform(self, frames: np.ndarray, view: View) -> torch.Tensor:
        return self.transform(frames, view.crop) if self.mode == "test" else self.transform(frames)

    def _eval_frames(self, view: View) -> np.ndarray:
        """Frames of an evaluation view; consecutive crops of one window and segment share one decode."""
        key = (view.video_id, view.window_index, view.segment)
        if self._last_clip is None or self._last_clip[0] != key:
            self._last_clip = None  # free the previous clip first; nothing stale is left if decoding fails
            self._last_clip = (key, self.load_frames(view))
        return self._last_clip[1]

    def _eval_item(self, index: int) -> dict[str, Any]:
        view = self.views[index]
        try:
            video, valid = self._apply_eval_transform(self._eval_frames(view), view), True
        except VideoDecodeError as e:
            self.tracker.record(e)
            video, valid = self._zero_video(view), False
        return {"video": video, "label": self._label(view.video_id), "video_id": view.video_id,
                "window": view.window_index, "segment": view.segment, "crop": view.crop, "valid": valid}

    def _zero_video(self, view: View) -> torch.Tensor:
        """Zeros shaped like a real view (the transform applied to black frames), for unreadable videos."""
        if self._zero is None:
            size = self.zero_frame_size
            black = np.zeros((self.num_frames, size, size, 3), dtype=np.uint8)
            self._zero = torch.zeros_like(self._apply_eval_transform(black, view))
        return self._zero
