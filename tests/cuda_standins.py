"""CPU stand-ins for the stock CUDA kernels (mamba-ssm 2.3.2.post1, causal-conv1d 1.7.0), for testing the glue.

Each stand-in has the signature of the kernel (or public function) it replaces, checks every rule that the
kernel's C++ entry point enforces, raising KernelRuleError where the kernel would fail a TORCH_CHECK, and
computes its result with the PyTorch references in float64. Rules the kernels rely on without checking (a group
count that does not divide d_inner, dweight/dbias buffers that must start at zero) behave as the kernel would:
the first is not checked, the second accumulates into whatever it is given.
"""
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from models.ops import causal_conv1d_ref, selective_scan_ref

INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SCAN_CHUNK = 2048


class KernelRuleError(RuntimeError):
    """What a TORCH_CHECK of the real kernel would raise."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise KernelRuleError(message)


def _unit_stride(t: torch.Tensor) -> bool:
    return t.stride(-1) == 1 or t.shape[-1] == 1


# ---- selective_scan_cuda ----------------------------------------------------------------------------------------

def _check_scan(u, delta, A, B, C, D, z, delta_bias):
    _require(u.dtype in INPUT_DTYPES, f"scan: input dtype {u.dtype}")
    _require(A.dtype == torch.float32, "scan: A must be fp32 (real)")
    _require(delta.dtype == u.dtype and B.dtype == u.dtype and C.dtype == u.dtype, "scan: delta, B, C in u's dtype")
    _require(_unit_stride(u) and _unit_stride(delta), "scan: u, delta need unit stride along L")
    batch, dim, length = u.shape
    n_state = A.shape[1]
    _require(n_state <= 256, "selective_scan only supports state dimension <= 256")
    _require(delta.shape == u.shape and tuple(A.shape) == (dim, n_state), "scan: u, delta, A shapes")
    for name, t in (("B", B), ("C", C)):
        _require(t.dim() == 4 and tuple(t.shape) == (batch, t.shape[1], n_state, length), f"scan: {name} shape")
        _require(_unit_stride(t), f"scan: {name} needs unit stride along L")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            _require(t.dtype == torch.float32 and _unit_stride(t) and tuple(t.shape) == (dim,),
                     f"scan: {name} must be fp32 (dim,) with unit stride")
    if z is not None:
        _require(z.dtype == u.dtype and _unit_stride(z) and z.shape == u.shape, "scan: z in u's dtype and shape")


def _scan_ref64(u, delta, A, B, C, D, z, delta_bias, softplus):
    args = [None if t is None else t.double() for t in (u, delta, A, B, C, D, z, delta_bias)]
    return selective_scan_ref(*args, delta_softplus=softplus)


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """selective_scan_cuda.fwd: [out, x] (+ out_z with z); out is laid out like delta, x holds chunk states."""
    _check_scan(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = u.shape
    out = torch.empty_like(delta)
    out.copy_(_scan_ref64(u, delta, A, B, C, D, None, delta_bias, delta_softplus))
    x = torch.zeros(batch, dim, -(-length // SCAN_CHUNK), 2 * A.shape[1], dtype=torch.float32)
    if z is None:
        return [out, x]
    return [out, x, (out.double() * F.silu(z.double())).to(u.dtype)]


def scan_bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z):
    """selective_scan_cuda.bwd: [du, ddelta, dA, dB, dC, dD, ddelta_bias] (+ dz with z)."""
    _check_scan(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = u.shape
    _require(dout.dtype == u.dtype, "scan bwd: dout in u's dtype")
    _require(_unit_stride(dout) and dout.shape == u.shape, "scan bwd: dout shape and unit stride along L")
    chunks = -(-length // SCAN_CHUNK)
    _require(chunks == 1 or x is not None, "scan bwd: the forward's x is required for more than one chunk")
    if x is not None:
        _require(x.dtype == torch.float32 and x.is_contiguous() and
                 tuple(x.shape) == (batch, dim, chunks, 2 * A.shape[1]), "scan bwd: x from the forward")
    if z is not None:
        _require(out is not None and out.dtype == u.dtype and out.shape == u.shape, "scan bwd: out with z")
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in (u, delta, A, B, C, D, z,
                                                                                      delta_bias)]
    with torch.enable_grad():  # the glue calls this from an autograd backward, where grad mode is off
        result = selective_scan_ref(*leaves, delta_softplus=delta_softplus)
        grads = iter(torch.autograd.grad(result, [t for t in leaves if t is not None], dout.double()))
    full = [next(grads) if t is not None else None for t in leaves]
    du, ddelta, dA, dB, dC, dD, dz_, ddelta_bias = full
    results = [du.to(u.dtype), ddelta.to(delta.dtype), dA.float(), dB.float().to(B.dtype), dC.float().to(C.dtype),
               None if dD is None else dD.float(), None if ddelta_bias is None else ddelta_bias.float()]
    return results + ([dz_.to(z.dtype)] if z is not None else [])


class _StockScanFn(torch.autograd.Function):
    """What mamba_ssm's selective_scan_fn does around the kernel: unit strides, a group dim for B and C."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        u, delta, B, C = (t if t.stride(-1) == 1 else t.contiguous() for t in (u, delta, B, C))
        z = z if z is None or z.stride(-1) == 1 else z.contiguous()
        D = None if D is None else D.contiguous()
        ctx.squeeze = (B.dim() == 3, C.dim() == 3)
        B = B.unsqueeze(1) if B.dim() == 3 else B
        C = C.unsqueeze(1) if C.dim() == 3 else C
        results = scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        out, x = results[0], results[1]
        ctx.softplus = delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, x, out)
        final = results[2] if z is not None else out
        if not return_last_state:
            return final
        last = selective_scan_ref(u.double(), delta.double(), A.double(), B.double(), C.double(),
                                  delta_bias=None if delta_bias is None else delta_bias.double(),
                                  delta_softplus=delta_softplus, return_last_state=True)[1].float()
        return final, last

    @staticmethod
    def backward(ctx, dout, *_):
        u, delta, A, B, C, D, z, delta_bias, x, out = ctx.saved_tensors
        dout = dout if dout.stride(-1) == 1 else dout.contiguous()
        du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = scan_bwd(u, delta, A, B, C, D, z, delta_bias, dout, x,
                                                                   out, None, ctx.softplus, False)
        dB = dB.squeeze(1) if ctx.squeeze[0] else dB
        dC = dC.squeeze(1) if ctx.squeeze[1] else dC
        return (du, ddelta, dA, dB, dC, dD, rest[0] if rest else None, ddelta_bias, None, None)


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """mamba_ssm.ops.selective_scan_interface.selective_scan_fn over the stand-in kernel."""
    return _StockScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


# ---- causal_conv1d_cuda -------------------------------------------------------------------------------------------

def _check_conv(x, weight, bias):
    _require(x.dtype in INPUT_DTYPES and weight.dtype in INPUT_DTYPES, "conv: x and weight fp32/fp16/bf16")
    batch, dim, length = x.shape
    _require(weight.dim() == 2 and weight.shape[0] == dim, "conv: weight (dim, width)")
    _require(x.stride(2) == 1 or x.stride(1) == 1, "conv: x needs unit stride along L or channels")
    channels_last = x.stride(1) == 1 and x.stride(2) > 1
    if channels_last:
        _require(dim % 8 == 0, "causal_conv1d only supports channel dimension divisible by 8 for now")
        _require(x.stride(2) % 8 == 0 and x.stride(0) % 8 == 0,
                 "causal_conv1d with channel last layout requires strides (x.stride(0) and x.stride(2)) to be "
                 "multiples of 8")
    _require(2 <= weight.shape[1] <= 4, "causal_conv1d only supports width between 2 and 4")
    if bias is not None:
        _require(bias.dtype == weight.dtype and bias.stride(-1) == 1 and tuple(bias.shape) == (dim,),
                 "conv: bias in weight's dtype, (dim,), unit stride")
    return channels_last


def conv_fwd(x, weight, bias, seq_idx, initial_states, out, final_states_out, silu_activation):
    """causal_conv1d_cuda.causal_conv1d_fwd: writes silu?(conv(x)) into out (x's dtype and shape, any strides)."""
    _check_conv(x, weight, bias)
    _require(seq_idx is None and initial_states is None and final_states_out is None,
             "stand-in: seq_idx / initial / final states are not used by the glue")
    _require(out.dtype == x.dtype and out.shape == x.shape, "conv: out in x's dtype and shape")
    ref = causal_conv1d_ref(x.double(), weight.double(), None if bias is None else bias.double(),
                            "silu" if silu_activation else None)
    out.copy_(ref)


def conv_bwd(x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx, dweight, dbias, dinitial_states,
             silu_activation):
    """causal_conv1d_cuda.causal_conv1d_bwd: writes dx; adds into the fp32 dweight and dbias."""
    channels_last = _check_conv(x, weight, bias)
    _require((bias is None) == (dbias is None), "conv bwd: bias and dbias together")
    _require(dout.shape == x.shape, "conv bwd: dout shape")
    if not channels_last and dout.stride(2) != 1:
        dout = dout.contiguous()
    if channels_last and dout.stride(1) != 1:
        dout = dout.transpose(-1, -2).contiguous().transpose(-1, -2)
    if channels_last:
        _require(dout.stride(2) % 8 == 0 and dout.stride(0) % 8 == 0,
                 "causal_conv1d with channel last layout requires strides (dout.stride(0) and dout.stride(2)) to "
                 "be multiples of 8")
    _require(dx.dtype == x.dtype and dx.shape == x.shape, "conv bwd: dx in x's dtype and shape")
    _require(dx.stride(1) == 1 if channels_last else dx.stride(2) == 1, "conv bwd: dx must have x's layout")
    _require(dweight.dtype == torch.float32 and dweight.shape == weight.shape, "conv bwd: dweight fp32 (dim, width)")
    _require(dbias is None or (dbias.dtype == torch.float32 and dbias.shape == bias.shape), "conv bwd: dbias fp32")
    _require(seq_idx is None and initial_states is None and dfinal_states is None and dinitial_states is None,
             "stand-in: seq_idx / initial / final states are not used by the glue")
    leaves = [t.detach().double().requires_grad_() for t in (x, weight)]
    bias64 = None if bias is None else bias.detach().double().requires_grad_()
    with torch.enable_grad():  # called from an autograd backward, where grad mode is off
        out = causal_conv1d_ref(*leaves, bias64, "silu" if silu_activation else None)
        grads = torch.autograd.grad(out, leaves + ([bias64] if bias64 is not None else []), dout.double())
    dx.copy_(grads[0])
    dweight.add_(grads[1].float())
    if dbias is not None:
        dbias.add_(grads[2].float())


class _StockConvFn(torch.autograd.Function):
    """What causal_conv1d's causal_conv1d_fn does around the kernel (out and dx as empty_like(x))."""

    @staticmethod
    def forward(ctx, x, weight, bias, activation):
        if x.stride(2) != 1 and x.stride(1) != 1:
            x = x.contiguous()
        bias = None if bias is None else bias.contiguous()
        out = torch.empty_like(x)
        conv_fwd(x, weight, bias, None, None, out, None, activation in ("silu", "swish"))
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = activation in ("silu", "swish")
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias = ctx.saved_tensors
        if dout.stride(2) != 1 and dout.stride(1) != 1:
            dout = dout.contiguous()
        dx = torch.empty_like(x)
        dweight = torch.zeros_like(weight, dtype=torch.float32)
        dbias = None if bias is None else torch.zeros_like(bias, dtype=torch.float32)
        conv_bwd(x, weight, bias, dout, None, None, None, dx, dweight, dbias, None, ctx.silu)
        return dx, dweight.to(weight.dtype), None if dbias is None else dbias.to(bias.dtype), None


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    """causal_conv1d.causal_conv1d_fn over the stand-in kernel (no sequence index or states)."""
    _require(activation in (None, "silu", "swish"), "activation must be None, silu, or swish")
    _require(seq_idx is None and initial_states is None and not return_final_states and final_states_out is None,
             "stand-in: seq_idx / initial / final states are not used by the glue")
    return _StockConvFn.apply(x, weight, bias, activation)


def fused_kernels() -> SimpleNamespace:
    """Stand-in for cuda_glue.load_fused_kernels()."""
    return SimpleNamespace(scan_fwd=scan_fwd, scan_bwd=scan_bwd, conv_fwd=conv_fwd, conv_bwd=conv_bwd)
