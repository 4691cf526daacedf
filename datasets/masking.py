"""Mask generators for masked video pretraining (the official ``--mask_type`` rules).

A mask is a flat bool array over the T'·H'·W' patch tokens (frame-major: index t·H'W' + h·W' + w), True = masked,
without a cls column (the convention of ``utils.batch``).
With ratio r:
  tube        int(r·H'W') patches per frame, the same patches in every frame;
  random      exactly int(r·T'H'W') patches chosen over the whole clip (per-frame counts vary);
  tube_row    int(r·H') whole rows per frame, chosen independently in each frame (the official name notwithstanding);
  random_row  T'·int(r·H') whole rows chosen over all T'·H' rows of the clip;
  attention   no generator: the engine masks from the teacher's attention.
Generators shuffle with ``np.random``, so a generator is reproducible under ``np.random.seed`` (the pretraining
dataset draws each mask under ``utils.seeding.seeded_rngs``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

MASK_TYPES = ("random", "tube", "attention", "random_row", "tube_row")


def _shuffled(total: int, masked: int) -> np.ndarray:
    """A random bool vector of length ``total`` with exactly ``masked`` True."""
    mask = np.zeros(total, dtype=bool)
    mask[:masked] = True
    np.random.shuffle(mask)
    return mask


class _MaskingGenerator:
    """Shared set-up: the token window (T', H', W') and the ratio."""

    def __init__(self, window_size: tuple[int, int, int], mask_ratio: float) -> None:
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"--mask_ratio {mask_ratio}: must be in [0, 1)")
        if len(window_size) != 3 or min(window_size) < 1:
            raise ValueError(f"mask window {window_size}: expected three positive sizes (T', H', W')")
        self.frames, self.height, self.width = (int(v) for v in window_size)
        self.ratio = mask_ratio

    def __repr__(self) -> str:
        return f"{type(self).__name__}(window=({self.frames}, {self.height}, {self.width}), ratio={self.ratio})"


class TubeMaskingGenerator(_MaskingGenerator):
    """The same int(r·H'W') random patches masked in every frame (tubes through time) → bool (T'·H'·W',)."""

    def __call__(self) -> np.ndarray:
        frame = _shuffled(self.height * self.width, int(self.ratio * self.height * self.width))
        return np.tile(frame, self.frames)


class RandomMaskingGenerator(_MaskingGenerator):
    """Exactly int(r·T'H'W') patches masked anywhere in the clip → bool (T'·H'·W',)."""

    def __call__(self) -> np.ndarray:
        total = self.frames * self.height * self.width
        return _shuffled(total, int(self.ratio * total))


class TubeRowMaskingGenerator(_MaskingGenerator):
    """int(r·H') whole patch rows masked in each frame, drawn independently per frame → bool (T'·H'·W',)."""

    def __call__(self) -> np.ndarray:
        rows = np.stack([_shuffled(self.height, int(self.ratio * self.height)) for _ in range(self.frames)])
        return np.repeat(rows.reshape(-1), self.width)


class RandomRowMaskingGenerator(_MaskingGenerator):
    """T'·int(r·H') whole patch rows masked, chosen over all T'·H' rows of the clip → bool (T'·H'·W',)."""

    def __call__(self) -> np.ndarray:
        rows = _shuffled(self.frames * self.height, self.frames * int(self.ratio * self.height))
        return np.repeat(rows, self.width)


_GENERATORS = {"tube": TubeMaskingGenerator, "random": RandomMaskingGenerator, "tube_row": TubeRowMaskingGenerator,
               "random_row": RandomRowMaskingGenerator}


def mask_window_size(num_frames: int, tubelet_size: int, input_size: int, patch_size: int) -> tuple[int, int, int]:
    """Token grid (T', H', W') = (num_frames // tubelet_size, input_size // patch_size, input_size // patch_size);
    ``patch_size`` is the student's, read from the built model as the official script does."""
    if num_frames % tubelet_size:
        raise ValueError(f"--num_frames {num_frames} is not a multiple of --tubelet_size {tubelet_size}")
    if input_size % patch_size:
        raise ValueError(f"--input_size {input_size} is not a multiple of the patch size {patch_size}")
    return num_frames // tubelet_size, input_size // patch_size, input_size // patch_size


def build_mask_generator(mask_type: str, mask_ratio: float,
                         window: tuple[int, int, int]) -> Callable[[], np.ndarray] | None:
    """Generator of ``mask_type`` masks with ``mask_ratio`` over the token ``window`` (T', H', W'); None for
    ``attention``, whose mask the engine builds from the teacher's attention."""
    if mask_type not in MASK_TYPES:
        raise ValueError(f"--mask_type {mask_type!r}: must be one of {MASK_TYPES}")
    if mask_type == "attention":
        return None
    return _GENERATORS[mask_type](window, mask_ratio)
