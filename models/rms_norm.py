"""Mamba's RMSNorm (weight only, computed in fp32) that keeps less for its backward.

The composed ``x * rsqrt(mean(x²) + eps) * weight`` (timm's ``RmsNormFp32``) saves the normalised x besides its input,
one more (B, L, C) tensor per block; `RmsNormFp32` here computes the same function and saves only the input (which the
residual stream keeps anyway) and the per-row scale, recomputing the normalised x in its backward. `recomputed` goes
one step further for the norm's output: what consumes it (the mixer op, which saves its input) keeps a way to
recompute it instead.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

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


class _Recompute:
    """What autograd keeps in place of a saved view of the recomputed tensor: its layout over that tensor."""

    def __init__(self, saved: torch.Tensor, base_offset: int) -> None:
        self.shape, self.stride = saved.shape, saved.stride()
        self.offset = saved.storage_offset() - base_offset


@contextmanager
def recomputed(tensor: torch.Tensor, recompute: Callable[[], torch.Tensor]) -> Iterator[None]:
    """Within the block, wherever an op saves `tensor` (or a view of it: a linear layer saves a 2-D view) for its
    backward, autograd keeps ``recompute`` instead and calls it (without grad) when the backward needs the tensor:
    one (B, L, C) tensor per block less, for a pass of the cheap function that made it (it must give the same
    values, in a contiguous tensor, again). Other saved tensors are kept as usual."""
    if not tensor.is_contiguous():
        raise ValueError("recomputed: the tensor must be contiguous (its recomputation is)")
    storage, dtype, base_offset = tensor.untyped_storage().data_ptr(), tensor.dtype, tensor.storage_offset()

    def pack(saved: torch.Tensor) -> Any:
        if saved.dtype == dtype and saved.device == tensor.device and saved.untyped_storage().data_ptr() == storage:
            return _Recompute(saved, base_offset)
        return saved

    def unpack(packed: Any) -> torch.Tensor:
        if not isinstance(packed, _Recompute):
            return packed
        with torch.no_grad():
            return recompute().as_strided(packed.shape, packed.stride, packed.offset)

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield
