"""Mamba's RMSNorm (weight only, computed in fp32) that keeps less for its backward.

The composed ``x * rsqrt(mean(x²) + eps) * weight`` (timm's ``RmsNormFp32``) saves the normalised x besides its input,
one more (B, L, C) tensor per block; `RmsNormFp32` here computes the same function and saves only the input (which the
residual stream keeps anyway) and the per-row scale, recomputing the normalised x in its backward.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.layers import RmsNormFp32 as _TimmRmsNormFp32


class _RmsNormFunction(torch.autograd.Function):
    """y = x · r · weight with r = (mean(x²) + eps)^-½ per row, in fp32, returned in x's dtype."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.float()
        scale = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, scale)
        return (x32 * scale * weight.float()).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, scale = ctx.saved_tensors
        normalised = x.float() * scale
        g = dy.float() * weight.float()
        # d/dx (x r) = r (g - x̂ mean(g x̂)), r'(x) = -r³ x / C
        dx = scale * (g - normalised * (g * normalised).mean(-1, keepdim=True))
        dweight = (dy.float() * normalised).flatten(0, -2).sum(0)
        return dx.to(x.dtype), dweight.to(weight.dtype), None


class RmsNormFp32(_TimmRmsNormFp32):
    """timm's ``RmsNormFp32`` (same parameters, same function) with the lean backward of `_RmsNormFunction`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return super().forward(x)
        return _RmsNormFunction.apply(x, self.weight, self.eps)
