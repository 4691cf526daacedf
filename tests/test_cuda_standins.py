"""The CPU stand-ins of the stock CUDA kernels (tests/cuda_standins.py): their numbers against the references
and autograd in fp64, the chunk states they store and restart from, the C++ checks with the C++ messages, and
the kernels' memory addressing (a buffer with the wrong layout gets wrong numbers or a misaligned-address fault).
"""
import inspect

import pytest
import torch
import torch.nn.functional as F

import cuda_standins as stock
from models.ops import causal_conv1d_ref, selective_scan_ref
from models.ops.scan_inputs import random_scan_inputs

SCAN_KEYS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias", "z")  # the order of scan_bwd's results
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # relative to the largest value
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])


def rel_err(got, want):
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


def scan_case(length, dim=16, n_state=4, groups=1, seed=0):
    """Inputs for the kernel ((batch, G, N, L) B and C), with every input-dtype tensor rounded through bf16, so that
    the values are exact in fp32, fp16 and bf16 alike and one fp64 reference serves all three dtypes; and dout."""
    inputs = random_scan_inputs(2, dim, length, n_state, groups=groups, seed=seed)
    for key in ("u", "delta", "B", "C", "z"):
        inputs[key] = inputs[key].bfloat16().float()
    dout = torch.randn(2, dim, length, generator=torch.Generator().manual_seed(seed + 1)).bfloat16().float()
    return inputs, dout


def reference(inputs, dout):
    """Output and gradients (in scan_bwd's order) of selective_scan_ref in fp64 with softplus."""
    leaves = {k: v.double().requires_grad_() for k, v in inputs.items()}
    out = selective_scan_ref(**leaves, delta_softplus=True)
    grads = torch.autograd.grad(out, list(leaves.values()), dout.double())
    by_name = dict(zip(leaves, grads))
    return out.detach(), [by_name[name] for name in GRAD_NAMES]


_REFERENCES = {}


def cached_reference(length):
    """Each long reference costs a second or two (a Python loop over L with autograd): computed once per L."""
    if length not in _REFERENCES:
        inputs, dout = scan_case(length)
        _REFERENCES[length] = reference(inputs, dout)
    return _REFERENCES[length]


def run_scan(inputs, dout, dtype):
    """scan_fwd then scan_bwd on the forward's own x and out: (out_z, [du, ..., dz])."""
    args = [None if inputs[k] is None else inputs[k] if k in ("A", "D", "delta_bias") else inputs[k].to(dtype)
            for k in SCAN_KEYS]
    out, x, out_z = stock.scan_fwd(*args, True)
    grads = stock.scan_bwd(*args, dout.to(dtype), x, out, None, True, False)
    return out_z, grads


@pytest.mark.parametrize("length", [23, 2049, 3137])  # one chunk; two with one step in the second; two
@DTYPES
def test_scan_matches_the_reference_and_autograd(length, dtype):
    inputs, dout = scan_case(length)
    want, want_grads = cached_reference(length)
    out_z, grads = run_scan(inputs, dout, dtype)
    assert out_z.dtype == dtype
    assert rel_err(out_z, want) < TOLERANCE[dtype]
    for name, got, expected in zip(GRAD_NAMES, grads, want_grads):
        # du, ddelta, dB, dC, dz in the input dtype; dA, dD, ddelta_bias accumulate in fp32 (selective_scan.cpp)
        assert got.dtype == (torch.float32 if name in ("A", "D", "delta_bias") else dtype), name
        assert rel_err(got, expected) < TOLERANCE[dtype], name


@pytest.mark.parametrize("form", ["fixed B", "fixed C", "fixed B and C", "two groups"])
def test_scan_with_time_invariant_or_grouped_B_and_C(form):
    """A time-invariant B or C is (dim, N) fp32 in the kernel (is_variable_B false); the reference sees it as
    dim groups of a (batch, dim, N, L) B constant along L."""
    inputs, dout = scan_case(23, dim=8, groups=2 if form == "two groups" else 1, seed=3)
    fixed = {"B": "B" in form, "C": "C" in form}
    for key, is_fixed in fixed.items():
        if is_fixed:
            inputs[key] = torch.randn(8, 4, generator=torch.Generator().manual_seed(7))
    leaves = {k: v.double().requires_grad_() for k, v in inputs.items()}
    as_ref = dict(leaves)
    if any(fixed.values()):  # B and C per channel: dim groups
        for key in fixed:
            v = leaves[key]
            as_ref[key] = v[None, :, :, None].expand(2, 8, 4, 23) if fixed[key] else v.expand(2, 8, 4, 23)
    want = selective_scan_ref(**as_ref, delta_softplus=True)
    want_grads = dict(zip(leaves, torch.autograd.grad(want, list(leaves.values()), dout.double())))
    out_z, grads = run_scan(inputs, dout, torch.float32)
    assert rel_err(out_z, want) < 1e-5
    for name, got in zip(GRAD_NAMES, grads):
        assert got.shape == inputs[name].shape, name
        assert rel_err(got, want_grads[name]) < 1e-5, name


def chunk_states(inputs, stops, fixed_B=False):
    """The kernel's chunk states computed independently, in closed form: at each stop T, the product of all
    decays so far, exp(S_T) with S the running sum of Δ·A, and the state Σ_t exp(S_T - S_t)·Δ_t·u_t·B_t (without
    B when B is fixed), interleaved as x[..., 2n], x[..., 2n + 1]."""
    dt = F.softplus(inputs["delta"].double() + inputs["delta_bias"].double()[:, None])  # (batch, dim, L)
    S = torch.cumsum(dt[:, :, None, :] * inputs["A"].double()[None, :, :, None], dim=-1)  # (batch, dim, N, L)
    b = (dt * inputs["u"].double())[:, :, None, :]
    if not fixed_B:
        b = b * inputs["B"].double()[:, 0, None]  # one group
    states = []
    for stop in stops:
        h = (torch.exp(S[..., stop - 1:stop] - S[..., :stop]) * b[..., :stop]).sum(-1)
        states.append(torch.stack([torch.exp(S[..., stop - 1]), h], dim=-1).flatten(-2))
    return torch.stack(states, dim=2)


def test_forward_stores_the_kernels_chunk_states():
    inputs, _ = scan_case(3137, dim=8)
    _, x = stock.scan_fwd(*(inputs[k] for k in SCAN_KEYS), True)[:2]
    assert x.shape == (2, 8, 2, 8) and x.dtype == torch.float32
    torch.testing.assert_close(x.double(), chunk_states(inputs, (2048, 3137)), rtol=1e-5, atol=1e-6)
    # the stock wrapper's last state is x[:, :, -1, 1::2]
    last = stock.selective_scan_fn(*(inputs[k] for k in SCAN_KEYS), delta_softplus=True, return_last_state=True)[1]
    torch.testing.assert_close(last, x[:, :, -1, 1::2])


def test_forward_stores_states_without_B_when_B_is_fixed():
    inputs, _ = scan_case(2049, dim=8, seed=2)
    inputs["B"] = torch.randn(8, 4, generator=torch.Generator().manual_seed(5))
    _, x = stock.scan_fwd(*(inputs[k] for k in SCAN_KEYS), True)[:2]
    torch.testing.assert_close(x.double(), chunk_states(inputs, (2048, 2049), fixed_B=True), rtol=1e-5, atol=1e-6)


def test_backward_restarts_each_chunk_from_the_states_it_is_given():
    """Given the forward's x, the backward matches the reference (test_scan_matches_the_reference_and_autograd);
    given other states for chunk 1, its gradients are wrong."""
    inputs, dout = scan_case(3137, dim=8)
    args = [inputs[k] for k in SCAN_KEYS]
    out, x, _ = stock.scan_fwd(*args, True)
    other_x = stock.scan_fwd(*(scan_case(3137, dim=8, seed=9)[0][k] for k in SCAN_KEYS), True)[1]

    def grads(states):
        return stock.scan_bwd(*args, dout, states, out, None, True, False)

    right = grads(x)
    decays_changed = x.clone()
    decays_changed[..., 0::2] = 0.5  # only the state half of x enters the backward
    assert all(torch.equal(g, w) for g, w in zip(grads(decays_changed), right))
    for wrong in (torch.zeros_like(x), other_x, x.flip(2)):
        assert max(rel_err(g, w) for g, w in zip(grads(wrong), right)) > 1e-2
    with pytest.raises(stock.KernelRuleError, match=r"Expected x_\.has_value\(\) to be true"):
        grads(None)
    short, short_dout = scan_case(23)
    short_args = [short[k] for k in SCAN_KEYS]
    short_out = stock.scan_fwd(*short_args, True)[0]
    stock.scan_bwd(*short_args, short_dout, None, short_out, None, True, False)  # one chunk: x may be absent


def test_scan_bwd_uses_the_out_and_dz_it_is_given():
    inputs, dout = scan_case(23)
    args = [inputs[k] for k in SCAN_KEYS]
    out, x, out_z = stock.scan_fwd(*args, True)
    dz = torch.empty(2, 16, 23)
    results = stock.scan_bwd(*args, dout, x, out, dz, True, True)
    assert len(results) == 9 and results[7] is dz  # ... ddelta_bias, dz, out_z
    torch.testing.assert_close(results[8], out_z)
    assert not results[7].isnan().any()
    zeros = stock.scan_bwd(*args, dout, x, torch.zeros_like(out), None, True, False)[7]
    assert torch.equal(zeros, torch.zeros_like(zeros))  # dz = dout·out·silu'(z): the out it is given
    no_z = stock.scan_bwd(*args[:6], None, args[7], dout, x, None, None, True, True)
    assert len(no_z) == 8 and no_z[7] is None and no_z[5] is not None  # out_z undefined without z


def test_scan_outputs_take_the_layouts_the_cpp_gives_them():
    """out = empty_like(delta), du = empty_like(u), ddelta = empty_like(delta) (selective_scan.cpp ~311, ~458):
    a dim-major delta ("HBL", as the comment there says) gives a dim-major out, written at its strides."""
    inputs, dout = scan_case(23)
    want, want_grads = cached_reference(23)
    inputs["delta"] = inputs["delta"].transpose(0, 1).contiguous().transpose(0, 1)  # strides (L, batch·L, 1)
    out_z, grads = run_scan(inputs, dout, torch.float32)
    out = stock.scan_fwd(*(inputs[k] for k in SCAN_KEYS), True)[0]
    assert out.stride() == inputs["delta"].stride() and grads[1].stride() == inputs["delta"].stride()
    assert rel_err(out_z, want) < 1e-5 and all(rel_err(g, w) < 1e-5 for g, w in zip(grads, want_grads))


def test_entry_points_have_the_compiled_signatures():
    """pybind11 binds them without argument names: positional only, every optional argument passed."""
    for fn, count in ((stock.scan_fwd, 9), (stock.scan_bwd, 14), (stock.conv_fwd, 8), (stock.conv_bwd, 12)):
        params = inspect.signature(fn).parameters.values()
        assert len(params) == count and all(p.kind == p.POSITIONAL_ONLY and p.default is p.empty for p in params)


def test_scan_checks_raise_the_cpp_messages():
    inputs, dout = scan_case(6, dim=8)
    good = {k: inputs[k] for k in SCAN_KEYS}
    stock.scan_fwd(*good.values(), True)
    bad = {
        "selective_scan only supports state dimension <= 256":
            dict(A=torch.zeros(8, 257), B=torch.zeros(2, 1, 257, 6), C=torch.zeros(2, 1, 257, 6)),
        r"Expected D\.stride\(-1\) == 1 \|\| D\.size\(-1\) == 1 to be true": dict(D=torch.randn(16)[::2]),
        r"Expected delta_bias\.scalar_type\(\) == at::ScalarType::Float": dict(delta_bias=good["delta_bias"].double()),
        r"Expected B\.scalar_type\(\) == \(!is_variable_B \? weight_type : input_type\)": dict(B=good["B"].double()),
        r"Expected B\.scalar_type\(\)": dict(B=torch.randn(8, 4).bfloat16()),  # a fixed B is fp32 like A
        r"Expected u\.stride\(-1\) == 1": dict(u=good["u"].transpose(1, 2).contiguous().transpose(1, 2)),
        r"Expected input_type == at::ScalarType::Float \|\|": {k: good[k].double() for k in ("u", "delta")},
        r"Expected weight_type == at::ScalarType::Float \|\|": dict(A=good["A"].double()),
        # the entry point takes (batch, G, N, L); the Python wrapper adds the group dim to (batch, N, L)
        r"B must have shape \(batch_size, n_groups, dstate, !is_complex \? seqlen : seqlen \* 2\)":
            dict(B=good["B"][:, 0]),
        r"C must have shape \(batch_size, n_groups, dstate, !is_complex \? seqlen: seqlen \* 2\)":
            dict(C=torch.randn(2, 2, 4, 6)),
        r"z must have shape \(batch_size, dim, seqlen\)": dict(z=good["z"][:, :, :5]),
    }
    for message, change in bad.items():
        with pytest.raises(stock.KernelRuleError, match=message):
            stock.scan_fwd(*(good | change).values(), True)
    out, x, _ = stock.scan_fwd(*good.values(), True)
    for message, (d, states) in {
        r"Expected dout\.scalar_type\(\) == input_type": (dout.double(), x),
        r"Expected dout\.stride\(-1\) == 1": (dout.transpose(1, 2).contiguous().transpose(1, 2), x),
        r"Expected x\.is_contiguous\(\)": (dout, x.transpose(0, 1).contiguous().transpose(0, 1)),
        r"x must have shape \(batch_size, dim, n_chunks, 2 \* dstate\)": (dout, x[..., :4].contiguous()),
    }.items():
        with pytest.raises(stock.KernelRuleError, match=message):
            stock.scan_bwd(*good.values(), d, states, out, None, True, False)
    with pytest.raises(stock.KernelRuleError, match=r"Expected out_\.has_value\(\)"):
        stock.scan_bwd(*good.values(), dout, x, None, None, True, False)
    three_dims = good | dict(B=good["B"][:, 0], C=good["C"][:, 0])  # the wrapper accepts (batch, N, L)
    assert stock.selective_scan_fn(*three_dims.values()).shape == (2, 8, 6)


def test_scan_group_count_is_not_checked_and_reads_past_the_last_group():
    inputs, _ = scan_case(6, dim=8, groups=3)  # channels 6 and 7 read group 3 (dim_id / (8 / 3))
    with pytest.raises(stock.KernelRuleError, match="illegal memory access"):  # batch 1 reads past the storage
        stock.scan_fwd(*(inputs[k] for k in SCAN_KEYS), True)


@pytest.mark.parametrize("length, faults", [(128, True), (127, False)])
def test_scan_vector_loads_need_aligned_rows(length, faults):
    """Kernel rule: with L a multiple of the block's chunk (128 here) u is read with 16-byte vectors, so a u whose
    storage starts one element in faults; otherwise it is read element by element."""
    inputs, _ = scan_case(length, dim=8)
    shifted = torch.empty(inputs["u"].numel() + 1)[1:].view_as(inputs["u"]).copy_(inputs["u"])
    args = [shifted if k == "u" else inputs[k] for k in SCAN_KEYS]
    if faults:
        with pytest.raises(stock.KernelRuleError, match="misaligned address"):
            stock.scan_fwd(*args, True)
    else:
        torch.testing.assert_close(stock.scan_fwd(*args, True)[0], stock.scan_fwd(*inputs.values(), True)[0])


# ---- causal conv1d ------------------------------------------------------------------------------------------------

def conv_case(length, width, layout, dtype, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, length, dim, generator=gen).transpose(1, 2)  # channels-last view of (batch, L, dim)
    x = (x if layout == "channels-last" else x.contiguous()).to(dtype)
    weight = torch.randn(dim, width, generator=gen).to(dtype)
    bias = torch.randn(dim, generator=gen).to(dtype)
    dout = torch.randn(2, dim, length, generator=gen).to(dtype)
    return x, weight, bias, dout


def conv_reference(x, weight, bias, dout):
    leaves = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    out = causal_conv1d_ref(*leaves, "silu")
    return out.detach(), torch.autograd.grad(out, leaves, dout.double())


@pytest.mark.parametrize("layout", ["channels-last", "L-contiguous"])
@pytest.mark.parametrize("width, length", [(2, 23), (3, 2049), (4, 3137)])
@DTYPES
def test_conv_matches_the_reference_and_autograd(layout, width, length, dtype):
    x, weight, bias, dout = conv_case(length, width, layout, dtype)
    want, want_grads = conv_reference(x, weight, bias, dout)
    out = torch.empty_like(x)
    stock.conv_fwd(x, weight, bias, None, None, out, None, True)
    dx = torch.empty_like(x)
    dweight, dbias = torch.zeros(weight.shape), torch.zeros(bias.shape)  # fp32 accumulators
    stock.conv_bwd(x, weight, bias, dout, None, None, None, dx, dweight, dbias, None, True)
    for got, expected in zip((out, dx, dweight, dbias), (want, *want_grads)):
        assert rel_err(got, expected) < TOLERANCE[dtype]


def test_conv_accumulates_into_dweight_and_dbias_as_fp32(monkeypatch):
    x, weight, bias, dout = conv_case(23, 4, "channels-last", torch.float32)
    _, (_, dw, db) = conv_reference(x, weight, bias, dout)

    def backward(dweight, dbias):
        stock.conv_bwd(x, weight, bias, dout, None, None, None, torch.empty_like(x), dweight, dbias, None, True)
        return dweight, dbias

    got_w, got_b = backward(torch.ones(16, 4), torch.ones(16))  # not zeroed: added to
    assert rel_err(got_w - 1, dw) < 1e-5 and rel_err(got_b - 1, db) < 1e-5
    fp64_w = backward(torch.zeros(16, 4, dtype=torch.float64), torch.zeros(16))[0]  # gets fp32 bits
    assert rel_err(fp64_w, dw) > 0.5
    with pytest.raises(stock.KernelRuleError, match="illegal memory access"):  # fp32 adds past a bf16 buffer
        backward(torch.zeros(16, 4, dtype=torch.bfloat16), torch.zeros(16))
    monkeypatch.setenv("CAUSAL_CONV1D_DETERMINISTIC", "1")  # fp32 workspaces, then dweight.add_
    assert rel_err(backward(torch.zeros(16, 4, dtype=torch.float64), torch.zeros(16))[0], dw) < 1e-5


def test_channels_last_conv_writes_out_with_its_own_layout():
    """The channels-last kernel writes out at b·out.stride(0) + l·out.stride(-1) + c, 16 bytes at a time."""
    x, weight, bias, _ = conv_case(23, 4, "channels-last", torch.float32)
    want = conv_reference(x, weight, bias, torch.ones(x.shape))[0]

    def forward(out):
        stock.conv_fwd(x, weight, bias, None, None, out, None, True)
        return out

    assert rel_err(forward(torch.empty(2, 23, 32)[..., :16].transpose(1, 2)), want) < 1e-6  # unit channel stride
    with pytest.raises(stock.KernelRuleError, match="misaligned address"):  # L-contiguous: l·1 + c is unaligned
        forward(torch.empty(2, 16, 23))
    with pytest.raises(stock.KernelRuleError, match="misaligned address"):  # storage offset 1: unaligned
        forward(torch.empty(2 * 23 * 16 + 1)[1:].view(2, 23, 16).transpose(1, 2))
    strided = forward(torch.zeros(2, 23, 32)[..., ::2].transpose(1, 2))  # channel stride 2: aligned, wrong places
    assert rel_err(strided, want) > 0.5
    wrong_dtype = forward(torch.zeros(2, 23, 16, dtype=torch.float64).transpose(1, 2))  # written as fp32
    assert rel_err(wrong_dtype, want) > 0.5


def test_l_contiguous_conv_writes_out_with_unit_stride_along_L():
    x, weight, bias, _ = conv_case(23, 3, "L-contiguous", torch.float32)
    want = conv_reference(x, weight, bias, torch.ones(x.shape))[0]
    out = torch.zeros(2, 23, 16).transpose(1, 2)  # channels-last out: rows overlap, element stores (L % 4 != 0)
    stock.conv_fwd(x, weight, bias, None, None, out, None, True)
    assert rel_err(out, want) > 0.5
    x24 = conv_case(24, 3, "L-contiguous", torch.float32)[0]  # L % 4 == 0: 16-byte vectors, unaligned rows
    with pytest.raises(stock.KernelRuleError, match="misaligned address"):
        stock.conv_fwd(x24, weight, bias, None, None, torch.empty(2, 24, 16).transpose(1, 2), None, True)


def test_conv_backward_writes_dx_with_the_layout_it_assumes():
    x, weight, bias, dout = conv_case(23, 4, "channels-last", torch.float32)
    _, (dx_want, _, _) = conv_reference(x, weight, bias, dout)

    def backward(dx):
        stock.conv_bwd(x, weight, bias, dout, None, None, None, dx, torch.zeros(16, 4), torch.zeros(16), None, True)
        return dx

    assert rel_err(backward(torch.empty(2, 23, 24)[..., :16].transpose(1, 2)), dx_want) < 1e-6
    with pytest.raises(stock.KernelRuleError, match=r"Expected dx\.stride\(1\) == 1"):  # checked by the C++
        backward(torch.empty(2, 16, 23))
    with pytest.raises(stock.KernelRuleError, match="misaligned address"):  # dx.stride(2) = 18: not checked
        backward(torch.empty(2, 23, 18)[..., :16].transpose(1, 2))
    x24, _, _, dout24 = conv_case(24, 4, "L-contiguous", torch.float32)
    with pytest.raises(stock.KernelRuleError, match="misaligned address"):  # L-contiguous dx one element in
        stock.conv_bwd(x24, weight, bias, dout24, None, None, None, torch.empty(2 * 16 * 24 + 1)[1:].view(2, 16, 24),
                       torch.zeros(16, 4), torch.zeros(16), None, True)


def test_conv_checks_raise_the_cpp_messages():
    x12 = torch.randn(2, 6, 12).transpose(1, 2)  # channels-last, 12 channels
    x16 = torch.randn(2, 6, 16).transpose(1, 2)
    w = torch.randn(16, 4)
    fwd = {
        "causal_conv1d only supports channel dimension divisible by 8 for now": (x12, torch.randn(12, 4), None),
        r"requires strides \(x\.stride\(0\) and x\.stride\(2\)\) to be multiples of 8":
            (torch.randn(2, 6, 20)[..., :16].transpose(1, 2), w, None),
        r"Expected bias\.scalar_type\(\) == weight_type": (x16, w, torch.randn(16).double()),
        "causal_conv1d only supports width between 2 and 4": (x16, torch.randn(16, 5), None),
        r"Expected x\.stride\(2\) == 1 \|\| x\.stride\(1\) == 1": (torch.randn(2, 16, 6, 2)[..., 0], w, None),
        r"weight must have shape \(dim, width\)": (x16, torch.randn(8, 4), None),
        r"Expected input_type == at::ScalarType::Float": (x16.double(), w, None),
    }
    for message, (x, weight, bias) in fwd.items():
        with pytest.raises(stock.KernelRuleError, match=message):
            stock.conv_fwd(x, weight, bias, None, None, torch.empty_like(x), None, True)
    with pytest.raises(stock.KernelRuleError, match="initial_states is only supported for channel last layout"):
        stock.conv_fwd(x16.contiguous(), w, None, None, torch.zeros(2, 16, 3), torch.empty(2, 16, 6), None, True)
    bwd = {
        r"Expected bias_\.has_value\(\) == dbias_\.has_value\(\)": (x16, torch.randn(16), None, torch.empty_like(x16)),
        r"Expected dx\.stride\(2\) == 1": (x16.contiguous(), None, None, torch.empty(2, 6, 16).transpose(1, 2)),
        r"Expected dx\.scalar_type\(\) == input_type": (x16, None, None, torch.empty_like(x16).double()),
        r"dx must have shape \(batch_size, dim, seqlen\)": (x16, None, None, torch.empty(2, 16, 5)),
    }
    for message, (x, bias, dbias, dx) in bwd.items():
        with pytest.raises(stock.KernelRuleError, match=message):
            stock.conv_bwd(x, w, bias, torch.randn(2, 16, 6), None, None, None, dx, torch.zeros(16, 4), dbias, None,
                           True)
    dout_bad = torch.randn(2, 6, 20)[..., :16].transpose(1, 2)  # channels-last, L stride 20
    with pytest.raises(stock.KernelRuleError, match=r"\(dout\.stride\(0\) and dout\.stride\(2\)\)"):
        stock.conv_bwd(x16, w, None, dout_bad, None, None, None, torch.empty_like(x16), torch.zeros(16, 4), None,
                       None, True)


def test_stock_conv_wrapper_allocates_outputs_like_x():
    x, weight, bias, dout = conv_case(23, 4, "channels-last", torch.bfloat16)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    out = stock.causal_conv1d_fn(*leaves, activation="silu")
    assert out.stride() == x.stride()  # empty_like(x): channels-last
    grads = torch.autograd.grad(out, leaves, dout)
    want, want_grads = conv_reference(x, weight, bias, dout)
    assert rel_err(out, want) < TOLERANCE[torch.bfloat16]
    for got, expected, leaf in zip(grads, want_grads, leaves):
        assert got.dtype == leaf.dtype and rel_err(got, expected) < TOLERANCE[torch.bfloat16]
