"""CPU forward and backward of the fused bidirectional mixer inner path, over the C++ kernels of
`csrc/bimamba_cpu.cpp` (conv + SiLU and the selective scan, channels-last, either time direction) and torch's
GEMMs.

Everything stays in the (batch, L, channels) layout the projections produce, so nothing is transposed or
flipped. The kernels compute in fp64 for fp64 inputs, else fp32. The training forward keeps only each direction's
x_proj output (batch, L, dt_rank + 2N) and the scan state entering every chunk of ``SCAN_CHUNK`` steps (batch,
L / chunk, N, d_inner); the op's input is kept by autograd anyway, and the backward recomputes in_proj, the conv, Δ
and the scan (chunk by chunk). The scan kernel forms Δ = softplus(dt_proj(dt_low)) itself, and the second
direction's scan applies the silu(z) gate as it writes.

Inference (nothing saved) runs each direction in windows of ``INFER_CHUNK`` steps, carrying the scan state from
one to the next: only x (in_proj's first half), y and the output span the whole sequence; the conv output, the
x_proj output, z and each GEMM's result exist for one window at a time, so the memory of a block grows by
(2 d_inner + d_model) values per token and its temporaries stay in cache.

bf16 inputs (autocast, or a model cast to bf16): on a CPU that multiplies bf16 natively (AVX512-BF16 or AMX), the
big GEMMs (in_proj, out_proj and their gradients) run in bf16 with fp32 accumulation, as a Linear under autocast
does; the kernels and the small x_proj / dt_proj products stay fp32. Elsewhere (AVX2 only) bf16 GEMMs are emulated
and slower than fp32, so everything runs in fp32.
"""
import functools
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function

from .bimamba_params import Direction, InnerParams, map_params

INFER_CHUNK = 1024  # steps per window of the inference forward: a multiple of the scan kernel's block (64)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels' dtype: fp64 for fp64 inputs, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.lru_cache(maxsize=None)
def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16)."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def gemm_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the big GEMMs for inputs of `dtype`: bf16 when the CPU runs it natively, else the kernels'."""
    return torch.bfloat16 if dtype == torch.bfloat16 and native_bf16() else compute_dtype(dtype)


def _kernel_params(params: InnerParams, dtype: torch.dtype, gemm: torch.dtype) -> InnerParams:
    """The parameters as the op uses them: the big GEMMs' operands (in_proj, out_proj) in `gemm`, the rest (conv,
    x_proj, dt_proj, A, D, the Δ bias) in the kernels' `dtype`."""
    p = map_params(lambda t: t.to(dtype), params)
    return p._replace(in_proj_weight=params.in_proj_weight.to(gemm), out_proj_weight=params.out_proj_weight.to(gemm),
                      in_proj_bias=None if p.in_proj_bias is None else params.in_proj_bias.to(gemm),
                      out_proj_bias=None if p.out_proj_bias is None else params.out_proj_bias.to(gemm))


def _in_proj(hidden: Tensor, p: InnerParams, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """x, z (batch, L, d_inner) in the kernels' `dtype`: the two halves (row views, or copies when the GEMM ran in
    another dtype) of in_proj's output."""
    with record_function("bimamba.in_proj"):
        x, z = F.linear(hidden, p.in_proj_weight, p.in_proj_bias).chunk(2, dim=-1)
        return x.to(dtype), z.to(dtype)


def _out_proj(y: Tensor, p: InnerParams) -> Tensor:
    with record_function("bimamba.out_proj"):
        return F.linear(y.to(p.out_proj_weight.dtype), p.out_proj_weight, p.out_proj_bias)


def forward(ext, hidden: Tensor, params: InnerParams, save: bool) -> Tuple[Tensor, List[Tensor]]:
    """hidden (batch, L, d_model) -> (out (batch, L, d_model), residuals for `backward`: per direction x_dbl and
    the chunk states; empty when not `save`)."""
    dtype, gemm = compute_dtype(hidden.dtype), gemm_dtype(hidden.dtype)
    p = _kernel_params(params, dtype, gemm)
    hidden_g = hidden.to(gemm)
    if not save:
        return _forward_windows(ext, hidden_g, p, dtype).to(hidden.dtype), []
    x, z = _in_proj(hidden_g, p, dtype)
    y = torch.empty(x.shape, dtype=dtype)
    u: Optional[Tensor] = None
    residuals: List[Tensor] = []
    for reverse, d in ((False, p.forward), (True, p.backward)):
        with record_function("bimamba.conv"):
            u = ext.conv_forward(x, d.conv_weight, d.conv_bias, reverse, u)
        x_dbl = F.linear(u, d.x_proj_weight)
        with record_function("bimamba.scan"):
            states = ext.scan_forward(u, x_dbl, d.dt_proj_weight, d.dt_proj_bias, d.A, d.D, y, reverse, reverse,
                                      True, z if reverse else None)
        residuals += [x_dbl, states]
    del u, x, z
    return _out_proj(y, p).to(hidden.dtype), residuals


def _forward_windows(ext, hidden: Tensor, p: InnerParams, dtype: torch.dtype, chunk: int = INFER_CHUNK) -> Tensor:
    """The inference forward (see the module docstring): hidden (batch, L, d_model) -> (batch, L, d_model)."""
    batch, length, _ = hidden.shape
    d_inner = p.out_proj_weight.shape[1]
    w_x, w_z = p.in_proj_weight.split(d_inner)
    b_x, b_z = (None, None) if p.in_proj_bias is None else p.in_proj_bias.split(d_inner)
    with record_function("bimamba.in_proj"):
        x = F.linear(hidden, w_x, b_x).to(dtype)  # (batch, L, d_inner): the convs of both directions read it
    y = torch.empty_like(x)
    out = hidden.new_empty(batch, length, p.out_proj_weight.shape[0])
    state = x.new_empty(batch, p.forward.A.shape[1], d_inner)  # carried from window to window
    window = x.new_empty(batch * min(chunk, length) * d_inner)  # the conv output of one window
    for reverse, d in ((False, p.forward), (True, p.backward)):
        for i0 in range(0, length, chunk):
            i1 = min(length, i0 + chunk)
            t0, t1 = (length - i1, length - i0) if reverse else (i0, i1)  # the window's times
            u = window[:batch * (i1 - i0) * d_inner].view(batch, i1 - i0, d_inner)
            with record_function("bimamba.conv"):
                ext.conv_forward(x, d.conv_weight, d.conv_bias, reverse, u, (i0, i1))
            gate = None
            if reverse:
                with record_function("bimamba.in_proj"):
                    gate = F.linear(hidden[:, t0:t1], w_z, b_z).to(dtype)
            x_dbl = F.linear(u, d.x_proj_weight)
            with record_function("bimamba.scan"):
                ext.scan_forward(u, x_dbl, d.dt_proj_weight, d.dt_proj_bias, d.A, d.D, y, reverse, reverse, False,
                                 gate, (i0, i1), state if i0 else None, state)
            if reverse:  # this window of y is final: project it while it is in cache
                out[:, t0:t1] = _out_proj(y[:, t0:t1], p)
    return out


def backward(ext, hidden: Tensor, params: InnerParams, residuals: List[Tensor], dout: Tensor
             ) -> Tuple[Tensor, InnerParams]:
    """Gradients (dhidden, InnerParams of parameter gradients, None where a parameter is None) of `forward`'s
    output given its gradient dout (batch, L, d_model)."""
    dtype, gemm = compute_dtype(hidden.dtype), gemm_dtype(hidden.dtype)
    p = _kernel_params(params, dtype, gemm)
    hidden_g = hidden.to(gemm)
    dout = dout.to(gemm).contiguous()
    x, z = _in_proj(hidden_g, p, dtype)
    with record_function("bimamba.out_proj"):
        d_gated = torch.matmul(dout, p.out_proj_weight).to(dtype)  # (batch, L, d_inner)
    with record_function("bimamba.gate"):
        dy = ext.gate_grad_y(z, d_gated)  # d_gated silu(z)
    y = torch.empty_like(dy)  # the scans' output before the gate, recomputed by their backward passes
    dxz = torch.empty(hidden.shape[:-1] + (2 * dy.shape[-1],), dtype=dtype)
    dx, dz = dxz.chunk(2, dim=-1)
    u: Optional[Tensor] = None
    direction_grads = []
    for index, d in enumerate((p.forward, p.backward)):
        reverse = index == 1
        x_dbl, states = residuals[2 * index], residuals[2 * index + 1]
        with record_function("bimamba.conv"):
            u = ext.conv_forward(x, d.conv_weight, d.conv_bias, reverse, u)
        with record_function("bimamba.scan_backward"):
            du, ddt, dA, dD, ddt_bias, dB, dC = ext.scan_backward(u, x_dbl, d.dt_proj_weight, d.dt_proj_bias, d.A,
                                                                  d.D, states, dy, y, reverse, reverse)
        dt_low = x_dbl[..., :d.dt_proj_weight.shape[1]]
        d_x_dbl = torch.cat([torch.matmul(ddt, d.dt_proj_weight), dB, dC], dim=-1)
        d_dt_proj_weight = ddt.flatten(0, 1).t() @ dt_low.flatten(0, 1)
        d_x_proj_weight = d_x_dbl.flatten(0, 1).t() @ u.flatten(0, 1)
        du.flatten(0, 1).addmm_(d_x_dbl.flatten(0, 1), d.x_proj_weight)
        del ddt, d_x_dbl
        with record_function("bimamba.conv_backward"):
            d_conv_weight, d_conv_bias = ext.conv_backward(x, d.conv_weight, d.conv_bias, du, dx, reverse, reverse)
        del du
        direction_grads.append(Direction(d_conv_weight, d_conv_bias, d_x_proj_weight, d_dt_proj_weight, ddt_bias,
                                         dA, dD))
    del u, dy, x
    with record_function("bimamba.gate"):
        ext.gate_grad_z(z, d_gated, y, dz)  # dz = d_gated y silu'(z); y <- y silu(z)
    del z, d_gated
    with record_function("bimamba.out_proj"):
        d_out_proj_weight = dout.flatten(0, 1).t() @ y.to(gemm).flatten(0, 1)
    d_out_proj_bias = None if p.out_proj_bias is None else dout.sum((0, 1))
    del y
    with record_function("bimamba.in_proj"):
        dxz = dxz.to(gemm)
        d_hidden = torch.matmul(dxz, p.in_proj_weight)
        d_in_proj_weight = dxz.flatten(0, 1).t() @ hidden_g.flatten(0, 1)
    d_in_proj_bias = None if p.in_proj_bias is None else dxz.sum((0, 1))
    grads = InnerParams(d_in_proj_weight, d_in_proj_bias, *direction_grads, d_out_proj_weight, d_out_proj_bias)
    return d_hidden.to(hidden.dtype), map_params(lambda g, t: g.to(t.dtype), grads, params)
