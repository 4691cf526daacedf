"""Videos in, model inputs out: the test views or sliding windows of each video, decoded in worker processes.

Shared by ``tools/predict.py``, ``tools/extract_features.py`` and ``tools/export.py``; the frame indices come from
``datasets.sampling`` and the pixels from ``datasets.transforms.TestTransform``, exactly as in the multi-view test of
``run_class_finetuning.py``:

* whole video: ``num_segments`` temporal segments × ``num_crops`` spatial crops (``clip_indices(sampling, "test")``);
* sliding windows (``window_seconds``, ``stride_seconds``): the windows of ``trimmed_windows`` over the video's
  duration (frame count / fps), each cut to its frames with ``window_frame_range`` and sampled like a whole video
  (sparse sampling only), as the trimmed-window test of LVU / Breakfast / COIN.

Views come segment-major within a window (view = (window · J + segment) · K + crop), each with a ``ViewInfo``.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datasets.lists import read_paths
from datasets.readers import VideoDecodeError, VideoReader, open_video
from datasets.sampling import VIDEO_SAMPLINGS, clip_indices, trimmed_windows, window_frame_range
from datasets.transforms import TestTransform
from tools.build_list import VIDEO_EXTENSIONS

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """Bad command-line input (a missing file or folder, contradictory flags)."""


def add_video_source_args(parser: argparse.ArgumentParser) -> None:
    """The flags `videos_from_args` reads: --video, --list (with --prefix, --split) or --folder."""
    source = parser.add_argument_group("videos (exactly one of --video, --list, --folder)")
    source.add_argument("--video", default=None, help="one video file")
    source.add_argument("--list", default=None, help="list file: the first field of each line is a video path")
    source.add_argument("--prefix", default="", help="folder the --list paths are relative to")
    source.add_argument("--split", default=" ", help="field separator of --list")
    source.add_argument("--folder", default=None, help="every video file under this folder (recursive)")


def videos_from_args(args: argparse.Namespace) -> list[str]:
    """`collect_videos` of the flags added by `add_video_source_args`."""
    return collect_videos(args.video, args.list, args.prefix, args.folder, args.split)


def collect_videos(video: str | None = None, list_file: str | None = None, prefix: str = "",
                   folder: str | None = None, split: str = " ") -> list[str]:
    """The video paths of exactly one input: a file, a list (first field of each line, joined to ``prefix``) or
    every video file under a folder (recursive, sorted)."""
    if sum(x is not None for x in (video, list_file, folder)) != 1:
        raise InputError("give exactly one of --video, --list or --folder")
    if video is not None:
        if not Path(video).is_file():
            raise InputError(f"--video {video}: no such file")
        return [video]
    if list_file is not None:
        try:
            paths = [entry.path for entry in read_paths(list_file, split, prefix)]
        except (ValueError, UnicodeDecodeError) as err:
            raise InputError(f"--list {list_file}: {err}") from None
        unique = list(dict.fromkeys(paths))
        if len(unique) < len(paths):
            logger.warning("--list %s names %d videos more than once; each is processed once", list_file,
                           len(paths) - len(unique))
        return unique
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"--folder {folder}: not a folder")
    videos = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not videos:
        raise InputError(f"--folder {folder}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
    return videos


def output_stems(paths: Sequence[str]) -> list[str]:
    """The file stem of each video, which names its output files; two videos sharing one is an error."""
    seen: dict[str, str] = {}
    for path in paths:
        stem = Path(path).stem
        if stem in seen:
            raise InputError(f"{seen[stem]} and {path} have the same file stem {stem!r}, which names the output "
                             f"files; rename one or process them separately")
        seen[stem] = path
    return list(seen)


@dataclass(frozen=True)
class ViewPlan:
    """How one video becomes views: frames and crop size, test views per window, optional sliding windows."""

    num_frames: int
    input_size: int
    num_segments: int = 1
    num_crops: int = 1
    sampling: str = "sparse"
    sampling_rate: int = 4
    window_seconds: float | None = None
    stride_seconds: float | None = None
    backend: str = "auto"

    def __post_init__(self) -> None:
        if min(self.num_frames, self.input_size, self.num_segments, self.num_crops, self.sampling_rate) < 1:
            raise InputError("frames, input size, segments, crops and sampling rate must be >= 1")
        if self.sampling not in VIDEO_SAMPLINGS:
            raise InputError(f"unknown sampling {self.sampling!r}; choose from {VIDEO_SAMPLINGS}")
        if (self.window_seconds is None) != (self.stride_seconds is None):
            raise InputError("sliding windows need both --window_seconds and --stride_seconds")
        if self.window_seconds is not None:
            if not (self.window_seconds > 0 and self.stride_seconds > 0):
                raise InputError(f"--window_seconds {self.window_seconds} and --stride_seconds "
                                 f"{self.stride_seconds} must be > 0")
            if self.sampling != "sparse":
                raise InputError(f"sliding windows use sparse sampling, not --sampling {self.sampling}")

    @property
    def windowed(self) -> bool:
        return self.window_seconds is not None

    def windows(self, num_video_frames: int, fps: float) -> list[tuple[float, float]]:
        """(start, end) seconds of each window; the whole video [0, duration] without sliding windows."""
        duration = num_video_frames / fps
        if not self.windowed:
            return [(0.0, duration)]
        return [(float(a), float(b)) for a, b in trimmed_windows(duration, self.window_seconds, self.stride_seconds)]


@dataclass(frozen=True)
class ViewInfo:
    """Where a view comes from: its window (index and [start, end] seconds), test segment and crop."""

    window: int
    start: float
    end: float
    segment: int
    crop: int


def iter_views(reader: VideoReader, plan: ViewPlan) -> Iterator[tuple[ViewInfo, torch.Tensor]]:
    """Every view of the video behind ``reader``, in order, as (info, float tensor (3, T, S, S)).

    Raises ``VideoDecodeError`` for unreadable videos (and for a video without a frame rate).
    """
    total, fps = reader.num_frames, reader.fps
    if not fps > 0:
        raise VideoDecodeError(reader.path, f"no frame rate (fps {fps})")
    transform = TestTransform(short_side=plan.input_size, num_crops=plan.num_crops)
    for w, (start, end) in enumerate(plan.windows(total, fps)):
        first, last = window_frame_range(start, end, fps, total) if plan.windowed else (0, None)
        for segment in range(plan.num_segments):
            indices = clip_indices(plan.sampling, "test", total, plan.num_frames, segment=segment,
                                   num_segments=plan.num_segments, rate=plan.sampling_rate, first=first, last=last)
            frames = reader.get_frames(indices)
            for crop in range(plan.num_crops):
                yield ViewInfo(w, start, end, segment, crop), transform(frames, crop)


@dataclass
class ViewChunk:
    """Up to ``chunk_size`` consecutive views (n, 3, T, S, S) of video ``video``; ``last`` closes the video (with its
    frame count and fps, or the ``error`` that made it unreadable; then earlier chunks are void)."""

    video: int
    views: torch.Tensor | None
    info: list[ViewInfo]
    last: bool = False
    num_video_frames: int = 0
    fps: float = 0.0
    error: str | None = None


class VideoViewStream(IterableDataset):
    """The views of ``paths[i]`` for i in ``indices`` (default all), in chunks; DataLoader workers share the videos
    out (worker w of W takes every W-th), each video decoded start to end by one worker."""

    def __init__(self, paths: Sequence[str], plan: ViewPlan, chunk_size: int,
                 indices: Sequence[int] | None = None) -> None:
        self.paths = list(paths)
        self.plan = plan
        self.chunk_size = chunk_size
        self.indices = list(range(len(self.paths))) if indices is None else list(indices)

    def __iter__(self) -> Iterator[ViewChunk]:
        worker = get_worker_info()
        mine = self.indices if worker is None else self.indices[worker.id::worker.num_workers]
        for index in mine:
            yield from self._chunks(index)

    def _chunks(self, index: int) -> Iterator[ViewChunk]:
        reader = open_video(self.paths[index], backend=self.plan.backend)
        views: list[torch.Tensor] = []
        info: list[ViewInfo] = []
        produced = 0
        try:
            for view_info, view in iter_views(reader, self.plan):
                views.append(view)
                info.append(view_info)
                produced += 1
                if len(views) == self.chunk_size:
                    yield ViewChunk(index, torch.stack(views), info)
                    views, info = [], []
            total, fps = reader.num_frames, reader.fps
        except VideoDecodeError as err:
            yield ViewChunk(index, None, [], last=True, error=err.reason)
            return
        finally:
            reader.close()
        if produced == 0:  # e.g. sliding windows longer than the video
            yield ViewChunk(index, None, [], last=True,
                            error=f"no view fits the video ({total} frames at {fps:.3g} fps)")
            return
        yield ViewChunk(index, torch.stack(views) if views else None, info, True, total, fps)


@dataclass
class VideoResult:
    """A video's outputs, one row per view (``outputs`` (V, ...), ``views`` the V infos), or its ``error``."""

    index: int
    path: str
    outputs: torch.Tensor | None = None
    views: list[ViewInfo] = field(default_factory=list)
    num_video_frames: int = 0
    fps: float = 0.0
    error: str | None = None


def map_videos(paths: Sequence[str], plan: ViewPlan, fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
               num_workers: int = 0, indices: Sequence[int] | None = None) -> Iterator[VideoResult]:
    """``fn`` applied to batches of at most ``batch_size`` views of each video of ``paths`` (those at ``indices``).

    ``num_workers`` processes decode (0: this process). Results come in the order of ``indices``, each video's rows in
    view order; a video finished early by one worker waits for those before it. ``fn`` maps (n, 3, T, S, S) to
    (n, ...) CPU tensors.
    """
    stream = VideoViewStream(paths, plan, batch_size, indices)
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers, collate_fn=_identity)
    order = iter(stream.indices)
    expected = next(order, None)
    pending: dict[int, tuple[list[torch.Tensor], list[ViewInfo]]] = {}
    finished: dict[int, VideoResult] = {}
    for chunk in loader:
        outputs, info = pending.setdefault(chunk.video, ([], []))
        if chunk.views is not None:
            outputs.append(fn(chunk.views))
            info.extend(chunk.info)
        if not chunk.last:
            continue
        del pending[chunk.video]
        path = paths[chunk.video]
        if chunk.error is not None:
            finished[chunk.video] = VideoResult(chunk.video, path, error=chunk.error)
        else:
            finished[chunk.video] = VideoResult(chunk.video, path, torch.cat(outputs), info, chunk.num_video_frames,
                                                chunk.fps)
        while expected is not None and expected in finished:
            yield finished.pop(expected)
            expected = next(order, None)


def _identity(item: Any) -> Any:
    return item
