"""CPU emulation of causal_conv1d_cuda.causal_conv1d_fwd / _bwd (causal-conv1d 1.7.0, csrc/), for the stand-ins in
tests/cuda_standins.py: the checks of causal_conv1d.cpp, the addressing and vector accesses of the channels-last
and L-contiguous kernels, and their arithmetic in fp64.
"""
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from kernel_memory import INPUT_DTYPES, INPUT_TYPE_CHECK, Pointer, check, check_shape, offsets

_WEIGHT_TYPE_CHECK = ("weight_type == at::ScalarType::Float || weight_type == at::ScalarType::Half || "
                      "weight_type == at::ScalarType::BFloat16")


def _conv_dtypes(x, weight) -> None:
    check(x.dtype in INPUT_DTYPES, INPUT_TYPE_CHECK)  # causal_conv1d.cpp fwd ~160, bwd ~275
    check(weight.dtype in INPUT_DTYPES, _WEIGHT_TYPE_CHECK)  # ~161, ~276


def _conv_sizes(x, weight):
    # fwd ~166-170 (a x of fewer than 3 dims is read out of range in C++; here CHECK_SHAPE fails: a guess)
    return (*(list(x.shape) + [0, 0, 0])[:3], weight.size(-1))


def _channels_last_checks(t: Tensor, name: str, dim: int, with_dim: bool = True) -> None:
    if with_dim:  # fwd ~179, bwd ~301
        check(dim % 8 == 0, "", "causal_conv1d only supports channel dimension divisible by 8 for now")
    check(t.stride(2) % 8 == 0 and t.stride(0) % 8 == 0, "",  # fwd ~180, bwd ~302-303
          f"causal_conv1d with channel last layout requires strides ({name}.stride(0) and {name}.stride(2)) to be "
          f"multiples of 8")


def _bias_checks(bias, weight, dim) -> None:
    if bias is not None:  # fwd ~184-190, bwd ~306-312
        check(bias.dtype == weight.dtype, "bias.scalar_type() == weight_type")
        check(bias.stride(-1) == 1, "bias.stride(-1) == 1")
        check_shape(bias, "bias", "dim", dim)


def _seq_idx_checks(seq_idx, channel_last, batch, seqlen, message) -> None:
    if seq_idx is not None:  # fwd ~192-199, bwd ~314-321
        check(channel_last, "", message)
        check(seq_idx.dtype == torch.int32, "seq_idx.scalar_type() == torch::kInt32")
        check(seq_idx.is_contiguous(), "seq_idx.is_contiguous()")
        check_shape(seq_idx, "seq_idx", "batch_size, seqlen", batch, seqlen)


def _states_checks(t, name, channel_last, x, batch, dim, width, stride_check=True) -> None:
    if t is not None:  # fwd ~212-236, bwd ~348-368
        check(channel_last, "", f"{name} is only supported for channel last layout")
        check(t.dtype == x.dtype, f"{name}.scalar_type() == input_type")
        check_shape(t, name, "batch_size, dim, width - 1", batch, dim, width - 1)
        if stride_check:
            check(t.stride(1) == 1, f"{name}.stride(1) == 1")


def not_emulated(*optional) -> None:
    if any(t is not None for t in optional):
        raise NotImplementedError("stand-in: seq_idx and initial / final states are not emulated")


def _conv_io(t: Tensor, dtype: torch.dtype, name: str, channel_last: bool, values: Optional[Tensor] = None):
    """Load (or store `values` into) a (batch, dim, L) conv operand the way the chosen kernel addresses it.
    Kernel rules: the channels-last kernels address b·stride(0) + l·stride(-1) + c, assuming a unit channel stride,
    with 16-byte vector accesses of kNElts channels always (fwd ~229-234, ~249, ~348; bwd ~355-362, ~380-381, ~589);
    the other kernels address b·stride(0) + c·stride(1) + l, assuming a unit L stride, with vectors when
    L % kNElts == 0 (kIsVecLoad: fwd ~68-72, ~142; bwd ~79-85, ~264). kNElts = 4 for fp32, 8 for 16-bit types."""
    batch, dim, seqlen = t.shape
    pointer = Pointer(t, dtype, name)
    elements = 4 if dtype.itemsize == 4 else 8
    if channel_last:
        strides = (t.stride(0), 1, t.stride(-1))
        pointer.aligned(offsets((batch, seqlen), (strides[0], strides[2])), 16)
    else:
        strides = (t.stride(0), t.stride(1), 1)
        if seqlen % elements == 0:
            pointer.aligned(offsets((batch, dim), strides[:2]), 16)
    if values is None:
        return pointer.load((batch, dim, seqlen), strides)
    pointer.store((batch, dim, seqlen), strides, values)


def _conv_weights(weight, bias, dim):
    """weight at c·stride(0) + w·stride(1) and bias[c] in the weight type (fwd ~70-73, ~83, ~291-296)."""
    w = Pointer(weight, weight.dtype, "weight").load(tuple(weight.shape), weight.stride())
    if bias is None:
        return w, torch.zeros(dim, dtype=torch.float64)
    return w, Pointer(bias, weight.dtype, "bias").load((dim,), (1,))


def _conv_pre(x64: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """bias + Σ_k w[:, k]·x_{t - (width - 1) + k} (fwd ~113-118, ~327-333)."""
    width, seqlen = w.shape[1], x64.shape[-1]
    padded = F.pad(x64, (width - 1, 0))
    return b[:, None] + sum(w[:, k, None] * padded[..., k:k + seqlen] for k in range(width))


def conv_fwd(x, weight, bias, seq_idx, initial_states, out, final_states_out, silu_activation, /) -> None:
    """causal_conv1d_cuda.causal_conv1d_fwd: writes silu?(conv(x)) into `out`, which is not checked at all: it is
    written in x's dtype through out's data pointer, out.stride(0) and out.stride(-1) (channels-last x) or
    out.stride(0) and out.stride(1) (other x), as the kernel does (causal_conv1d.cpp ~98-110)."""
    _conv_dtypes(x, weight)
    batch, dim, seqlen, width = _conv_sizes(x, weight)
    check_shape(x, "x", "batch_size, dim, seqlen", batch, dim, seqlen)  # ~172-173
    check_shape(weight, "weight", "dim, width", dim, width)
    check(x.stride(2) == 1 or x.stride(1) == 1, "x.stride(2) == 1 || x.stride(1) == 1")  # ~175
    channel_last = x.stride(1) == 1 and x.stride(2) > 1  # ~176
    if channel_last:
        _channels_last_checks(x, "x", dim)
    check(2 <= width <= 4, "", "causal_conv1d only supports width between 2 and 4")  # ~182
    _bias_checks(bias, weight, dim)
    _seq_idx_checks(seq_idx, channel_last, batch, seqlen, "seq_idx is only supported for channel last layout")
    _states_checks(initial_states, "initial_states", channel_last, x, batch, dim, width)
    _states_checks(final_states_out, "final_states", channel_last, x, batch, dim, width)
    not_emulated(seq_idx, initial_states, final_states_out)
    w, b = _conv_weights(weight, bias, dim)
    pre = _conv_pre(_conv_io(x, x.dtype, "x", channel_last), w, b)
    _conv_io(out, x.dtype, "out", channel_last, F.silu(pre) if silu_activation else pre)  # ~120-133, ~334-348


def _deterministic() -> bool:
    """causal_conv1d.cpp ~21-28: CAUSAL_CONV1D_DETERMINISTIC=1/0, else torch's deterministic-algorithms flag."""
    env = os.environ.get("CAUSAL_CONV1D_DETERMINISTIC", "")
    if env[:1] in ("0", "1"):
        return env[:1] == "1"
    return torch.are_deterministic_algorithms_enabled()


def conv_bwd(x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx, dweight, dbias, dinitial_states,
             silu_activation, /) -> None:
    """causal_conv1d_cuda.causal_conv1d_bwd: writes dx (x's dtype and layout, checked) and adds into dweight and
    dbias, which are not checked: they are fp32 accumulators that must start at zero, addressed as fp32 at
    c·dweight.stride(0) + w·dweight.stride(1) and dbias[c] (atomicAdd: bwd kernel ~243, ~255, ~504, ~520), or,
    in deterministic mode, added with dweight.add_ / dbias.add_ (causal_conv1d.cpp ~450-462)."""
    _conv_dtypes(x, weight)
    check(bias is not None and dbias is not None or bias is None and dbias is None,  # ~281
          "bias_.has_value() == dbias_.has_value()")
    batch, dim, seqlen, width = _conv_sizes(x, weight)
    check(2 <= width <= 4, "", "causal_conv1d only supports width between 2 and 4")  # ~289
    check_shape(x, "x", "batch_size, dim, seqlen", batch, dim, seqlen)  # ~291-293
    check_shape(weight, "weight", "dim, width", dim, width)
    check_shape(dout, "dout", "batch_size, dim, seqlen", batch, dim, seqlen)
    check(x.stride(2) == 1 or x.stride(1) == 1, "x.stride(2) == 1 || x.stride(1) == 1")  # ~295
    channel_last = x.stride(1) == 1 and x.stride(2) > 1
    if not channel_last and dout.stride(2) != 1:  # ~297-298: the C++ lays dout out like x itself
        dout = dout.contiguous()
    if channel_last and dout.stride(1) != 1:
        dout = dout.transpose(-1, -2).contiguous().transpose(-1, -2)
    if channel_last:  # ~300-304
        _channels_last_checks(x, "x", dim)
        _channels_last_checks(dout, "dout", dim, with_dim=False)
    _bias_checks(bias, weight, dim)
    _seq_idx_checks(seq_idx, channel_last, batch, seqlen, "seq_idx only supported for channel last layout")
    check(dx.dtype == x.dtype, "dx.scalar_type() == input_type")  # ~323-327
    check_shape(dx, "dx", "batch_size, dim, seqlen", batch, dim, seqlen)
    if not channel_last:
        check(dx.stride(2) == 1, "dx.stride(2) == 1")
    if channel_last:
        check(dx.stride(1) == 1, "dx.stride(1) == 1")
    _states_checks(initial_states, "initial_states", channel_last, x, batch, dim, width)  # ~348-358
    _states_checks(dfinal_states, "dfinal_states", channel_last, x, batch, dim, width, stride_check=False)
    if dinitial_states is not None:
        check(dinitial_states.stride(1) == 1, "dinitial_states.stride(1) == 1")  # ~379
    not_emulated(seq_idx, initial_states, dfinal_states, dinitial_states)

    w, b = _conv_weights(weight, bias, dim)
    x64 = _conv_io(x, x.dtype, "x", channel_last)
    grad = _conv_io(dout, x.dtype, "dout", channel_last)  # dout is read in x's dtype (its own is not checked)
    if silu_activation:  # the output is recomputed in fp32 (bwd kernel ~160-171, ~461-480)
        pre = _conv_pre(x64, w, b)
        sig = torch.sigmoid(pre)
        grad = grad * sig * (1 + pre * (1 - sig))
    later = F.pad(grad, (0, width - 1))
    earlier = F.pad(x64, (width - 1, 0))
    dx_vals = sum(w[:, k, None] * later[..., width - 1 - k:width - 1 - k + seqlen] for k in range(width))  # ~204-211
    _conv_io(dx, x.dtype, "dx", channel_last, dx_vals)
    dw = torch.stack([(earlier[..., k:k + seqlen] * grad).sum((0, 2)) for k in range(width)], dim=1)  # ~223-229
    db = grad.sum((0, 2))  # ~202
    if _deterministic():  # fp32 workspaces summed, then added with torch's own rules
        dweight.add_(dw.float())
        if dbias is not None:
            dbias.add_(db.float())
        return
    Pointer(dweight, torch.float32, "dweight").atomic_add((dim, width), dweight.stride()[:2], dw)
    if dbias is not None:
        Pointer(dbias, torch.float32, "dbias").atomic_add((dim,), (1,), db)
