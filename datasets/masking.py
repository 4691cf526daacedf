"""Mask generators for masked video pretraining.

A mask is a flat bool array over the T'·H'·W' patch tokens (frame-major: index t·H'W' + h·W' + w), True = masked.
Every frame has exactly int(mask_ratio · H'·W') masked patches. Generators draw from ``np.random`` (seeded per
DataLoader worker by PyTorch).
"""
from __future__ import annotations

from argparse import Namespace
from typing import Callable

import numpy as np

MASK_TYPES = ("tube", "random", "attention")


class _FrameMaskingGenerator:
    """Shared set-up: window (T', H', W') and the per-frame masked count."""

    def __init__(self, window_size: tuple[int, int, int], mask_ratio: float) -> None:
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"--mask_ratio {mask_ratio}: must be in [0, 1)")
        if len(window_size) != 3 or min(window_size) < 1:
            raise ValueError(f"mask window {window_size}: expected three positive sizes (T', H', W')")
        self.frames, self.height, self.width = (int(v) for v in window_size)
        self.patches_per_frame = self.height * self.width
        self.masks_per_frame = int(mask_ratio * self.patches_per_frame)

    def _frame_masks(self, rows: int) -> np.ndarray:
        """``rows`` independent per-frame masks (rows, H'·W'), each with exactly ``masks_per_frame`` True."""
        ranks = np.argsort(np.random.random_sample((rows, self.patches_per_frame)), axis=1)
        return ranks < self.masks_per_frame

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(window=({self.frames}, {self.height}, {self.width}), "
                f"masked per frame={self.masks_per_frame}/{self.patches_per_frame})")


class TubeMaskingGenerator(_FrameMaskingGenerator):
    """The same random patches masked in every frame (tubes through time) → bool (T'·H'·W',)."""

    def __call__(self) -> np.ndarray:
        return np.tile(self._frame_masks(1), (self.frames, 1)).reshape(-1)


class RandomMaskingGenerator(_FrameMaskingGenerator):
    """Patches masked independently in each frame, the same count per frame → bool (T'·H'·W',)."""

    def __call__(self) -> np.ndarray:
        return self._frame_masks(self.frames).reshape(-1)


def mask_window_size(args: Namespace) -> tuple[int, int, int]:
    """Token grid (T', H', W') = (num_frames // tubelet_size, input_size // patch_size, input_size // patch_size)."""
    num_frames = int(args.num_frames)
    tubelet = int(getattr(args, "tubelet_size", 1))
    input_size = int(getattr(args, "input_size", 224))
    patch = int(getattr(args, "patch_size", 16))
    if num_frames % tubelet:
        raise ValueError(f"--num_frames {num_frames} is not a multiple of --tubelet_size {tubelet}")
    if input_size % patch:
        raise ValueError(f"--input_size {input_size} is not a multiple of the patch size {patch}")
    return num_frames // tubelet, input_size // patch, input_size // patch


def build_mask_generator(args: Namespace) -> Callable[[], np.ndarray] | None:
    """Generator for ``args.mask_type`` (tube | random) with ``args.mask_ratio``; None for ``attention``, whose mask
    the engine builds from the teacher's attention."""
    mask_type = getattr(args, "mask_type", "tube")
    if mask_type not in MASK_TYPES:
        raise ValueError(f"--mask_type {mask_type!r}: must be one of {MASK_TYPES}")
    if mask_type == "attention":
        return None
    window = mask_window_size(args)
    ratio = float(args.mask_ratio)
    if mask_type == "tube":
        return TubeMaskingGenerator(window, ratio)
    return RandomMaskingGenerator(window, ratio)
