"""``timm.create_model(name, features_only=True)`` for the video backbones: per-block feature maps.

timm wraps a model that has ``forward_intermediates`` in ``FeatureGetterNet`` (``feature_cls='getter'``), whose
formats are image ones (NCHW, NLC). ``VideoFeatureGetterNet`` is the same wrapper with the video format NCTHW:
its forward gives one (B, C, T', H', W') map per selected block (``out_indices``), as ``forward_intermediates(x,
out_indices, intermediates_only=True)`` does, and ``feature_info`` describes them (channels, spatial reduction).
"""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn
from timm.models._features import FeatureGetterNet

VIDEO_FEATURE_FORMATS = ("NCTHW", "NLC")

DEFAULT_OUT_INDICES = 3  # as timm's ViT: the last three blocks


def block_feature_info(depth: int, embed_dim: int, patch_size: int, tubelet_size: int) -> list[dict]:
    """timm's per-block ``feature_info``: module ``layers.{i}``, ``num_chs`` embed_dim, ``reduction`` the spatial
    stride (patch size), plus ``temporal_reduction`` (frames per token, the tubelet size)."""
    return [dict(module=f"layers.{i}", num_chs=embed_dim, reduction=patch_size, temporal_reduction=tubelet_size)
            for i in range(depth)]


class VideoFeatureGetterNet(FeatureGetterNet):
    """timm's ``FeatureGetterNet`` with video formats: ``output_fmt`` "NCTHW" (default, (B, C, T', H', W') maps)
    or "NLC" ((B, T'·H'·W', C) patch tokens). The blocks after the last selected one are pruned (with ``prune``)."""

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] = DEFAULT_OUT_INDICES,
                 out_map: Sequence[int | str] | None = None, return_dict: bool = False, output_fmt: str = "NCTHW",
                 norm: bool = False, prune: bool = True) -> None:
        if output_fmt not in VIDEO_FEATURE_FORMATS:
            raise ValueError(f"output_fmt must be one of {VIDEO_FEATURE_FORMATS}, got {output_fmt!r}")
        # the parent only knows image formats: hand it one, then record the video format its forward passes on
        super().__init__(model, out_indices, out_map, return_dict, output_fmt="NLC", norm=norm, prune=prune)
        self.output_fmt = output_fmt
