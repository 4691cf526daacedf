"""CPU forward and backward of the fused bidirectional mixer inner path, over the C++ kernels of
`csrc/bimamba_cpu.cpp` (conv + SiLU and the selective scan, channels-last, either time direction) and torch's
GEMMs.

Everything stays in the (batch, L, channels) layout the projections produce, so nothing is transposed or
flipped. Computes in fp64 for fp64 inputs, else fp32. The forward keeps, besides xz, only each direction's
x_proj output (batch, L, dt_rank + 2N) and the scan state entering every chunk of ``scan_chunk`` steps
(batch, L / chunk, N, d_inner); the backward recomputes the conv, Δ and the scan chunk by chunk.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .bimamba_params import Direction


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp64 inputs, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


def _direction(p: Direction, dtype: torch.dtype) -> Direction:
    return Direction(*(_cast(t, dtype) for t in p))


def _split(x_dbl: Tensor, dt_rank: int, n_state: int) -> Tuple[Tensor, Tensor, Tensor]:
    """x_proj output (batch, L, dt_rank + 2N) -> row views dt_low, B, C."""
    return x_dbl[..., :dt_rank], x_dbl[..., dt_rank:dt_rank + n_state], x_dbl[..., dt_rank + n_state:]


def forward(ext, xz: Tensor, directions: Sequence[Direction], out_proj_weight: Tensor,
            out_proj_bias: Optional[Tensor], save: bool) -> Tuple[Tensor, List[Tensor]]:
    """xz (batch, L, 2·d_inner) -> (out (batch, L, d_model), residuals for `backward`: per direction
    x_dbl and the chunk states; empty when not `save`)."""
    dtype = compute_dtype(xz.dtype)
    xz = xz.to(dtype)
    d_inner = xz.shape[-1] // 2
    x, z = xz[..., :d_inner], xz[..., d_inner:]
    y = xz.new_empty(x.shape)
    residuals: List[Tensor] = []
    for index, raw in enumerate(directions):
        p = _direction(raw, dtype)
        reverse = index == 1
        u = ext.conv_forward(x, p.conv_weight, p.conv_bias, reverse)
        x_dbl = F.linear(u, p.x_proj_weight)
        dt_low, B, C = _split(x_dbl, p.dt_proj_weight.shape[1], p.A.shape[1])
        dt = F.linear(dt_low, p.dt_proj_weight)
        states = ext.scan_forward(u, dt, p.dt_proj_bias, p.A, B, C, p.D, y, index > 0, reverse, save)
        if save:
            residuals += [x_dbl, states]
        del u, dt, x_dbl
    gated = y.mul_(F.silu(z))
    out = F.linear(gated, out_proj_weight.to(dtype), _cast(out_proj_bias, dtype))
    return out, residuals


def backward(ext, xz: Tensor, directions: Sequence[Direction], out_proj_weight: Tensor,
             out_proj_bias: Optional[Tensor], residuals: Sequence[Tensor],
             dout: Tensor) -> Tuple[Tensor, List[Optional[Tensor]], Tensor, Optional[Tensor]]:
    """Gradients (dxz, both directions' parameter gradients in `Direction` field order, dout_proj_weight,
    dout_proj_bias) of `forward`'s output given its gradient dout (batch, L, d_model)."""
    dtype = compute_dtype(xz.dtype)
    xz = xz.to(dtype)
    dout = dout.to(dtype).contiguous()
    w_out = out_proj_weight.to(dtype)
    d_inner = xz.shape[-1] // 2
    x, z = xz[..., :d_inner], xz[..., d_inner:]
    d_gated = torch.matmul(dout, w_out)  # (batch, L, d_inner)
    sig_z = torch.sigmoid(z)
    dy = d_gated * (z * sig_z)
    y = torch.empty_like(dy)  # the scans' output, recomputed by their backward passes
    dxz = xz.new_empty(xz.shape)
    dx = dxz[..., :d_inner]
    param_grads: List[Optional[Tensor]] = []
    for index, raw in enumerate(directions):
        p = _direction(raw, dtype)
        reverse = index == 1
        x_dbl, states = residuals[2 * index], residuals[2 * index + 1]
        dt_rank = p.dt_proj_weight.shape[1]
        dt_low, B, C = _split(x_dbl, dt_rank, p.A.shape[1])
        u = ext.conv_forward(x, p.conv_weight, p.conv_bias, reverse)
        dt = F.linear(dt_low, p.dt_proj_weight)
        du, ddt, dA, dD, ddt_bias, dB, dC = ext.scan_backward(u, dt, p.dt_proj_bias, p.A, B, C, p.D, states, dy,
                                                              y, index > 0, reverse)
        del dt
        d_x_dbl = torch.cat([torch.matmul(ddt, p.dt_proj_weight), dB, dC], dim=-1)
        d_dt_proj_weight = ddt.flatten(0, 1).t() @ dt_low.flatten(0, 1)
        d_x_proj_weight = d_x_dbl.flatten(0, 1).t() @ u.flatten(0, 1)
        du.flatten(0, 1).addmm_(d_x_dbl.flatten(0, 1), p.x_proj_weight)
        del u, ddt, d_x_dbl
        d_conv_weight, d_conv_bias = ext.conv_backward(x, p.conv_weight, p.conv_bias, du, dx, index > 0, reverse)
        grads = Direction(d_conv_weight, d_conv_bias, d_x_proj_weight, d_dt_proj_weight, ddt_bias, dA, dD)
        param_grads += [_cast(g, t.dtype) if t is not None else None for g, t in zip(grads, raw)]
    # silu'(z) = sig + silu(z)·(1 - sig)
    torch.mul(d_gated.mul_(y), sig_z * (1 + z * (1 - sig_z)), out=dxz[..., d_inner:])
    del d_gated
    gated = y.mul_(z * sig_z)
    d_out_proj_weight = dout.flatten(0, 1).t() @ gated.flatten(0, 1)
    d_out_proj_bias = None if out_proj_bias is None else dout.sum((0, 1)).to(out_proj_bias.dtype)
    return dxz, param_grads, d_out_proj_weight.to(out_proj_weight.dtype), d_out_proj_bias
