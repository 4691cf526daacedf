"""The bidirectional Mamba mixer's inner path, in_proj to out_proj, as one op.

    x, z = in_proj(hidden)                     (batch, L, d_inner) each, from hidden (batch, L, d_model)
    y = scan_f(x) + flip(scan_b(flip(x)))      each scan: causal conv + SiLU -> x_proj -> Δ -> selective scan + D·u
    out = out_proj(y · silu(z))                (batch, L, d_model)

This is the function of the official bimamba "v2" mixer (the sum of the two gated directions; gating the sum is
the same function). `bimamba_inner_ref` composes the standalone ops and is the readable reference;
`bimamba_inner_fn` runs the fused implementation, one autograd node that keeps only its input and small
per-direction tensors and recomputes the rest (in_proj included) in its backward: C++ kernels on CPU
(`bimamba_cpu`), the stock mamba-ssm / causal-conv1d kernels on CUDA (`bimamba_cuda`). It is the custom op
``videomamba::bimamba_inner`` (with fake-tensor and autograd registrations), so torch.compile sees one opaque node
per block instead of a graph break.

Mixed precision. The op itself never autocasts: it computes in the dtypes it is given (its forward and backward run
with autocast off), so forward, backward and the fake implementation always agree. Autocast is applied once, at its
boundary, by `bimamba_inner_fn`, as mamba_ssm's fused function does: under ``torch.autocast`` the input and the
projection weights and biases (in_proj, x_proj, dt_proj, out_proj: the GEMM operands) are cast to the autocast
dtype; the conv weights, A, D and the Δ bias keep theirs (fp32 parameters), and every accumulation inside the
kernels is fp32. Autograd's cast nodes return each parameter's gradient in its own dtype. A model cast to bf16 or
fp16 without autocast (DeepSpeed's engines) passes those dtypes straight through.
"""
import contextlib
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import bimamba_cpu, bimamba_cuda
from .backend import announce, requested_backend, warn_once
from .bimamba_params import FLAT_SIZE, Direction, InnerParams, map_gemm_operands
from .causal_conv1d import causal_conv1d_fn
from .cuda_glue import conv_kernel_supports, load_fused_kernels
from .selective_scan import selective_scan_fn
from .selective_scan_cpu import SCAN_CHUNK, load_cpu_kernel

MAX_CPU_CONV_WIDTH = 8
MAX_STATE = 256
CUDA_SCAN_CHUNK = 2048  # steps per saved state chunk of mamba_ssm's kernel
CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the stock kernels take


def _direction_ref(x: Tensor, p: Direction, backend: Optional[str]) -> Tensor:
    """One direction, composed: x (batch, d_inner, L) -> scan output with the D skip (batch, d_inner, L)."""
    u = causal_conv1d_fn(x, p.conv_weight, p.conv_bias, activation="silu", backend=backend)
    x_dbl = F.linear(u.transpose(1, 2), p.x_proj_weight)  # (batch, L, R + 2N)
    n_state = p.A.shape[1]
    dt, B, C = torch.split(x_dbl, [p.dt_proj_weight.shape[1], n_state, n_state], dim=-1)
    delta = torch.matmul(p.dt_proj_weight, dt.transpose(1, 2))  # (batch, d_inner, L), the bias goes to the scan
    return selective_scan_fn(u, delta, p.A, B.transpose(1, 2), C.transpose(1, 2), p.D, delta_bias=p.dt_proj_bias,
                             delta_softplus=True, backend=backend)


def bimamba_inner_ref(hidden: Tensor, params: InnerParams, backend: Optional[str] = None) -> Tensor:
    """Reference composition of the inner path from `causal_conv1d_fn` and `selective_scan_fn` (run with
    `backend`); hidden (batch, L, d_model) -> (batch, L, d_model). The backward direction runs on flipped copies."""
    xz = F.linear(hidden, params.in_proj_weight, params.in_proj_bias)
    x, z = xz.transpose(1, 2).chunk(2, dim=1)  # (batch, d_inner, L) views
    y = _direction_ref(x, params.forward, backend) + _direction_ref(x.flip(-1), params.backward, backend).flip(-1)
    return F.linear((y * F.silu(z)).transpose(1, 2), params.out_proj_weight, params.out_proj_bias)


# ---- the fused op ---------------------------------------------------------------------------------------------

@torch.library.custom_op("videomamba::bimamba_inner", mutates_args=(), device_types="cpu")
def _fused(hidden: Tensor, in_proj_weight: Tensor, in_proj_bias: Optional[Tensor],
           conv_weight: Tensor, conv_bias: Optional[Tensor], x_proj_weight: Tensor, dt_proj_weight: Tensor,
           dt_proj_bias: Tensor, A: Tensor, D: Tensor,
           conv_weight_b: Tensor, conv_bias_b: Optional[Tensor], x_proj_weight_b: Tensor, dt_proj_weight_b: Tensor,
           dt_proj_bias_b: Tensor, A_b: Tensor, D_b: Tensor,
           out_proj_weight: Tensor, out_proj_bias: Optional[Tensor], save: bool) -> List[Tensor]:
    """[out, *residuals]; on CPU the residuals are per direction x_dbl and the chunk states (none without save)."""
    params = InnerParams.from_flat((in_proj_weight, in_proj_bias, conv_weight, conv_bias, x_proj_weight,
                                    dt_proj_weight, dt_proj_bias, A, D, conv_weight_b, conv_bias_b,
                                    x_proj_weight_b, dt_proj_weight_b, dt_proj_bias_b, A_b, D_b, out_proj_weight,
                                    out_proj_bias))
    with _no_autocast("cpu"):
        out, residuals = bimamba_cpu.forward(load_cpu_kernel().module, hidden, params, save)
    return [out, *residuals]


@_fused.register_kernel("cuda")
def _fused_cuda(hidden, *args):
    """On CUDA the residuals are per direction x_dbl^T and the kernel's chunk states, then y (batch, d_inner, L)."""
    with _no_autocast("cuda"):
        out, residuals = bimamba_cuda.forward(load_fused_kernels(), hidden, InnerParams.from_flat(args[:FLAT_SIZE]),
                                              args[FLAT_SIZE])
    return [out, *residuals]


@_fused.register_fake
def _fused_fake(hidden, *args):
    """Shapes and dtypes of the real implementations: the output in the input's dtype; on CUDA x_dbl^T and y in
    the input's dtype and fp32 chunk states, on CPU everything saved in the C++ kernels' compute dtype."""
    params, save = InnerParams.from_flat(args[:FLAT_SIZE]), args[FLAT_SIZE]
    batch, length, d_model = hidden.shape
    d_inner, n_state = params.forward.A.shape
    out = hidden.new_empty(batch, length, d_model)
    if not save:
        return [out]
    proj_width = params.forward.x_proj_weight.shape[0]
    if hidden.device.type == "cuda":
        x_dbl = hidden.new_empty(batch, proj_width, length)
        states = hidden.new_empty(batch, d_inner, -(-length // CUDA_SCAN_CHUNK), 2 * n_state, dtype=torch.float32)
        return [out, x_dbl, states, x_dbl.clone(), states.clone(), hidden.new_empty(batch, d_inner, length)]
    dtype = bimamba_cpu.compute_dtype(hidden.dtype)
    x_dbl = hidden.new_empty(batch, length, proj_width, dtype=dtype)
    states = hidden.new_empty(batch, -(-length // SCAN_CHUNK), n_state, d_inner, dtype=dtype)
    return [out, x_dbl, states, x_dbl.clone(), states.clone()]


@torch.library.custom_op("videomamba::bimamba_inner_backward", mutates_args=(), device_types="cpu")
def _fused_backward(hidden: Tensor, in_proj_weight: Tensor, in_proj_bias: Optional[Tensor],
                    conv_weight: Tensor, conv_bias: Optional[Tensor], x_proj_weight: Tensor, dt_proj_weight: Tensor,
                    dt_proj_bias: Tensor, A: Tensor, D: Tensor,
                    conv_weight_b: Tensor, conv_bias_b: Optional[Tensor], x_proj_weight_b: Tensor,
                    dt_proj_weight_b: Tensor, dt_proj_bias_b: Tensor, A_b: Tensor, D_b: Tensor,
                    out_proj_weight: Tensor, out_proj_bias: Optional[Tensor], residuals: List[Tensor],
                    dout: Tensor) -> List[Tensor]:
    """[dhidden, then the gradient of every parameter that is not None, in argument order]."""
    params = InnerParams.from_flat((in_proj_weight, in_proj_bias, conv_weight, conv_bias, x_proj_weight,
                                    dt_proj_weight, dt_proj_bias, A, D, conv_weight_b, conv_bias_b,
                                    x_proj_weight_b, dt_proj_weight_b, dt_proj_bias_b, A_b, D_b, out_proj_weight,
                                    out_proj_bias))
    with _no_autocast("cpu"):
        d_hidden, grads = bimamba_cpu.backward(load_cpu_kernel().module, hidden, params, residuals, dout)
    return [d_hidden, *[g for g in grads.flat() if g is not None]]


@_fused_backward.register_kernel("cuda")
def _fused_backward_cuda(hidden, *args):
    params, residuals, dout = InnerParams.from_flat(args[:FLAT_SIZE]), args[FLAT_SIZE], args[FLAT_SIZE + 1]
    with _no_autocast("cuda"):
        d_hidden, grads = bimamba_cuda.backward(load_fused_kernels(), hidden, params, residuals, dout)
    return [d_hidden, *[g for g in grads.flat() if g is not None]]


@_fused_backward.register_fake
def _fused_backward_fake(hidden, *args):
    return [torch.empty_like(hidden), *[torch.empty_like(p) for p in args[:FLAT_SIZE] if p is not None]]


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off for `device_type` (the op computes in the dtypes it is given)."""
    return torch.autocast(device_type, enabled=False)


def _setup_context(ctx, inputs, output) -> None:
    hidden, params = inputs[0], inputs[1:1 + FLAT_SIZE]
    ctx.has_param = [p is not None for p in params]
    ctx.n_residuals = len(output) - 1
    ctx.save_for_backward(hidden, *params, *output[1:])


def _backward(ctx, grads: List[Optional[Tensor]]) -> Tuple[Optional[Tensor], ...]:
    if ctx.n_residuals == 0:
        raise RuntimeError("videomamba::bimamba_inner was run with save=False; call bimamba_inner_fn, which saves "
                           "what the backward needs whenever gradients are required")
    dout = grads[0]
    if dout is None:
        return (None,) * (2 + FLAT_SIZE)
    saved = ctx.saved_tensors
    hidden, params, residuals = saved[0], saved[1:1 + FLAT_SIZE], list(saved[1 + FLAT_SIZE:])
    result = iter(torch.ops.videomamba.bimamba_inner_backward(hidden, *params, residuals, dout.contiguous()))
    d_hidden = next(result)
    return (d_hidden, *[next(result) if has else None for has in ctx.has_param], None)


torch.library.register_autograd("videomamba::bimamba_inner", _backward, setup_context=_setup_context)


# ---- dispatch ---------------------------------------------------------------------------------------------------

@torch.compiler.assume_constant_result
def resolve_inner_backend(device_type: str, backend: Optional[str], conv_width: int, n_state: int,
                          dtype: torch.dtype = torch.float32) -> str:
    """The implementation for this call: "cpp" or "cuda" (the fused op) or, for the composed reference,
    "composed:<scan backend>"; logged once per device. `dtype` is the dtype the op will compute in (the input's,
    after autocast). Run once per distinct arguments under torch.compile (its result is a constant there).

    "auto": the fused op when its kernels load and take the call (C++ on CPU; on CUDA the stock kernels, which take
    fp32/fp16/bf16, conv widths 2-4 and N <= 256), else the composed path after one loud warning with the reason.
    "cpp" / "cuda" forced: as auto, but "cuda" raises when its kernels are missing and either raises on the other
    device. "torch" / "ref": the composed path.
    """
    requested = requested_backend(backend)
    chosen = _choose_inner_backend(device_type == "cuda", requested, conv_width, n_state, dtype)
    announce("bimamba_inner", chosen, device_type, requested)
    return chosen


def _cuda_kernels_refuse(conv_width: int, n_state: int, dtype: torch.dtype) -> Optional[str]:
    """Why the stock CUDA kernels cannot run this call (their TORCH_CHECKs), or None."""
    if not conv_kernel_supports(conv_width):
        return f"causal_conv1d takes conv widths 2 to 4, this mixer has {conv_width}"
    if n_state > MAX_STATE:
        return f"selective_scan takes d_state <= {MAX_STATE}, this mixer has {n_state}"
    if dtype not in CUDA_DTYPES:
        return f"the kernels take fp32, fp16 or bf16 inputs, not {dtype}"
    return None


def _choose_inner_backend(on_cuda: bool, requested: str, conv_width: int, n_state: int, dtype: torch.dtype) -> str:
    if requested in ("torch", "ref"):
        return f"composed:{requested}"
    if requested == "cpp" and on_cuda:
        raise ValueError("the 'cpp' backend runs on CPU tensors only")
    if requested == "cuda" and not on_cuda:
        raise ValueError("the 'cuda' backend needs CUDA tensors")
    if on_cuda:
        try:
            load_fused_kernels()
        except ImportError as exc:
            if requested == "cuda":
                raise
            warn_once("bimamba_inner:cuda", f"bimamba_inner: the fused CUDA path is unusable ({exc}); the mixer "
                                            f"runs the composed ops, which keep far more activations")
            return "composed:auto"
        reason = _cuda_kernels_refuse(conv_width, n_state, dtype)
        if reason is not None:
            warn_once(f"bimamba_inner:cuda:{reason}", f"bimamba_inner: {reason}; this mixer runs the composed "
                                                      f"PyTorch ops on CUDA, which are slower and keep more memory")
            return "composed:torch"
        return "cuda"
    if conv_width > MAX_CPU_CONV_WIDTH or n_state > MAX_STATE:
        return "composed:auto"
    try:
        load_cpu_kernel()
    except RuntimeError as exc:
        warn_once("bimamba_inner:cpp", f"{exc}; the mixer runs the composed PyTorch ops instead")
        return "composed:torch"
    return "cpp"


def autocast_inputs(hidden: Tensor, params: InnerParams) -> Tuple[Tensor, InnerParams]:
    """What the op receives under ``torch.autocast`` on hidden's device: the input and the projection weights and
    biases in the autocast dtype (as autocast would cast them for the GEMMs they feed; fp64 stays fp64); the conv
    weights, A, D and the Δ bias unchanged. Outside autocast, the arguments as they are."""
    device = hidden.device.type
    if not torch.is_autocast_enabled(device):
        return hidden, params
    dtype = torch.get_autocast_dtype(device)

    def cast(t: Tensor) -> Tensor:
        return t if t.dtype == torch.float64 or not t.is_floating_point() else t.to(dtype)

    return cast(hidden), map_gemm_operands(cast, params)


def bimamba_inner_fn(hidden: Tensor, params: InnerParams, backend: Optional[str] = None) -> Tensor:
    """Fused inner path (see the module docstring): hidden (batch, L, d_model) -> (batch, L, d_model), in hidden's
    dtype (under autocast: the autocast dtype, as a Linear's output).

    `backend`: one of `BACKENDS`, None for the process default; the choice is logged once per device.
    """
    hidden, params = autocast_inputs(hidden, params)
    name = resolve_inner_backend(hidden.device.type, backend, params.forward.conv_weight.shape[1],
                                 params.forward.A.shape[1], hidden.dtype)
    if name.startswith("composed:"):
        return bimamba_inner_ref(hidden, params, name.split(":", 1)[1])
    flat = params.flat()
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, *flat))
    with _no_autocast(hidden.device.type):
        return torch.ops.videomamba.bimamba_inner(hidden, *flat, save)[0]
