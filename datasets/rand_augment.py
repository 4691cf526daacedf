"""RandAugment for video: timm's image RandAugment with one random draw shared by every frame of a clip.

timm's ``RandAugment`` picks its ops with ``np.random`` and their application probability and magnitude noise with
``random``. Restoring both generators to the same state before each frame makes every frame see exactly the same ops
and magnitudes, which is what the official video pipeline does with its clip-level RandAugment.
"""
from __future__ import annotations

import random

import numpy as np
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from timm.data.transforms import str_to_pil_interp


class VideoRandAugment:
    """Apply a timm ``rand-...`` policy identically to all frames: uint8 (T, H, W, 3) → uint8 (T, H, W, 3).

    ``input_size`` (the training crop) sets the absolute translate constant (0.45 of it), as in the official code;
    ``interpolation`` ("bilinear", "bicubic", ... or "random") is the resampling filter of the geometric ops.
    """

    def __init__(self, config_str: str, input_size: int, interpolation: str = "bicubic") -> None:
        if not config_str.startswith("rand"):
            raise ValueError(f"--aa {config_str!r}: only RandAugment policies ('rand-m7-n4-...') are supported")
        hparams: dict = {"translate_const": int(input_size * 0.45)}
        if interpolation and interpolation != "random":
            hparams["interpolation"] = str_to_pil_interp(interpolation)
        try:
            self.policy = rand_augment_transform(config_str, hparams)
        except AssertionError as err:
            raise ValueError(f"--aa {config_str!r}: malformed RandAugment policy") from err
        self.config_str = config_str

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        py_state = random.getstate()
        np_state = np.random.get_state()
        out = np.empty_like(frames)
        for t, frame in enumerate(frames):
            random.setstate(py_state)
            np.random.set_state(np_state)
            out[t] = np.asarray(self.policy(Image.fromarray(frame)))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config_str!r})"
