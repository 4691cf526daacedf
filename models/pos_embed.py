"""Position-embedding helpers shared by VideoMamba, its student and the CLIP teacher.

All functions are pure: they return new tensors and never modify their inputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed as timm_resample_abs_pos_embed


def resample_abs_pos_embed(
    pos_embed: torch.Tensor,
    new_size: tuple[int, int],
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """Resize a (1, prefix + H*W, C) square spatial table to (1, prefix + new_h*new_w, C).

    ``timm.layers.resample_abs_pos_embed`` without antialiasing: the official code interpolates with plain
    ``F.interpolate(mode="bicubic", align_corners=False)`` (timm's antialiased default differs by O(1) when
    upsampling). The prefix (cls) tokens are kept; the grid is interpolated in fp32 and cast back.
    """
    if pos_embed.ndim != 3:
        raise ValueError(f"expected a (1, tokens, C) position table, got shape {tuple(pos_embed.shape)}")
    grid_tokens = pos_embed.shape[1] - num_prefix_tokens
    if math.isqrt(grid_tokens) ** 2 != grid_tokens:
        raise ValueError(f"position table has {grid_tokens} grid tokens, which is not a square grid")
    return timm_resample_abs_pos_embed(pos_embed, list(new_size), num_prefix_tokens=num_prefix_tokens,
                                       interpolation=interpolation, antialias=False, align_corners=False)


def resample_temporal_pos_embed(pos_embed: torch.Tensor, new_t: int) -> torch.Tensor:
    """Linearly interpolate a (1, T, C) temporal table to (1, new_t, C)."""
    if pos_embed.ndim != 3:
        raise ValueError(f"expected a (1, T, C) temporal table, got shape {tuple(pos_embed.shape)}")
    if pos_embed.shape[1] == new_t:
        return pos_embed.clone()
    table = pos_embed.permute(0, 2, 1).float()  # (1, C, T)
    table = F.interpolate(table, size=new_t, mode="linear", align_corners=False)
    return table.permute(0, 2, 1).to(pos_embed.dtype)


def sinusoid_table(n_position: int, dim: int) -> torch.Tensor:
    """Fixed sine/cosine table of shape (1, n_position, dim), as in "Attention is all you need".

    Even channels hold sin(pos / 10000^(2i/dim)), odd channels the matching cos.
    """
    position = torch.arange(n_position, dtype=torch.float64).unsqueeze(1)
    exponent = 2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim
    angles = position / torch.pow(10000.0, exponent)
    table = torch.empty(n_position, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float().unsqueeze(0)
