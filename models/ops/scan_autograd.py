"""Autograd glue shared by the CPU kernels (vectorised PyTorch and fused C++).

A kernel computes the recurrence, on fp32 contiguous tensors with B/C time-major, and the discretisation:
  discretise(delta, delta_bias, softplus) -> dt         dt = softplus(delta + delta_bias), fp32 contiguous
  fwd(u, dt, A, Bt, Ct) -> (y, last_state)              y_t = C_t · h_t, h_t = exp(dt_t·A)·h_{t-1} + dt_t·u_t·B_t
  bwd(u, dt, A, Bt, Ct, dy) -> [du, ddt, dA, dBt, dCt]
with u, dt, y, dy (batch, d_inner, L), A (d_inner, N), Bt, Ct (batch, G, L, N), last_state
(batch, d_inner, N). This module does everything else elementwise around it once for both kernels:
the D skip, the silu(z) gate, fp32 casts and casting results back.
"""
from typing import Any, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan_args import check_scan_args, reduce_group_grad


def _time_major(BC: Tensor) -> Tensor:
    """(batch, G, N, L) -> fp32 contiguous (batch, G, L, N)."""
    return BC.float().transpose(-1, -2).contiguous()


def _cast(grad: Optional[Tensor], like: Optional[Tensor]) -> Optional[Tensor]:
    return None if grad is None or like is None else grad.to(like.dtype)


class SelectiveScanFunction(torch.autograd.Function):
    """Selective scan whose recurrence runs in `kernel`; the returned last state carries no gradient.

    Saves the inputs except delta, Δ (which replaces delta: backward needs only Δ) and, with a z gate, the
    pre-gate output y (both (batch, d_inner, L)), so the backward skips the softplus and the D skip; the
    recurrence itself is recomputed by the kernel.
    """

    @staticmethod
    def forward(ctx: Any, kernel: Any, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                softplus: bool) -> Tuple[Tensor, Tensor]:
        B4, C4 = check_scan_args(u, delta, A, B, C, D, z, delta_bias)
        dt = kernel.discretise(delta, delta_bias, softplus)
        uf = u.float().contiguous()
        y, last_state = kernel.fwd(uf, dt, A.float().contiguous(), _time_major(B4), _time_major(C4))
        if D is not None:
            y.addcmul_(uf, D.float()[:, None])  # y is the kernel's fresh output
        # The gate is not saved (backward recomputes it from z), so the gated output can take its buffer.
        out = y if z is None else F.silu(z.float()).mul_(y)
        ctx.kernel = kernel
        ctx.softplus = softplus
        ctx.delta_dtype = delta.dtype  # delta itself is not needed again: dt holds what backward uses
        ctx.save_for_backward(u, A, B, C, D, z, delta_bias, dt, None if z is None else y)
        ctx.mark_non_differentiable(last_state)
        return out.to(u.dtype), last_state

    @staticmethod
    def backward(ctx: Any, dout: Tensor, _dlast: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
        u, A, B, C, D, z, delta_bias, dt, y = ctx.saved_tensors
        B4, C4 = check_scan_args(u, dt, A, B, C)
        uf = u.float().contiguous()
        dy = dout.float()
        dz = None
        if z is not None:
            # silu'(z) = sig + silu(z)·(1 - sig)
            zf = z.float()
            sig = torch.sigmoid(zf)
            gate = zf * sig
            dz = dy * y * torch.addcmul(sig, gate, 1 - sig)
            dy = dy * gate
        du, ddt, dA, dBt, dCt = ctx.kernel.bwd(uf, dt, A.float().contiguous(), _time_major(B4),
                                                _time_major(C4), dy.contiguous())
        dD = None
        if D is not None:
            du = torch.addcmul(du, dy, D.float()[:, None])
            dD = (dy * uf).sum((0, 2))
        if ctx.softplus:
            # softplus'(x) = sigmoid(x) = 1 - exp(-softplus(x)), exact in fp32 also above torch's
            # threshold (where softplus(x) = x and sigmoid(x) rounds to 1).
            ddt = ddt * -torch.expm1(-dt)
        ddelta_bias = ddt.sum((0, 2)) if delta_bias is not None else None
        dB = reduce_group_grad(dBt.transpose(-1, -2), B)
        dC = reduce_group_grad(dCt.transpose(-1, -2), C)
        return (None, _cast(du, u), ddt.to(ctx.delta_dtype), _cast(dA, A), _cast(dB, B), _cast(dC, C),
                _cast(dD, D), _cast(dz, z), _cast(ddelta_bias, delta_bias), None)


def scan_with_kernel(kernel: Any, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                     D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                     delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                     return_last_state: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Run `SelectiveScanFunction` with the mamba_ssm calling convention."""
    out, last_state = SelectiveScanFunction.apply(kernel, u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
    return (out, last_state) if return_last_state else out
