"""CUDA forward and backward of the fused bidirectional mixer inner path, over the compiled kernels of the stock
PyPI packages (`cuda_glue.load_fused_kernels`: selective_scan_cuda.fwd/bwd of mamba-ssm 2.3.2.post1,
causal_conv1d_cuda.causal_conv1d_fwd/bwd of causal-conv1d 1.7.0) and torch's GEMMs.

The kernels work on (batch, channels, L) tensors and only scan forwards in time, so the backward direction runs on
flipped copies, as in the official mixer. Every tensor handed to a kernel has unit stride along L (the layout both
kernels take without a channels-last special case): in_proj is computed as (batch, 2·d_inner, L), so x and z are
L-contiguous row blocks of it, the conv writes a fresh L-contiguous u, which is also the scan's input, and x_proj is
computed as x_dbl^T (batch, R + 2N, L), so Δ, B and C are L-contiguous without copies. The scans run without the z
gate; their summed output y is gated once.

Saved for the backward (besides the op's input, which autograd keeps anyway): per direction x_dbl^T and the scan
kernel's chunk states (batch, d_inner, ceil(L / 2048), 2N) fp32, and y (batch, d_inner, L) — where the official
mixer keeps xz, a flipped copy of it and each direction's conv output, Δ and scan output. in_proj, the conv output
and Δ are recomputed in the backward.

Dtypes: activations and every GEMM in the input's dtype (fp32, fp16 or bf16; the op's caller applies autocast, see
`bimamba_inner`); A, D and the Δ bias in fp32 and the conv weights as they are, as the kernels take them; the
kernels accumulate in fp32. Gradients are returned in each argument's dtype.
"""
from types import SimpleNamespace
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .bimamba_params import Direction, InnerParams, map_gemm_operands, map_params
from .cuda_glue import l_contiguous


def _in_proj(hidden: Tensor, p: InnerParams) -> Tuple[Tensor, Tensor]:
    """x, z (batch, d_inner, L): the two row blocks of in_proj's output computed as (batch, 2·d_inner, L)."""
    xz = torch.matmul(p.in_proj_weight, hidden.transpose(1, 2))
    if p.in_proj_bias is not None:
        xz = xz + p.in_proj_bias[:, None]
    return xz.chunk(2, dim=1)


def _conv_weight(p: Direction) -> Tuple[Tensor, Optional[Tensor]]:
    """The conv weight (contiguous) and its bias in the weight's dtype, as the kernel demands."""
    weight = p.conv_weight.contiguous()
    return weight, None if p.conv_bias is None else p.conv_bias.to(weight.dtype).contiguous()


def _conv_forward(kernels: SimpleNamespace, x: Tensor, p: Direction) -> Tensor:
    """silu(causal conv(x)) (batch, d_inner, L) for an L-contiguous x, into a fresh L-contiguous tensor."""
    weight, bias = _conv_weight(p)
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    kernels.conv_fwd(x, weight, bias, None, None, out, None, True)
    return out


def _scan_inputs(u: Tensor, x_dbl: Tensor, p: Direction) -> Tuple[Tensor, ...]:
    """The scan kernel's arguments from u and x_dbl^T (batch, R + 2N, L): Δ before its bias (batch, d_inner, L),
    B and C (batch, 1, N, L) views (unit stride along L), A, D and the Δ bias in fp32."""
    rank, n_state = p.dt_proj_weight.shape[1], p.A.shape[1]
    delta = torch.matmul(p.dt_proj_weight, x_dbl[:, :rank])
    B = x_dbl[:, rank:rank + n_state].unsqueeze(1)
    C = x_dbl[:, rank + n_state:].unsqueeze(1)
    return (u, delta, p.A.float().contiguous(), B, C, p.D.float().contiguous(), None,
            p.dt_proj_bias.float().contiguous())


def _flip(t: Tensor, reverse: bool) -> Tensor:
    """t flipped in time when `reverse` (a fresh L-contiguous tensor), else t."""
    return t.flip(-1) if reverse else t


def forward(kernels: SimpleNamespace, hidden: Tensor, params: InnerParams, save: bool
            ) -> Tuple[Tensor, List[Tensor]]:
    """hidden (batch, L, d_model) -> (out (batch, L, d_model), residuals: x_dbl^T and states per direction, then
    y; empty when not `save`)."""
    p = map_gemm_operands(lambda t: t.to(hidden.dtype), params)
    x, z = _in_proj(hidden, p)
    y: Optional[Tensor] = None
    residuals: List[Tensor] = []
    for reverse, d in ((False, p.forward), (True, p.backward)):
        u = _conv_forward(kernels, l_contiguous(_flip(x, reverse)), d)
        x_dbl = torch.matmul(d.x_proj_weight, u)  # (batch, R + 2N, L)
        out, states = kernels.scan_fwd(*_scan_inputs(u, x_dbl, d), True)[:2]
        out = _flip(out, reverse)
        y = out if y is None else y.add_(out)
        if save:
            residuals += [x_dbl, states]
    gated = y * F.silu(z)
    out = F.linear(gated.transpose(1, 2), p.out_proj_weight, p.out_proj_bias)
    if save:
        residuals.append(y)
    return out, residuals


def backward(kernels: SimpleNamespace, hidden: Tensor, params: InnerParams, residuals: Sequence[Tensor],
             dout: Tensor) -> Tuple[Tensor, InnerParams]:
    """(dhidden, InnerParams of parameter gradients, None where a parameter is None)."""
    dtype = hidden.dtype
    p = map_gemm_operands(lambda t: t.to(dtype), params)
    x, z = _in_proj(hidden, p)
    y = residuals[-1]
    dout = dout.to(dtype)
    d_gated = torch.matmul(p.out_proj_weight.t(), dout.transpose(1, 2))  # (batch, d_inner, L)
    sig_z = torch.sigmoid(z)
    silu_z = z * sig_z
    dy = d_gated * silu_z
    d_out_proj_weight = torch.einsum("blm,bcl->mc", dout, y * silu_z)
    d_out_proj_bias = None if p.out_proj_bias is None else dout.sum((0, 1))
    d_inner = y.shape[1]
    dxz = torch.empty(y.shape[0], 2 * d_inner, y.shape[2], device=y.device, dtype=dtype)
    dx, dz = dxz[:, :d_inner], dxz[:, d_inner:]  # L-contiguous row blocks
    torch.mul(d_gated * y, sig_z + silu_z * (1 - sig_z), out=dz)
    del d_gated, sig_z, silu_z
    direction_grads = []
    for reverse, d in ((False, p.forward), (True, p.backward)):
        x_dbl, states = residuals[2 * int(reverse)], residuals[2 * int(reverse) + 1]
        rank = d.dt_proj_weight.shape[1]
        xd = l_contiguous(_flip(x, reverse))
        u = _conv_forward(kernels, xd, d)
        inputs = _scan_inputs(u, x_dbl, d)
        du, ddelta, dA, dB, dC, dD, ddt_bias = kernels.scan_bwd(*inputs, l_contiguous(_flip(dy, reverse)), states,
                                                                None, None, True, False)[:7]
        # x_dbl^T = [dt_low^T; B; C] feeds Δ = dt_proj_weight @ dt_low^T and the scan.
        d_x_dbl = torch.cat([torch.matmul(d.dt_proj_weight.t(), ddelta), dB.squeeze(1), dC.squeeze(1)], dim=1)
        d_dt_proj_weight = torch.einsum("bcl,brl->cr", ddelta, x_dbl[:, :rank])
        d_x_proj_weight = torch.einsum("bkl,bcl->kc", d_x_dbl, u)
        du = du + torch.matmul(d.x_proj_weight.t(), d_x_dbl)
        weight, bias = _conv_weight(d)
        d_conv_weight = torch.zeros(weight.shape, device=hidden.device, dtype=torch.float32)
        d_conv_bias = None if bias is None else torch.zeros(bias.shape, device=hidden.device, dtype=torch.float32)
        if reverse:
            d_xd = torch.empty(xd.shape, device=xd.device, dtype=dtype)
            kernels.conv_bwd(xd, weight, bias, du, None, None, None, d_xd, d_conv_weight, d_conv_bias, None, True)
            dx.add_(d_xd.flip(-1))
        else:  # the first direction writes dx in place, in xz's layout
            kernels.conv_bwd(xd, weight, bias, du, None, None, None, dx, d_conv_weight, d_conv_bias, None, True)
        direction_grads.append(Direction(d_conv_weight, d_conv_bias, d_x_proj_weight, d_dt_proj_weight, ddt_bias,
                                         dA, dD))
    d_hidden = torch.matmul(dxz.transpose(1, 2), p.in_proj_weight)
    d_in_proj_weight = torch.einsum("bjl,blm->jm", dxz, hidden)
    d_in_proj_bias = None if p.in_proj_bias is None else dxz.sum((0, 2))
    grads = InnerParams(d_in_proj_weight, d_in_proj_bias, *direction_grads, d_out_proj_weight, d_out_proj_bias)
    return d_hidden, map_params(lambda g, t: g.to(t.dtype), grads, params)
