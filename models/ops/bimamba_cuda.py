"""CUDA forward and backward of the fused bidirectional mixer inner path, over the compiled kernels of the stock
PyPI packages (`cuda_glue.load_fused_kernels`: selective_scan_cuda.fwd/bwd of mamba-ssm 2.3.2.post1,
causal_conv1d_cuda.causal_conv1d_fwd/bwd of causal-conv1d 1.7.0) and torch's GEMMs.

The kernels work on (batch, d_inner, L) tensors and only scan forwards in time, so the backward direction runs
on flipped copies, as in the official mixer. The scans run without the z gate; their summed output y is gated
once. Saved for the backward (besides the op's input, which autograd keeps anyway): per direction x_dbl
(batch, L, R + 2N) and the kernel's chunk states (batch, d_inner, ceil(L / 2048), 2N), and y (batch, d_inner, L)
— where the official mixer keeps xz, a flipped copy of it and each direction's conv output, Δ and scan output.
in_proj, the conv output and Δ are recomputed in the backward. Computes in the input's dtype (A, D and the Δ bias
in fp32, as the kernels want).
"""
from types import SimpleNamespace
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .bimamba_params import Direction, InnerParams, map_params
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


def _in_proj(hidden: Tensor, p: InnerParams) -> Tuple[Tensor, Tensor]:
    """x, z as (batch, d_inner, L) views of the in_proj output (channels-last)."""
    xz = F.linear(hidden, p.in_proj_weight.to(hidden.dtype),
                  None if p.in_proj_bias is None else p.in_proj_bias.to(hidden.dtype)).transpose(1, 2)
    d_inner = xz.shape[1] // 2
    return xz[:, :d_inner], xz[:, d_inner:]


def forward(kernels: SimpleNamespace, hidden: Tensor, p: InnerParams, save: bool) -> Tuple[Tensor, List[Tensor]]:
    """hidden (batch, L, d_model) -> (out (batch, L, d_model), residuals: x_dbl and states per direction, then y;
    empty when not `save`)."""
    dtype = hidden.dtype
    x, z = _in_proj(hidden, p)
    y: Optional[Tensor] = None
    residuals: List[Tensor] = []
    for index, d in enumerate((p.forward, p.backward)):
        reverse = index == 1
        u = _conv_forward(kernels, _conv_x(_flip(x, reverse)), d)
        x_dbl = F.linear(u.transpose(1, 2), d.x_proj_weight.to(dtype))  # (batch, L, R + 2N)
        out, states = kernels.scan_fwd(*_scan_inputs(u, x_dbl, d, dtype), True)[:2]
        out = _flip(out, reverse)
        y = out if y is None else y.add_(out)
        if save:
            residuals += [x_dbl, states]
    gated = (y * F.silu(z)).transpose(1, 2)
    out = F.linear(gated, p.out_proj_weight.to(dtype), _cast(p.out_proj_bias, dtype))
    if save:
        residuals.append(y)
    return out, residuals


def backward(kernels: SimpleNamespace, hidden: Tensor, p: InnerParams, residuals: Sequence[Tensor],
             dout: Tensor) -> Tuple[Tensor, InnerParams]:
    """(dhidden, InnerParams of parameter gradients, None where a parameter is None)."""
    dtype = hidden.dtype
    x, z = _in_proj(hidden, p)
    y = residuals[-1]
    dout = dout.to(dtype)
    d_gated = torch.matmul(dout, p.out_proj_weight.to(dtype)).transpose(1, 2)  # (batch, d_inner, L)
    sig_z = torch.sigmoid(z)
    silu_z = z * sig_z
    dy = (d_gated * silu_z).contiguous()
    dz = d_gated * y * (sig_z + silu_z * (1 - sig_z))
    d_out_proj_weight = dout.flatten(0, 1).t() @ (y * silu_z).transpose(1, 2).flatten(0, 1)
    d_out_proj_bias = None if p.out_proj_bias is None else dout.sum((0, 1))
    dx: Optional[Tensor] = None
    direction_grads = []
    for index, d in enumerate((p.forward, p.backward)):
        reverse = index == 1
        x_dbl, states = residuals[2 * index], residuals[2 * index + 1]
        rank = d.dt_proj_weight.shape[1]
        xd = _conv_x(_flip(x, reverse))
        u = _conv_forward(kernels, xd, d)
        inputs = _scan_inputs(u, x_dbl, d, dtype)
        du, ddelta, dA, dB, dC, dD, ddt_bias = kernels.scan_bwd(*inputs, _flip(dy, reverse).contiguous(), states,
                                                                None, None, True, False)[:7]
        # x_dbl = [dt_low, B, C] feeds Δ = dt_proj_weight @ dt_low^T and the scan.
        d_x_dbl = torch.cat([torch.matmul(ddelta.transpose(1, 2), d.dt_proj_weight.to(dtype)),
                             dB.squeeze(1).transpose(1, 2), dC.squeeze(1).transpose(1, 2)], dim=-1).to(dtype)
        d_dt_proj_weight = torch.einsum("bdl,blr->dr", ddelta, x_dbl[..., :rank])
        d_x_proj_weight = torch.einsum("blk,bdl->kd", d_x_dbl, u)
        du = du + torch.matmul(d_x_dbl, d.x_proj_weight.to(dtype)).transpose(1, 2)
        weight, bias = _conv_weight(d)
        d_xd = _dx_like(xd)
        d_conv_weight = torch.zeros(weight.shape, device=hidden.device, dtype=torch.float32)
        d_conv_bias = None if bias is None else torch.zeros(bias.shape, device=hidden.device, dtype=torch.float32)
        kernels.conv_bwd(xd, weight, bias, du.contiguous(), None, None, None, d_xd, d_conv_weight, d_conv_bias,
                         None, True)
        d_xd = _flip(d_xd, reverse)
        dx = d_xd if dx is None else dx + d_xd
        direction_grads.append(Direction(d_conv_weight, d_conv_bias, d_x_proj_weight, d_dt_proj_weight, ddt_bias,
                                         dA, dD))
    dxz = torch.cat([dx, dz], dim=1).transpose(1, 2)  # (batch, L, 2·d_inner)
    d_hidden = torch.matmul(dxz, p.in_proj_weight.to(dtype))
    d_in_proj_weight = dxz.flatten(0, 1).t() @ hidden.flatten(0, 1)
    d_in_proj_bias = None if p.in_proj_bias is None else dxz.sum((0, 1))
    grads = InnerParams(d_in_proj_weight, d_in_proj_bias, *direction_grads, d_out_proj_weight, d_out_proj_bias)
    return d_hidden, map_params(lambda g, t: g.to(t.dtype), grads, p)


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)

