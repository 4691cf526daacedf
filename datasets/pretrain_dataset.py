"""Masked-video pretraining clips: ``{"video": (C,T,H,W), "mask": bool (T'·H'·W',)}`` (True = masked).

Clips of ``num_frames`` use sparse sampling when ``sampling_rate`` is 1 and dense sampling with that stride
otherwise (the training rules of ``datasets.sampling``). The transform does the multi-scale crop, optional flip
and normalisation; ``mask_generator`` is None for ``--mask_type attention`` (the engine masks from the teacher),
and the "mask" key is then absent. Unreadable files follow the training bad-input policy of
``datasets.video_dataset``.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.lists import ListEntry
from datasets.readers import VideoReader
from datasets.sampling import clip_indices
from datasets.video_dataset import BadInputTracker, load_with_replacement, torch_seeded_rng


class PretrainDataset(Dataset):
    """Unlabelled clips for masked pretraining."""

    def __init__(self, entries: list[ListEntry], transform: Callable[[np.ndarray], torch.Tensor], *,
                 num_frames: int, sampling_rate: int, open_clip: Callable[[ListEntry], VideoReader],
                 mask_generator: Callable[[], np.ndarray] | None = None, max_retries: int = 10,
                 max_bad_fraction: float = 0.1) -> None:
        if sampling_rate < 1:
            raise ValueError(f"--sampling_rate must be >= 1, got {sampling_rate}")
        self.entries = entries
        self.transform = transform
        self.num_frames = num_frames
        self.sampling_rate = sampling_rate
        self.open_clip = open_clip
        self.mask_generator = mask_generator
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
            sampling = "sparse" if self.sampling_rate == 1 else "dense"
            indices = clip_indices(sampling, "train", reader.num_frames, self.num_frames, rng=rng,
                                   rate=self.sampling_rate)
            return reader.get_frames(indices)
        finally:
            reader.close()

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = torch_seeded_rng()
        _, frames = load_with_replacement(index, len(self), lambda i: self.load_frames(i, rng), self.tracker, rng)
        item = {"video": self.transform(frames)}
        if self.mask_generator is not None:
            item["mask"] = torch.as_tensor(np.asarray(self.mask_generator(), dtype=bool))
        return item
