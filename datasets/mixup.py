"""Batch-level Mixup/CutMix for video batches (B, C, T, H, W).

timm's ``Mixup`` assumes images: its CutMix pastes ``x[:, :, y0:y1, x0:x1]``, which on a 5-D video batch would cut
along time and height. Folding time into channels, (B, C·T, H, W), makes the same box span every frame and channel
while reusing timm's sampling (lambda, box, label smoothing) unchanged.
"""
from __future__ import annotations

import torch
from timm.data import Mixup

from utils.config import AugmentConfig


class VideoMixup(Mixup):
    """timm ``Mixup`` accepting (B, C, T, H, W) clips (and still (B, C, H, W) images); B must be even."""

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 5:
            return super().__call__(x, target)
        b, c, t, h, w = x.shape
        mixed, target = super().__call__(x.reshape(b, c * t, h, w), target)
        return mixed.reshape(b, c, t, h, w), target


def build_mixup_fn(augment: AugmentConfig, num_classes: int) -> VideoMixup | None:
    """``VideoMixup`` from ``augment`` (mixup, cutmix, cutmix_minmax, mixup_prob, mixup_switch_prob, mixup_mode,
    smoothing), or None when neither mixup nor cutmix is enabled."""
    if augment.mixup <= 0 and augment.cutmix <= 0 and augment.cutmix_minmax is None:
        return None
    return VideoMixup(mixup_alpha=augment.mixup, cutmix_alpha=augment.cutmix, cutmix_minmax=augment.cutmix_minmax,
                      prob=augment.mixup_prob, switch_prob=augment.mixup_switch_prob, mode=augment.mixup_mode,
                      label_smoothing=augment.smoothing, num_classes=num_classes)
