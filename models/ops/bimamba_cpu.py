"""CPU forward and backward of the fused bidirectional mixer inner path, over the C++ kernels of
`csrc/bimamba_cpu.cpp` (conv + SiLU and the selective scan, channels-last, either time direction) and torch's
GEMMs.

Everything stays in the (batch, L, channels) layout the projections produce, so nothing is transposed or
flipped. Computes in fp64 for fp64 inputs, else fp32. The training forward keeps only each direction's x_proj
output (batch, L, dt_rank + 2N) and the scan state entering every chunk of ``SCAN_CHUNK`` steps (batch, L / chunk,
N, d_inner); the op's input is kept by autograd anyway, and the backward recomputes in_proj, the conv, Δ and the
scan (chunk by chunk). The scan kernel forms Δ = softplus(dt_proj(dt_low)) itself, and the second direction's
scan applies the silu(z) gate as it writes.

Inference (nothing saved) runs each direction in windows of ``INFER_CHUNK`` steps, carrying the scan state from
one to the next: only x (in_proj's first half), y and the output span the whole sequence; the conv output, the
x_proj output, z and each GEMM's result exist for one window at a time, so the memory of a block grows by
(2 d_inner + d_model) values per token and its temporaries stay in cache.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .bimamba_params import Direction, InnerParams, map_params

INFER_CHUNK = 1024  # steps per window of the inference forward: a multiple of the scan kernel's block (64)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp64 inputs, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _in_proj(hidden: Tensor, p: InnerParams) -> Tuple[Tensor, Tensor]:
    """x, z (batch, L, d_inner): the two halves (row views) of in_proj's output."""
    xz = F.linear(hidden, p.in_proj_weight, p.in_proj_bias)
    return xz.chunk(2, dim=-1)


def forward(ext, hidden: Tensor, params: InnerParams, save: bool) -> Tuple[Tensor, List[Tensor]]:
    """hidden (batch, L, d_model) -> (out (batch, L, d_model), residuals for `backward`: per direction x_dbl and
    the chunk states; empty when not `save`)."""
    dtype = compute_dtype(hidden.dtype)
    p = map_params(lambda t: t.to(dtype), params)
    import os
    if not save and not os.environ.get('OLDPATH'):
        return _forward_windows(ext, hidden.to(dtype), p).to(hidden.dtype), []
    x, z = _in_proj(hidden.to(dtype), p)
    y = torch.empty(x.shape, dtype=dtype)
    u: Optional[Tensor] = None
    residuals: List[Tensor] = []
    for reverse, d in ((False, p.forward), (True, p.backward)):
        u = ext.conv_forward(x, d.conv_weight, d.conv_bias, reverse, u)
        x_dbl = F.linear(u, d.x_proj_weight)
        states = ext.scan_forward(u, x_dbl, d.dt_proj_weight, d.dt_proj_bias, d.A, d.D, y, reverse, reverse, save,
                                  z if reverse else None)
        if save:
            residuals += [x_dbl, states]
    del u, x, z
    return F.linear(y, p.out_proj_weight, p.out_proj_bias).to(hidden.dtype), residuals


def _forward_windows(ext, hidden: Tensor, p: InnerParams, chunk: int = INFER_CHUNK) -> Tensor:
    """The inference forward (see the module docstring): hidden (batch, L, d_model) -> (batch, L, d_model)."""
    batch, length, _ = hidden.shape
    d_inner = p.out_proj_weight.shape[1]
    w_x, w_z = p.in_proj_weight.split(d_inner)
    b_x, b_z = (None, None) if p.in_proj_bias is None else p.in_proj_bias.split(d_inner)
    x = F.linear(hidden, w_x, b_x)  # (batch, L, d_inner): the convs of both directions read it
    y = torch.empty_like(x)
    out = hidden.new_empty(batch, length, p.out_proj_weight.shape[0])
    state = hidden.new_empty(batch, p.forward.A.shape[1], d_inner)  # carried from window to window
    window = hidden.new_empty(batch * min(chunk, length) * d_inner)  # the conv output of one window
    for reverse, d in ((False, p.forward), (True, p.backward)):
        for i0 in range(0, length, chunk):
            i1 = min(length, i0 + chunk)
            t0, t1 = (length - i1, length - i0) if reverse else (i0, i1)  # the window's times
            u = window[:batch * (i1 - i0) * d_inner].view(batch, i1 - i0, d_inner)
            ext.conv_forward(x, d.conv_weight, d.conv_bias, reverse, u, (i0, i1))
            gate = F.linear(hidden[:, t0:t1], w_z, b_z) if reverse else None
            ext.scan_forward(u, F.linear(u, d.x_proj_weight), d.dt_proj_weight, d.dt_proj_bias, d.A, d.D, y,
                             reverse, reverse, False, gate, (i0, i1), state if i0 else None, state)
            if reverse:  # this window of y is final: project it while it is in cache
                out[:, t0:t1] = F.linear(y[:, t0:t1], p.out_proj_weight, p.out_proj_bias)
    return out


def backward(ext, hidden: Tensor, params: InnerParams, residuals: List[Tensor], dout: Tensor
             ) -> Tuple[Tensor, InnerParams]:
    """Gradients (dhidden, InnerParams of parameter gradients, None where a parameter is None) of `forward`'s
    output given its gradient dout (batch, L, d_model)."""
    dtype = compute_dtype(hidden.dtype)
    p = map_params(lambda t: t.to(dtype), params)
    hidden_c = hidden.to(dtype)
    dout = dout.to(dtype).contiguous()
    x, z = _in_proj(hidden_c, p)
    d_gated = torch.matmul(dout, p.out_proj_weight)  # (batch, L, d_inner)
    dy = ext.gate_grad_y(z, d_gated)  # d_gated silu(z)
    y = torch.empty_like(dy)  # the scans' output before the gate, recomputed by their backward passes
    dxz = torch.empty(hidden_c.shape[:-1] + (2 * dy.shape[-1],), dtype=dtype)
    dx, dz = dxz.chunk(2, dim=-1)
    u: Optional[Tensor] = None
    direction_grads = []
    for index, d in enumerate((p.forward, p.backward)):
        reverse = index == 1
        x_dbl, states = residuals[2 * index], residuals[2 * index + 1]
        u = ext.conv_forward(x, d.conv_weight, d.conv_bias, reverse, u)
        du, ddt, dA, dD, ddt_bias, dB, dC = ext.scan_backward(u, x_dbl, d.dt_proj_weight, d.dt_proj_bias, d.A, d.D,
                                                              states, dy, y, reverse, reverse)
        dt_low = x_dbl[..., :d.dt_proj_weight.shape[1]]
        d_x_dbl = torch.cat([torch.matmul(ddt, d.dt_proj_weight), dB, dC], dim=-1)
        d_dt_proj_weight = ddt.flatten(0, 1).t() @ dt_low.flatten(0, 1)
        d_x_proj_weight = d_x_dbl.flatten(0, 1).t() @ u.flatten(0, 1)
        du.flatten(0, 1).addmm_(d_x_dbl.flatten(0, 1), d.x_proj_weight)
        del ddt, d_x_dbl
        d_conv_weight, d_conv_bias = ext.conv_backward(x, d.conv_weight, d.conv_bias, du, dx, reverse, reverse)
        del du
        direction_grads.append(Direction(d_conv_weight, d_conv_bias, d_x_proj_weight, d_dt_proj_weight, ddt_bias,
                                         dA, dD))
    del u, dy, x
    ext.gate_grad_z(z, d_gated, y, dz)  # dz = d_gated y silu'(z); y <- y silu(z)
    del z, d_gated
    d_out_proj_weight = dout.flatten(0, 1).t() @ y.flatten(0, 1)
    d_out_proj_bias = None if p.out_proj_bias is None else dout.sum((0, 1))
    del y
    d_hidden = torch.matmul(dxz, p.in_proj_weight)
    d_in_proj_weight = dxz.flatten(0, 1).t() @ hidden_c.flatten(0, 1)
    d_in_proj_bias = None if p.in_proj_bias is None else dxz.sum((0, 1))
    grads = InnerParams(d_in_proj_weight, d_in_proj_bias, *direction_grads, d_out_proj_weight, d_out_proj_bias)
    return d_hidden.to(hidden.dtype), map_params(lambda g, t: g.to(t.dtype), grads, params)

