"""Random erasing for normalised clips: one set of boxes and one fill shared by every frame.

Same sampling as timm's ``RandomErasing`` (area 2%–1/3 of the frame split over ``count`` boxes, log-uniform aspect in
[0.3, 1/0.3]) with the official video "cube" variant's 100 placement attempts per box. Unlike the official code, the
random fill of ``pixel`` mode is drawn once per box and broadcast over time, so a static clip stays static.
"""
from __future__ import annotations

import math
import random

import torch

ERASE_MODES = ("const", "rand", "pixel")


class ClipRandomErasing:
    """Erase random boxes of a (C, T, H, W) float clip in place, with probability ``probability`` per clip.

    ``mode``: ``const`` fills 0 (the dataset mean after normalisation), ``rand`` one normal colour per box,
    ``pixel`` normal noise per pixel. ``max_count`` > 1 draws the number of boxes uniformly in [1, max_count].
    """

    def __init__(self, probability: float, mode: str = "pixel", max_count: int = 1, min_area: float = 0.02,
                 max_area: float = 1 / 3, min_aspect: float = 0.3, attempts: int = 100) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"--reprob {probability}: must be in [0, 1]")
        if mode not in ERASE_MODES:
            raise ValueError(f"--remode {mode!r}: must be one of {ERASE_MODES}")
        if max_count < 1:
            raise ValueError(f"--recount {max_count}: must be >= 1")
        self.probability = probability
        self.mode = mode
        self.max_count = max_count
        self.area_range = (min_area, max_area)
        self.log_aspect_range = (math.log(min_aspect), math.log(1 / min_aspect))
        self.attempts = attempts

    def _fill(self, channels: int, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
        """Fill values of shape (C, 1, h, w) or (C, 1, 1, 1), broadcast over the frames."""
        if self.mode == "pixel":
            return torch.empty((channels, 1, h, w), dtype=dtype).normal_()
        if self.mode == "rand":
            return torch.empty((channels, 1, 1, 1), dtype=dtype).normal_()
        return torch.zeros((channels, 1, 1, 1), dtype=dtype)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        if random.random() > self.probability:
            return clip
        channels, _, height, width = clip.shape
        count = 1 if self.max_count == 1 else random.randint(1, self.max_count)
        for _ in range(count):
            for _ in range(self.attempts):
                area = random.uniform(*self.area_range) * height * width / count
                aspect = math.exp(random.uniform(*self.log_aspect_range))
                h = int(round(math.sqrt(area * aspect)))
                w = int(round(math.sqrt(area / aspect)))
                if 0 < h < height and 0 < w < width:
                    top = random.randint(0, height - h)
                    left = random.randint(0, width - w)
                    clip[:, :, top:top + h, left:left + w] = self._fill(channels, h, w, clip.dtype)
                    break
        return clip

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.probability}, mode={self.mode}, max_count={self.max_count})"
