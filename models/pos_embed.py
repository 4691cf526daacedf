"""Position-embedding helpers shared by VideoMamba, its student and the CLIP teacher.

All functions are pure: they return new tensors and never modify their inputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resample_abs_pos_embed(
    pos_embed: torch.Tensor,
    new_size: tuple[int, int],
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """Resize a (1, prefix + H*W, C) spatial table to (1, prefix + new_h*new_w, C).

    The prefix (cls) tokens are kept; the square grid is interpolated in fp32 and cast back.
    """
    if pos_embed.ndim != 3:
        raise ValueError(f"expected a (1, tokens, C) position table, got shape {tuple(pos_embed.shape)}")
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = int(math.isqrt(grid.shape[1]))
    if old * old != grid.shape[1]:
        raise ValueError(f"position table has {grid.shape[1]} grid tokens, which is not a square grid")
    new_h, new_w = new_size
    if (old, old) == (new_h, new_w):
        return pos_embed.clone()
    dim = grid.shape[-1]
    grid = grid.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_h, new_w), mode=interpolation, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_h * new_w, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


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
