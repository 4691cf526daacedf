"""Masked-video pretraining clips: ``{"video": (C,T,H,W), "mask": bool (T'·H'·W',), "bad": {path: reason}}``
(True = masked, no cls column: the convention of ``utils.batch``; ``bad``: the unreadable files replaced, see
``datasets.video_dataset``); ``PretrainDataset.collate`` makes a ``utils.batch.MaskedBatch``.

Frames follow the official pretraining loader (``datasets.sampling``): with ``num_segments`` > 1 one random frame
from each of ``num_segments`` equal segments (``pretrain_segment_indices``; ``num_segments`` must equal
``num_frames``), else ``num_frames`` frames ``sampling_rate`` apart from a random start (``pretrain_clip_indices``).
The transform does the multi-scale crop, optional colour jitter and flip, and normalisation; ``mask_generator`` is
None for ``--mask_type attention`` (the engine masks from the teacher), and the "mask" key is then absent.
With ``num_sample`` S > 1 (repeated augmentation, as the official loader) one decode gives S clips, each with its
own mask: ``{"video": (S,C,T,H,W), "mask": (S, T'·H'·W')}`` for ``datasets.collate.multiple_samples_collate``.
Items are keyed ``(epoch, index)`` like training items of ``datasets.video_dataset`` (frames, replacements, each
repeat's transform and mask are a pure function of (seed, epoch, index, repeat)), and unreadable files follow its
training bad-input policy.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.collate import collate_masked
from datasets.lists import ListEntry
from datasets.readers import VideoReader
from datasets.sampling import pretrain_clip_indices, pretrain_segment_indices
from datasets.video_dataset import BadInputTracker, draw_repeats, load_with_replacement, sample_rng
from utils.batch import MaskedBatch
from utils.seeding import sample_key


class PretrainDataset(Dataset):
    """Unlabelled clips for masked pretraining."""

    def __init__(self, entries: list[ListEntry], transform: Callable[[np.ndarray], torch.Tensor], *,
                 num_frames: int, sampling_rate: int, open_clip: Callable[[ListEntry], VideoReader],
                 mask_generator: Callable[[], np.ndarray] | None = None, max_retries: int = 10,
                 max_bad_fraction: float = 0.1, num_segments: int = 1, num_sample: int = 1, seed: int = 0) -> None:
        if sampling_rate < 1:
            raise ValueError(f"--sampling_rate must be >= 1, got {sampling_rate}")
        if num_segments < 1 or (num_segments > 1 and num_segments != num_frames):
            raise ValueError(f"--num_segments {num_segments}: must be 1, or equal --num_frames {num_frames} "
                             "(one frame is sampled per segment)")
        if num_sample < 1:
            raise ValueError(f"--num_sample must be >= 1, got {num_sample}")
        self.num_segments = num_segments
        self.num_sample = num_sample
        self.entries = entries
        self.transform = transform
        self.num_frames = num_frames
        self.sampling_rate = sampling_rate
        self.open_clip = open_clip
        self.mask_generator = mask_generator
        self.seed = seed
        self.tracker = BadInputTracker(len(entries), max_bad_fraction, max_retries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def bad_files(self) -> dict[str, str]:
        """Paths found unreadable so far (in this process) with the reason."""
        return dict(self.tracker.bad)

    def load_frames(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """Decode one training clip of entry ``index``; raises ``VideoDecodeError``."""
        reader = self.open_clip(self.entries[index])
        try:
            if self.num_segments > 1:
                indices = pretrain_segment_indices(reader.num_frames, self.num_segments, rng)
            else:
                indices = pretrain_clip_indices(reader.num_frames, self.num_frames, self.sampling_rate, rng)
            return reader.get_frames(indices)
        finally:
            reader.close()

    def collate(self, items: list[dict[str, Any]]) -> MaskedBatch:
        """The DataLoader's ``collate_fn``."""
        return collate_masked(items, self.num_sample)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """``key``: ``(epoch, index)`` from ``utils.seeding.EpochSampler``, or an index (epoch 0)."""
        epoch, index = sample_key(key)
        rng = sample_rng(self.seed, epoch, index)
        _, frames, bad = load_with_replacement(index, len(self), lambda i: self.load_frames(i, rng), self.tracker,
                                               rng)
        samples = draw_repeats(lambda: self._sample(frames), self.num_sample, self.seed, epoch, index)
        if self.num_sample == 1:
            return {**samples[0], "bad": bad}
        return {**{name: torch.stack([sample[name] for sample in samples]) for name in samples[0]}, "bad": bad}

    def _sample(self, frames: np.ndarray) -> dict[str, torch.Tensor]:
        item = {"video": self.transform(frames)}
        if self.mask_generator is not None:
            item["mask"] = torch.as_tensor(np.asarray(self.mask_generator(), dtype=bool))
        return item
