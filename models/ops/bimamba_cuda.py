"""CUDA forward and backward of the fused bidirectional mixer inner path, over the compiled kernels of the stock
PyPI packages (`cuda_glue.load_fused_kernels`: selective_scan_cuda.fwd/bwd of mamba-ssm 2.3.2.post1,
causal_conv1d_cuda.causal_conv1d_fwd/bwd of causal-conv1d 1.7.0) and torch's GEMMs.

The kernels work on (batch, d_inner, L) tensors and only scan forwards in time, so the backward direction runs
on flipped copies, as in the official mixer. The scans run without the z gate; their summed output y is gated
once. Saved for the backward: xz, per direction x_dbl (batch, L, R + 2N) and the kernel's chunk states
(batch, d_inner, ceil(L / 2048), 2N), and y (batch, d_inner, L) — one (batch, d_inner, L) tensor where the
official mixer keeps a flipped copy of xz and each direction's conv output, Δ and scan output. The conv output
and Δ are recomputed in the backward. Computes in xz's dtype (A, D and the Δ bias in fp32, as the kernels want).
"""
from types import SimpleNamespace
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .bimamba_params import Direction
from .cuda_glue import channels_last_ok


def _conv_x(x: Tensor) -> Tensor:
    """x (batch, d_inner, L) as the conv kernel accepts it: channels-last when allowed, else L-contiguous."""
    return x if channels_last_ok(x) else x.contiguous()


def _dx_like(x: Tensor) -> Tensor:
    """A gradient buffer in x's layout (the kernel demands it): channels-last or L-contiguous."""
    if x.stride(1) == 1 and x.stride(2) > 1:
        return torch.empty(x.shape[0], x.shape[2], x.shape[1], device=x.device, dtype=x.dtype).transpose(1, 2)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _conv_weight(p: Direction) -> Tuple[Tensor, Optional[Tensor]]:
    weight = p.conv_weight.contiguous()
    return weight, None if p.conv_bias is None else p.conv_bias.to(weight.dtype).contiguous()


def _conv_forward(kernels: SimpleNamespace, x: Tensor, p: Direction) -> Tensor:
    """silu(causal conv(x)) (batch, d_inner, L), L-contiguous."""
    weight, bias = _conv_weight(p)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    kernels.conv_fwd(x, weight, bias, None, None, out, None, True)
    return out


def _scan_inputs(u: Tensor, x_dbl: Tensor, p: Direction, dtype: torch.dtype) -> Tuple[Tensor, ...]:
    """Δ before bias (batch, d_inner, L), B and C (batch, 1, N, L) unit-stride along L, A, D, Δ bias fp32."""
    rank, n_state = p.dt_proj_weight.shape[1], p.A.shape[1]
    delta = torch.matmul(p.dt_proj_weight.to(dtype), x_dbl[..., :rank].transpose(1, 2))
    B = x_dbl[..., rank:rank + n_state].transpose(1, 2).unsqueeze(1).contiguous()
    C = x_dbl[..., rank + n_state:].transpose(1, 2).unsqueeze(1).contiguous()
    return (u, delta, p.A.float().contiguous(), B, C, p.D.float().contiguous(),
            None, p.dt_proj_bias.float().contiguous())


def _flip(t: Tensor, reverse: bool) -> Tensor:
    return t.flip(-1) if reverse else t


def forward(kernels: SimpleNamespace, xz: Tensor, directions: Sequence[Direction], out_proj_weight: Tensor,
            out_proj_bias: Optional[Tensor], save: bool) -> Tuple[Tensor, List[Tensor]]:
    """xz (batch, L, 2·d_inner) -> (out (batch, L, d_model), residuals: x_dbl and states per direction, then y;
    empty when not `save`)."""
    dtype = xz.dtype
    d_inner = xz.shape[-1] // 2
    x, z = xz.transpose(1, 2)[:, :d_inner], xz.transpose(1, 2)[:, d_inner:]  # (batch, d_inner, L) views
    y: Optional[Tensor] = None
    residuals: List[Tensor] = []
    for index, p in enumerate(directions):
        reverse = index == 1
        u = _conv_forward(kernels, _conv_x(_flip(x, reverse)), p)
        x_dbl = F.linear(u.transpose(1, 2), p.x_proj_weight.to(dtype))  # (batch, L, R + 2N)
        out, states = kernels.scan_fwd(*_scan_inputs(u, x_dbl, p, dtype), True)[:2]
        out = _flip(out, reverse)
        y = out if y is None else y.add_(out)
        if save:
            residuals += [x_dbl, states]
    gated = (y * F.silu(z)).transpose(1, 2)
    out = F.linear(gated, out_proj_weight.to(dtype), None if out_proj_bias is None else out_proj_bias.to(dtype))
    if save:
        residuals.append(y)
    return out, residuals


def backward(kernels: SimpleNamespace, xz: Tensor, directions: Sequence[Direction], out_proj_weight: Tensor,
             out_proj_bias: Optional[Tensor], residuals: Sequence[Tensor],
             dout: Tensor) -> Tuple[Tensor, List[Optional[Tensor]], Tensor, Optional[Tensor]]:
    """(dxz, both directions' parameter gradients in `Direction` field order, dout_proj_weight, dout_proj_bias)."""
    dtype = xz.dtype
    d_inner = xz.shape[-1] // 2
    x, z = xz.transpose(1, 2)[:, :d_inner], xz.transpose(1, 2)[:, d_inner:]
    y = residuals[-1]
    dout = dout.to(dtype)
    d_gated = torch.matmul(dout, out_proj_weight.to(dtype)).transpose(1, 2)  # (batch, d_inner, L)
    sig_z = torch.sigmoid(z)
    silu_z = z * sig_z
    dy = (d_gated * silu_z).contiguous()
    dz = d_gated * y * (sig_z + silu_z * (1 - sig_z))
    d_out_proj_weight = dout.flatten(0, 1).t() @ (y * silu_z).transpose(1, 2).flatten(0, 1)
    d_out_proj_bias = None if out_proj_bias is None else dout.sum((0, 1)).to(out_proj_bias.dtype)
    dx: Optional[Tensor] = None
    param_grads: List[Optional[Tensor]] = []
    for index, p in enumerate(directions):
        reverse = index == 1
        x_dbl, states = residuals[2 * index], residuals[2 * index + 1]
        rank = p.dt_proj_weight.shape[1]
        xd = _conv_x(_flip(x, reverse))
        u = _conv_forward(kernels, xd, p)
        inputs = _scan_inputs(u, x_dbl, p, dtype)
        du, ddelta, dA, dB, dC, dD, ddt_bias = kernels.scan_bwd(*inputs, _flip(dy, reverse).contiguous(), states,
                                                                None, None, True, False)[:7]
        # x_dbl = [dt_low, B, C] feeds Δ = dt_proj_weight @ dt_low^T and the scan.
        d_x_dbl = torch.cat([torch.matmul(ddelta.transpose(1, 2), p.dt_proj_weight.to(dtype)),
                             dB.squeeze(1).transpose(1, 2), dC.squeeze(1).transpose(1, 2)], dim=-1).to(dtype)
        d_dt_proj_weight = torch.einsum("bdl,blr->dr", ddelta, x_dbl[..., :rank])
        d_x_proj_weight = torch.einsum("blk,bdl->kd", d_x_dbl, u)
        du = du + torch.matmul(d_x_dbl, p.x_proj_weight.to(dtype)).transpose(1, 2)
        weight, bias = _conv_weight(p)
        d_xd = _dx_like(xd)
        d_conv_weight = torch.zeros(weight.shape, device=xz.device, dtype=torch.float32)
        d_conv_bias = None if bias is None else torch.zeros(bias.shape, device=xz.device, dtype=torch.float32)
        kernels.conv_bwd(xd, weight, bias, du.contiguous(), None, None, None, d_xd, d_conv_weight, d_conv_bias,
                         None, True)
        d_xd = _flip(d_xd, reverse)
        dx = d_xd if dx is None else dx + d_xd
        grads = Direction(d_conv_weight, d_conv_bias, d_x_proj_weight, d_dt_proj_weight, ddt_bias, dA, dD)
        param_grads += [None if t is None else g.to(t.dtype) for g, t in zip(grads, p)]
    dxz = torch.cat([dx, dz], dim=1).transpose(1, 2)  # (batch, L, 2·d_inner)
    return dxz, param_grads, d_out_proj_weight.to(out_proj_weight.dtype), d_out_proj_bias
