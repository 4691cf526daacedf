"""The joint space-time attention ViT that VideoMamba is compared with (``benchmarks/throughput.py``,
``tools/flops.py --baselines``).

A baseline, not a model of this package: it is not registered with timm (registered models promise timm's whole
model contract, which ``tests/test_models.py`` checks for each) and ``import models`` does not load it. As timm's
model sizes, the named sizes differ only by a small dict of constructor arguments: DeiT-Ti/S widths, 12 layers.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

VIT_JOINT_SIZES = {
    "vit_tiny_joint": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small_joint": dict(embed_dim=384, depth=12, num_heads=6),
}


class JointSpaceTimeViT(nn.Module):
    """TimeSformer-style joint space-time attention baseline built from timm's ``VisionTransformer``.

    The T frames are tiled side by side into one (H, T*W) image, so timm's per-patch Conv2d embeds
    every frame separately (patches never straddle frames) and the model attends over 1 + T*(H/16)*(W/16)
    tokens with a learned (1, 1 + T*HW, C) position table: the same token count as VideoMamba. Attention is
    timm's fused ``scaled_dot_product_attention``. Input (B, 3, T, H, W) -> logits (B, num_classes).
    """

    def __init__(self, num_frames: int, img_size: int, embed_dim: int, depth: int, num_heads: int,
                 num_classes: int = 400) -> None:
        super().__init__()
        self.vit = VisionTransformer(img_size=(img_size, img_size * num_frames), patch_size=16,
                                     embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                                     num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        tiled = x.permute(0, 1, 3, 2, 4).reshape(b, c, h, t * w)
        return self.vit(tiled)


def vit_joint(name: str, num_frames: int, img_size: int, num_classes: int = 400) -> JointSpaceTimeViT:
    """The baseline of size ``name`` (a key of ``VIT_JOINT_SIZES``) for clips of ``num_frames`` × ``img_size``²."""
    return JointSpaceTimeViT(num_frames, img_size, num_classes=num_classes, **VIT_JOINT_SIZES[name])
