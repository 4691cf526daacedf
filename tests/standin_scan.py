"""CPU emulation of selective_scan_cuda.fwd / .bwd (mamba-ssm 2.3.2.post1, csrc/selective_scan/), for the
stand-ins in tests/cuda_standins.py: the checks of selective_scan.cpp, the kernels' addressing and vector
accesses, their arithmetic in fp64, and the chunk states they store and restart from.
"""
import math
from types import SimpleNamespace
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from kernel_memory import (INPUT_DTYPES, INPUT_TYPE_CHECK, KernelRuleError, Pointer, check, check_shape, empty_like,
                           offsets, unit_last)

# selective_scan.cpp ~307 / ~447: n_chunks = (seqlen + 2048 - 1) / 2048. The kernels' chunk is kNThreads·kNItems:
# 128·16 = 2048 for L > 1024, and one chunk of 128..1024 >= L otherwise (fwd kernel ~354-363, bwd ~539-548).
SCAN_CHUNK = 2048


def _scan_checks(u, delta, A, B, C, D, z, delta_bias, dout=None) -> SimpleNamespace:
    """The checks of selective_scan_fwd (selective_scan.cpp ~233-305) and, with dout, selective_scan_bwd
    (~350-424), in their order."""
    itype, wtype = u.dtype, A.dtype
    check(itype in INPUT_DTYPES, INPUT_TYPE_CHECK)  # fwd ~235, bwd ~352
    check(wtype in (torch.float32, torch.complex64),
          "weight_type == at::ScalarType::Float || weight_type == at::ScalarType::ComplexFloat")  # ~236, ~353
    var_B, var_C = B.dim() >= 3, C.dim() >= 3  # ~238: B (dim, N) is time-invariant, else (batch, G, N, L)
    is_complex = wtype == torch.complex64
    check(delta.dtype == itype, "delta.scalar_type() == input_type")  # ~242, ~359
    check(B.dtype == (wtype if not var_B else itype), "B.scalar_type() == (!is_variable_B ? weight_type : input_type)")
    check(C.dtype == (wtype if not var_C else itype), "C.scalar_type() == (!is_variable_C ? weight_type : input_type)")
    if dout is not None:
        check(dout.dtype == itype, "dout.scalar_type() == input_type")  # bwd ~362
    check(unit_last(u), "u.stride(-1) == 1 || u.size(-1) == 1")  # fwd ~252, bwd ~371
    check(unit_last(delta), "delta.stride(-1) == 1 || delta.size(-1) == 1")  # ~253, ~372
    if dout is not None:
        check(unit_last(dout), "dout.stride(-1) == 1 || dout.size(-1) == 1")  # bwd ~373
    # ~255-260: sizes from u (a u of fewer than 3 dims is read out of range in C++; here CHECK_SHAPE fails: a guess)
    batch, dim, seqlen = (list(u.shape) + [0, 0, 0])[:3]
    dstate = A.size(1)
    n_groups = B.size(1) if var_B else 1
    check(dstate <= 256, "", "selective_scan only supports state dimension <= 256")  # fwd ~262, bwd ~382
    check_shape(u, "u", "batch_size, dim, seqlen", batch, dim, seqlen)  # ~264
    check_shape(delta, "delta", "batch_size, dim, seqlen", batch, dim, seqlen)
    check_shape(A, "A", "dim, dstate", dim, dstate)
    length = seqlen * 2 if is_complex else seqlen
    if not var_B:  # ~267-272
        check_shape(B, "B", "dim, dstate", dim, dstate)
    else:
        check_shape(B, "B", "batch_size, n_groups, dstate, !is_complex ? seqlen : seqlen * 2",
                    batch, n_groups, dstate, length)
        check(unit_last(B), "B.stride(-1) == 1 || B.size(-1) == 1")
    if not var_C:  # ~273-278 (the C++ text of this CHECK_SHAPE has no space before the colon)
        check_shape(C, "C", "dim, dstate", dim, dstate)
    else:
        check_shape(C, "C", "batch_size, n_groups, dstate, !is_complex ? seqlen: seqlen * 2",
                    batch, n_groups, dstate, length)
        check(unit_last(C), "C.stride(-1) == 1 || C.size(-1) == 1")
    if dout is not None:
        check_shape(dout, "dout", "batch_size, dim, seqlen", batch, dim, seqlen)  # bwd ~399
    for name, t in (("D", D), ("delta_bias", delta_bias)):  # fwd ~280-294, bwd ~401-415
        if t is not None:
            check(t.dtype == torch.float32, f"{name}.scalar_type() == at::ScalarType::Float")
            check(unit_last(t), f"{name}.stride(-1) == 1 || {name}.size(-1) == 1")
            check_shape(t, name, "dim", dim)
    if z is not None:  # fwd ~298-303, bwd ~419-424
        check(z.dtype == itype, "z.scalar_type() == input_type")
        check(unit_last(z), "z.stride(-1) == 1 || z.size(-1) == 1")
        check_shape(z, "z", "batch_size, dim, seqlen", batch, dim, seqlen)
    return SimpleNamespace(batch=batch, dim=dim, seqlen=seqlen, dstate=dstate, n_groups=n_groups, var_B=var_B,
                           var_C=var_C, is_complex=is_complex, n_chunks=-(-seqlen // SCAN_CHUNK))


def _scan_vector_bytes(seqlen: int, dtype: torch.dtype) -> Optional[int]:
    """Kernel rule: the scan kernels load and store u, delta, out, z, dout, du, ddelta, dz and a variable B / C as
    vec_t vectors when L is a multiple of the block's chunk kNThreads·kNItems (kIsEvenLen, fwd kernel ~315, bwd
    ~499; load_input / load_weight / store_output, selective_scan_common.h ~183-254), else element by element.
    A vector is kNElts elements: 4 for fp32, min(8, kNItems) for 16-bit types (fwd kernel ~38, bwd ~41)."""
    for limit, threads, items in ((128, 32, 4), (256, 32, 8), (512, 32, 16), (1024, 64, 16), (math.inf, 128, 16)):
        if seqlen <= limit:
            break
    if seqlen % (threads * items):
        return None
    return dtype.itemsize * (4 if dtype.itemsize == 4 else min(8, items))


def _rows(t: Tensor, dtype: torch.dtype, name: str, s: SimpleNamespace, values: Optional[Tensor] = None):
    """Load (or store `values` into) a (batch, dim, L) operand the way the scan kernels address it: from its data
    pointer at b·stride(0) + d·stride(1) + l, i.e. unit stride along L (fwd kernel ~105-108, ~274, ~286-289; bwd
    ~120-125, ~178-183, ~461-464)."""
    pointer = Pointer(t, dtype, name)
    vector = _scan_vector_bytes(s.seqlen, dtype)
    if vector:
        pointer.aligned(offsets((s.batch, s.dim), (t.stride(0), t.stride(1))), vector)
    grid = ((s.batch, s.dim, s.seqlen), (t.stride(0), t.stride(1), 1))
    if values is None:
        return pointer.load(*grid)
    pointer.store(*grid, values)


def _group_of_channel(s: SimpleNamespace) -> Tensor:
    """group_id = dim_id / (dim / n_groups) (fwd kernel ~104, bwd ~119). A group count that does not divide dim
    is not checked: channels then read groups past the last one, wherever those addresses fall."""
    ratio = s.dim // s.n_groups
    if ratio == 0:  # an integer division by zero on the GPU: undefined. A guess: the address is out of range.
        raise KernelRuleError("CUDA error: an illegal memory access was encountered (n_groups > dim)")
    return torch.arange(s.dim) // ratio


def _variable(t: Tensor, name: str, s: SimpleNamespace) -> Tensor:
    """A variable B or C, (batch, dim, N, L) per channel: loaded at b·stride(0) + group·stride(1) + n·stride(2) + l
    (fwd kernel ~111-113, ~187; bwd ~128-130, ~238)."""
    groups = _group_of_channel(s)  # 0, 1, ... up to the last group read
    pointer = Pointer(t, t.dtype, name)
    rows = (s.batch, int(groups[-1]) + 1, s.dstate)
    vector = _scan_vector_bytes(s.seqlen, t.dtype)
    if vector:
        pointer.aligned(offsets(rows, t.stride()[:3]), vector)
    return pointer.load((*rows, s.seqlen), (*t.stride()[:3], 1))[:, groups]


def _fixed(t: Tensor, name: str, s: SimpleNamespace) -> Tensor:
    """A (dim, N) fp32 operand (A, or a time-invariant B or C), at d·stride(0) + n·stride(1) (fwd kernel ~109-110,
    ~172, ~192, ~203)."""
    return Pointer(t, t.dtype, name).load((s.dim, s.dstate), t.stride())


def _per_channel(t: Optional[Tensor], name: str, s: SimpleNamespace) -> Tensor:
    """D or delta_bias (fp32, unit stride), read as ptr[dim_id]; 0 when absent (fwd kernel ~116-129, bwd ~137)."""
    if t is None:
        return torch.zeros(s.dim, dtype=torch.float64)
    return Pointer(t, torch.float32, name).load((s.dim,), (1,))


def _recurrence(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """h_t = a_t·h_{t-1} + b_t along dim 0 (time first), from h_{-1} = h0. Two levels, so that the Python loop runs
    about 2·sqrt(T) steps: a scan inside blocks of ~sqrt(T) steps, all blocks at once, then the carries from block
    to block. Only products of decays are formed (no division), so it is as stable as the plain loop."""
    steps = a.shape[0]
    size = math.isqrt(max(steps - 1, 0)) + 1
    blocks = -(-steps // size)
    pad = blocks * size - steps
    a = torch.cat([a, a.new_ones((pad, *a.shape[1:]))]).view(blocks, size, *a.shape[1:])
    b = torch.cat([b, b.new_zeros((pad, *b.shape[1:]))]).view(blocks, size, *b.shape[1:])
    local, decay = torch.empty_like(b), torch.empty_like(a)
    local[:, 0], decay[:, 0] = b[:, 0], a[:, 0]
    for j in range(1, size):
        local[:, j] = torch.addcmul(b[:, j], a[:, j], local[:, j - 1])
        decay[:, j] = decay[:, j - 1] * a[:, j]
    carries = torch.empty_like(b[:, 0])
    carry = h0
    for k in range(blocks):
        carries[k] = carry
        carry = torch.addcmul(local[k, -1], decay[k, -1], carry)
    return torch.addcmul(local, decay, carries[:, None]).flatten(0, 1)[:steps]


def _scan_terms(s, u, delta, A, B, C, D, delta_bias, softplus) -> SimpleNamespace:
    """Everything the scan kernels derive from their inputs, in fp64, time first: (L, batch, dim[, N])."""
    t = SimpleNamespace(u=_rows(u, u.dtype, "u", s).permute(2, 0, 1), A=_fixed(A, "A", s))
    t.raw = _rows(delta, delta.dtype, "delta", s).permute(2, 0, 1) + _per_channel(delta_bias, "delta_bias", s)
    # fwd kernel ~158-161, bwd ~171-174: softplus as log1p(exp(.)) at or below 20, identity above
    t.dt = torch.where(t.raw <= 20, torch.log1p(torch.exp(t.raw)), t.raw) if softplus else t.raw
    t.D = _per_channel(D, "D", s)
    t.B = _variable(B, "B", s).permute(3, 0, 1, 2) if s.var_B else _fixed(B, "B", s)
    t.C = _variable(C, "C", s).permute(3, 0, 1, 2) if s.var_C else _fixed(C, "C", s)
    t.log_a = t.dt[..., None] * t.A  # (L, batch, dim, N); the kernels take exp2f(dt·A·log2(e)) (fwd ~173-176, ~221)
    t.a = torch.exp(t.log_a)
    # The scanned input is dt·u·B for a variable B, dt·u alone for a fixed B, which then joins C (fwd ~184-212,
    # ~222, ~262-264): the state the kernels keep, and store in x, has no B in it when B is fixed.
    t.b = (t.dt * t.u)[..., None] * (t.B if s.var_B else torch.ones(s.dstate, dtype=torch.float64))
    t.readout = t.C * (1.0 if s.var_B else t.B)  # C_t·B for a fixed B; broadcasts against (L, batch, dim, N)
    return t


def _chunk_bounds(s: SimpleNamespace):
    return [(c * SCAN_CHUNK, min((c + 1) * SCAN_CHUNK, s.seqlen)) for c in range(s.n_chunks)]


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, /) -> List[Tensor]:
    """selective_scan_cuda.fwd: [out, x] (+ out_z with z). out = empty_like(delta) (selective_scan.cpp ~311), x =
    (batch, dim, n_chunks, 2·dstate) fp32 (~313), out_z = empty_like(z) (~304)."""
    s = _scan_checks(u, delta, A, B, C, D, z, delta_bias)
    if s.is_complex:
        raise NotImplementedError("stand-in: complex A is not emulated")
    out_z = empty_like(z) if z is not None else None
    out = empty_like(delta)
    x = torch.empty(s.batch, s.dim, s.n_chunks, 2 * s.dstate, dtype=torch.float32).fill_(float("nan"))
    t = _scan_terms(s, u, delta, A, B, C, D, delta_bias, bool(delta_softplus))
    h = torch.empty_like(t.b)
    state = torch.zeros_like(t.b[0])
    log_decay = torch.zeros_like(state)
    for c, (start, stop) in enumerate(_chunk_bounds(s)):
        h[start:stop] = _recurrence(t.a[start:stop], t.b[start:stop], state)
        # fwd kernel ~240-258: the running prefix (product of all decays so far, state) is carried from chunk to
        # chunk in fp32 shared memory and written to x as a float2 per state: x[b, d, c, 2n], x[b, d, c, 2n + 1].
        state = h[stop - 1].float().double()
        log_decay = log_decay + t.log_a[start:stop].sum(0)
        x[:, :, c, 0::2] = torch.exp(log_decay).float()
        x[:, :, c, 1::2] = state.float()
    y = (h * t.readout).sum(-1) + t.D * t.u  # fwd ~163, ~266
    _rows(out, u.dtype, "out", s, y.permute(1, 2, 0))  # fwd ~274-283: written in the input type
    if z is None:
        return [out, x]
    zz = _rows(z, u.dtype, "z", s).permute(2, 0, 1)
    _rows(out_z, u.dtype, "out_z", s, (y * F.silu(zz)).permute(1, 2, 0))  # fwd ~285-302
    return [out, x, out_z]


def _scan_bwd_checks(s, u, z, out_, dz_, x_) -> None:
    """selective_scan.cpp bwd ~417-456: out (and dz when given) with z; x whenever there is more than one chunk."""
    if z is not None:
        check(out_ is not None, "out_.has_value()")  # ~426
        check(out_.dtype == u.dtype, "out.scalar_type() == input_type")
        check(unit_last(out_), "out.stride(-1) == 1 || out.size(-1) == 1")
        check_shape(out_, "out", "batch_size, dim, seqlen", s.batch, s.dim, s.seqlen)
        if dz_ is not None:  # ~433-438
            check(dz_.dtype == u.dtype, "dz.scalar_type() == input_type")
            check(unit_last(dz_), "dz.stride(-1) == 1 || dz.size(-1) == 1")
            check_shape(dz_, "dz", "batch_size, dim, seqlen", s.batch, s.dim, s.seqlen)
    if s.n_chunks > 1:
        check(x_ is not None, "x_.has_value()")  # ~449
    if x_ is not None:  # ~450-456
        check(x_.dtype == torch.float32, "x.scalar_type() == weight_type")
        check(x_.is_contiguous(), "x.is_contiguous()")
        check_shape(x_, "x", "batch_size, dim, n_chunks, 2 * dstate", s.batch, s.dim, s.n_chunks, 2 * s.dstate)


def _chunk_start_state(x_: Tensor, c: int, s: SimpleNamespace) -> Tensor:
    """Kernel rule (bwd kernel ~140-142, ~270): chunk c > 0 restarts from the float2 x[(b·dim + d)·n_chunks·dstate
    + (c - 1)·dstate + n] of the x it is given; only its state half (x[..., 2n + 1]) enters the results. Float2
    loads need 8-byte alignment. (batch, dim, N)."""
    pointer = Pointer(x_, torch.float32, "x")
    pairs = ((s.batch, s.dim, s.dstate), (s.dim * s.n_chunks * 2 * s.dstate, s.n_chunks * 2 * s.dstate, 2))
    pointer.aligned(offsets(*pairs) + (c - 1) * 2 * s.dstate, 8)
    return pointer.load(*pairs, offset=(c - 1) * 2 * s.dstate + 1)


def _accumulate(buffer: Tensor, name: str, values: Tensor, strides=None) -> None:
    """gpuAtomicAdd into an fp32 buffer the C++ zero-filled, at the buffer's strides (bwd kernel ~423-424,
    ~475-493)."""
    Pointer(buffer, torch.float32, name).atomic_add(tuple(values.shape), strides or buffer.stride(), values)


def _group_sum(per_channel: Tensor, buffer: Tensor, name: str, s: SimpleNamespace) -> None:
    """A variable dB / dC: per channel (batch, dim, N, L), atomically added at b·stride(0) + group·stride(1) +
    n·stride(2) + l of the fp32 buffer (bwd kernel ~132-135, ~304-321)."""
    groups = _group_of_channel(s)
    summed = per_channel.new_zeros(s.batch, int(groups[-1]) + 1, s.dstate, s.seqlen).index_add_(1, groups, per_channel)
    _accumulate(buffer, name, summed, (*buffer.stride()[:3], 1))


def scan_bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z, /) -> List:
    """selective_scan_cuda.bwd: [du, ddelta, dA, dB, dC, dD, ddelta_bias] (+ dz with z) (+ out_z when
    recompute_out_z; None without z). dD and ddelta_bias are None without D and delta_bias (undefined tensors)."""
    s = _scan_checks(u, delta, A, B, C, D, z, delta_bias, dout)
    _scan_bwd_checks(s, u, z, out, dz, x)
    if s.is_complex:
        raise NotImplementedError("stand-in: complex A is not emulated")
    has_z = z is not None
    if has_z:
        dz = dz if dz is not None else empty_like(z)  # ~440
        out_z = empty_like(out) if recompute_out_z else None  # ~443
    du, ddelta = empty_like(u), empty_like(delta)  # ~458-466
    dA = torch.zeros_like(A)
    dB = torch.zeros_like(B) if not s.var_B else torch.zeros_like(B, dtype=torch.float32)
    dC = torch.zeros_like(C) if not s.var_C else torch.zeros_like(C, dtype=torch.float32)
    dD = torch.zeros_like(D) if D is not None else None
    ddelta_bias = torch.zeros_like(delta_bias) if delta_bias is not None else None

    t = _scan_terms(s, u, delta, A, B, C, D, delta_bias, bool(delta_softplus))
    g_out = _rows(dout, u.dtype, "dout", s).permute(2, 0, 1)
    if has_z:  # bwd kernel ~177-207: dz from the saved out, then dout gated
        zz = _rows(z, u.dtype, "z", s).permute(2, 0, 1)
        saved = _rows(out, u.dtype, "out", s).permute(2, 0, 1)
        sig = torch.sigmoid(zz)
        _rows(dz, u.dtype, "dz", s, (g_out * saved * sig * (1 + zz * (1 - sig))).permute(1, 2, 0))
        if out_z is not None:
            _rows(out_z, u.dtype, "out_z", s, (saved * zz * sig).permute(1, 2, 0))
        g_out = g_out * zz * sig
    # The states, chunk by chunk, each restarted from the x it is given (bwd kernel ~270).
    h = torch.empty_like(t.b)
    for c, (start, stop) in enumerate(_chunk_bounds(s)):
        state = torch.zeros_like(t.b[0]) if c == 0 else _chunk_start_state(x, c, s)
        h[start:stop] = _recurrence(t.a[start:stop], t.b[start:stop], state)
    # dL/dh_t = dout_t·C_t + a_{t+1}·dL/dh_{t+1}: the reverse scan, carried from chunk to chunk in shared memory
    # (bwd kernel ~260-280), independent of x.
    a_next = torch.cat([t.a[1:], torch.ones_like(t.a[:1])])
    lam = _recurrence(a_next.flip(0), (g_out[..., None] * t.readout).flip(0), torch.zeros_like(t.b[0])).flip(0)
    lam_b = lam * t.B if s.var_B else lam  # ~286
    before = h - t.b  # a_t·h_{t-1} (~288)
    du_t = t.D * g_out + lam_b.sum(-1) * t.dt  # ~217, ~287
    ddelta_t = lam_b.sum(-1) * t.u + (lam * t.A * before).sum(-1)  # ~289
    if delta_softplus:  # ~445-457
        ddelta_t = torch.where(t.raw <= 20, ddelta_t * torch.sigmoid(t.raw), ddelta_t)
    _rows(du, u.dtype, "du", s, du_t.permute(1, 2, 0))  # ~461-468: written in the input type
    _rows(ddelta, u.dtype, "ddelta", s, ddelta_t.permute(1, 2, 0))

    _accumulate(dA, "dA", (lam * t.dt[..., None] * before).sum((0, 1)))  # ~290, ~483
    h_out = g_out[..., None] * h  # dout_t·h_t, h without B when B is fixed (~293-300)
    if s.var_B:
        _group_sum((lam * (t.dt * t.u)[..., None]).permute(1, 2, 3, 0), dB, "dB", s)  # ~298
    else:  # ~482-489: the per-channel sum, times a fixed C
        dB_dn = (h_out * (t.C if s.var_C else 1.0)).sum((0, 1)) * (1.0 if s.var_C else t.C)
        _accumulate(dB, "dB", dB_dn)
    if s.var_C:
        _group_sum((h_out * (1.0 if s.var_B else t.B)).permute(1, 2, 3, 0), dC, "dC", s)  # ~300
    else:  # ~490-493
        _accumulate(dC, "dC", h_out.sum((0, 1)) * (1.0 if s.var_B else t.B))
    if dD is not None:  # ~473-476: sum over the batch and L of dout·u
        _accumulate(dD, "dD", (g_out * t.u).sum((0, 1)), (1,))
    if ddelta_bias is not None:  # ~477-481
        _accumulate(ddelta_bias, "ddelta_bias", ddelta_t.sum((0, 1)), (1,))
    result = [du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), dD, ddelta_bias]  # ~488
    if has_z:
        result.append(dz)
    if recompute_out_z:
        result.append(out_z if has_z else None)
    return result
