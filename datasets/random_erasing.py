"""Random erasing for normalised clips, as the official video "cube" variant: one set of boxes for the whole clip,
the fill drawn again for every frame.

Same sampling as timm's ``RandomErasing`` (area 2%–1/3 of the frame split over ``count`` boxes, log-uniform aspect in
[0.3, 1/0.3]) with the official cube variant's 100 placement attempts per box. Each box covers the same pixels in
every erased frame; ``rand`` and ``pixel`` fills are drawn per frame (a static clip gets moving noise), and with
``num_splits`` > 1 (the official code passes ``--recount``) the first T // num_splits frames are left untouched.
"""
from __future__ import annotations

import math
import random

import torch

ERASE_MODES = ("const", "rand", "pixel")


class ClipRandomErasing:
    """Erase random boxes of a (C, T, H, W) float clip in place, with probability ``probability`` per clip.

    ``mode``: ``const`` fills 0 (the dataset mean after normalisation), ``rand`` one normal colour per box and frame,
    ``pixel`` normal noise per pixel and frame. ``max_count`` > 1 draws the number of boxes uniformly in
    [1, max_count]. ``num_splits`` > 1 erases only frames T // num_splits .. T - 1.
    """

    def __init__(self, probability: float, mode: str = "pixel", max_count: int = 1, num_splits: int = 0,
                 min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3,
                 attempts: int = 100) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"--reprob {probability}: must be in [0, 1]")
        if mode not in ERASE_MODES:
            raise ValueError(f"--remode {mode!r}: must be one of {ERASE_MODES}")
        if max_count < 1:
            raise ValueError(f"--recount {max_count}: must be >= 1")
        self.probability = probability
        self.mode = mode
        self.max_count = max_count
        self.num_splits = num_splits
        self.area_range = (min_area, max_area)
        self.log_aspect_range = (math.log(min_aspect), math.log(1 / min_aspect))
        self.attempts = attempts

    def _fill(self, channels: int, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
        """The fill of one box in one frame: (C, h, w), or (C, 1, 1) broadcast over the box."""
        if self.mode == "pixel":
            return torch.empty((channels, h, w), dtype=dtype).normal_()
        if self.mode == "rand":
            return torch.empty((channels, 1, 1), dtype=dtype).normal_()
        return torch.zeros((channels, 1, 1), dtype=dtype)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        if random.random() > self.probability:
            return clip
        channels, frames, height, width = clip.shape
        first = frames // self.num_splits if self.num_splits > 1 else 0
        count = 1 if self.max_count == 1 else random.randint(1, self.max_count)
        for _ in range(count):
            for _ in range(self.attempts):
                area = random.uniform(*self.area_range) * height * width / count
                aspect = math.exp(random.uniform(*self.log_aspect_range))
                h = int(round(math.sqrt(area * aspect)))
                w = int(round(math.sqrt(area / aspect)))
                if h < height and w < width:
                    top = random.randint(0, height - h)
                    left = random.randint(0, width - w)
                    for t in range(first, frames):
                        clip[:, t, top:top + h, left:left + w] = self._fill(channels, h, w, clip.dtype)
                    break
        return clip

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(p={self.probability}, mode={self.mode}, max_count={self.max_count}, "
                f"num_splits={self.num_splits})")
