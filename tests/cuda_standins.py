"""CPU emulators of the compiled CUDA entry points our glue calls, for testing the glue without a GPU.

Written from the sources of mamba-ssm 2.3.2.post1 (csrc/selective_scan/selective_scan.cpp,
selective_scan_fwd_kernel.cuh, selective_scan_bwd_kernel.cuh, selective_scan_common.h) and causal-conv1d 1.7.0
(csrc/causal_conv1d.cpp, causal_conv1d_fwd.cu, causal_conv1d_bwd.cu), with the signatures of

    selective_scan_cuda.fwd / .bwd                   -> scan_fwd / scan_bwd
    causal_conv1d_cuda.causal_conv1d_fwd / _bwd      -> conv_fwd / conv_bwd

(positional only: pybind11 binds them without argument names) and of the stock Python wrappers over them
(`selective_scan_fn`, `causal_conv1d_fn`). What they reproduce, each rule with its source line in a comment:
- every TORCH_CHECK of the C++ entry points, in the C++ order, as KernelRuleError with the C++ message (the
  is_cuda checks excepted: the stand-ins take CPU tensors);
- memory as the kernels address it (tests/kernel_memory.py): each load and store goes to the element offset the
  kernel computes from the data pointer and the strides it is given, in the kernel's element type, so a buffer
  with a layout the kernel does not assume gets wrong numbers; vector accesses at unaligned addresses raise
  "misaligned address" (rules read from the kernel code, not from a TORCH_CHECK, are marked "kernel rule");
- arithmetic: the kernels compute in fp32; here in fp64, rounded where the kernels store (outputs in the input
  dtype, chunk states and atomicAdd accumulators in fp32). Summation order is not reproduced;
- the scan's chunk states: per 2048-step chunk the forward stores, per state n, the running product of the decays
  from the first step (x[..., 2n]) and the state at the chunk's end (x[..., 2n + 1]); the backward restarts chunk
  c from the state in x[:, :, c - 1] it is given.
Not emulated (NotImplementedError): complex A; the conv's seq_idx and initial / final states.
The kernels are emulated in tests/standin_scan.py and tests/standin_conv.py; this module adds the stock wrappers.
"""
from types import SimpleNamespace

import torch

from kernel_memory import INPUT_DTYPES, KernelRuleError, empty_like
from standin_conv import conv_bwd, conv_fwd, not_emulated
from standin_scan import SCAN_CHUNK, scan_bwd, scan_fwd

__all__ = ["INPUT_DTYPES", "SCAN_CHUNK", "KernelRuleError", "scan_fwd", "scan_bwd", "conv_fwd", "conv_bwd",
           "selective_scan_fn", "causal_conv1d_fn", "fused_kernels"]


class _StockScanFn(torch.autograd.Function):
    """mamba_ssm's SelectiveScanFn (ops/selective_scan_interface.py ~23-86) over the stand-in kernel."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        u = u if u.stride(-1) == 1 else u.contiguous()
        delta = delta if delta.stride(-1) == 1 else delta.contiguous()
        D = None if D is None else D.contiguous()
        B = B if B.stride(-1) == 1 else B.contiguous()
        C = C if C.stride(-1) == 1 else C.contiguous()
        z = z if z is None or z.stride(-1) == 1 else z.contiguous()
        ctx.squeeze = (B.dim() == 3, C.dim() == 3)
        B = B.unsqueeze(1) if B.dim() == 3 else B
        C = C.unsqueeze(1) if C.dim() == 3 else C
        out, x, *rest = scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.delta_softplus = delta_softplus
        ctx.has_z = z is not None
        last_state = x[:, :, -1, 1::2]
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, x, out if ctx.has_z else None)
        final = rest[0] if ctx.has_z else out
        return (final, last_state) if return_last_state else final

    @staticmethod
    def backward(ctx, dout, *_):
        u, delta, A, B, C, D, z, delta_bias, x, out = ctx.saved_tensors
        dout = dout if dout.stride(-1) == 1 else dout.contiguous()
        du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = scan_bwd(
            u, delta, A, B, C, D, z, delta_bias, dout, x, out, None, ctx.delta_softplus, False)
        dB = dB.squeeze(1) if ctx.squeeze[0] else dB
        dC = dC.squeeze(1) if ctx.squeeze[1] else dC
        return (du, ddelta, dA, dB, dC, dD, rest[0] if ctx.has_z else None, ddelta_bias, None, None)


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """mamba_ssm.ops.selective_scan_interface.selective_scan_fn over the stand-in kernel (the last state comes
    from the kernel's x, as in the stock wrapper)."""
    return _StockScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


class _StockConvFn(torch.autograd.Function):
    """causal_conv1d's CausalConv1dFn (causal_conv1d_interface.py ~9-95, cpp_functions.py ~94-160) over the
    stand-in kernel: out and dx are empty_like(x), dweight and dbias zero-filled fp32, returned in weight's dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, activation):
        if x.stride(2) != 1 and x.stride(1) != 1:
            x = x.contiguous()
        bias = bias.contiguous() if bias is not None else None
        ctx.activation = activation in ("silu", "swish")
        out = empty_like(x)
        conv_fwd(x, weight, bias, None, None, out, None, ctx.activation)
        ctx.save_for_backward(x, weight, bias)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias = ctx.saved_tensors
        if dout.stride(2) != 1 and dout.stride(1) != 1:
            dout = dout.contiguous()
        dx = empty_like(x)
        dweight = torch.zeros_like(weight, dtype=torch.float32)
        dbias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None else None
        conv_bwd(x, weight, bias, dout, None, None, None, dx, dweight, dbias, None, ctx.activation)
        return dx, dweight.type_as(weight), None if dbias is None else dbias.type_as(bias), None


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    """causal_conv1d.causal_conv1d_fn over the stand-in kernel (no sequence index or states)."""
    if activation not in (None, "silu", "swish"):
        raise NotImplementedError("activation must be None, silu, or swish")
    not_emulated(seq_idx, initial_states, final_states_out, True if return_final_states else None)
    return _StockConvFn.apply(x, weight, bias, activation)


def fused_kernels() -> SimpleNamespace:
    """Stand-in for cuda_glue.load_fused_kernels()."""
    return SimpleNamespace(scan_fwd=scan_fwd, scan_bwd=scan_bwd, conv_fwd=conv_fwd, conv_bwd=conv_bwd)
