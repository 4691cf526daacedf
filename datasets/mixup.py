"""Batch-level Mixup/CutMix for video batches (B, C, T, H, W).

timm's ``Mixup`` assumes images: its CutMix pastes ``x[:, :, y0:y1, x0:x1]``, which on a 5-D video batch would cut
along time and height. Folding time into channels, (B, C·T, H, W), makes the same box span every frame and channel
while reusing timm's sampling (lambda, box, label smoothing) unchanged.
"""
from __future__ import annotations

from argparse import Namespace

import torch
from timm.data import Mixup


class VideoMixup(Mixup):
    """timm ``Mixup`` accepting (B, C, T, H, W) clips (and still (B, C, H, W) images); B must be even."""

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 5:
            return super().__call__(x, target)
        b, c, t, h, w = x.shape
        mixed, target = super().__call__(x.reshape(b, c * t, h, w), target)
        return mixed.reshape(b, c, t, h, w), target


def build_mixup_fn(args: Namespace) -> VideoMixup | None:
    """``VideoMixup`` from the official flags (mixup, cutmix, cutmix_minmax, mixup_prob, mixup_switch_prob,
    mixup_mode, smoothing, nb_classes), or None when neither mixup nor cutmix is enabled."""
    mixup = float(getattr(args, "mixup", 0.0))
    cutmix = float(getattr(args, "cutmix", 0.0))
    cutmix_minmax = getattr(args, "cutmix_minmax", None)
    if mixup <= 0 and cutmix <= 0 and cutmix_minmax is None:
        return None
    return VideoMixup(mixup_alpha=mixup, cutmix_alpha=cutmix, cutmix_minmax=cutmix_minmax,
                      prob=float(getattr(args, "mixup_prob", 1.0)),
                      switch_prob=float(getattr(args, "mixup_switch_prob", 0.5)),
                      mode=getattr(args, "mixup_mode", "batch"), label_smoothing=float(getattr(args, "smoothing", 0.1)),
                      num_classes=int(args.nb_classes))
