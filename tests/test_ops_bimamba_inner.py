"""Fused bidirectional mixer inner path on CPU: every gradient against the composed reference in fp64, the
instruction-set dispatch, threads, the custom-op registrations and the backend choice.

The C++ extension is compiled once per machine (cached); the composed reference runs the sequential "ref" scan.
"""
import logging
import warnings
from pathlib import Path

import pytest
import torch

import models.ops as ops
from models.ops import Direction, InnerParams, bimamba_cpu, bimamba_inner, bimamba_inner_fn, bimamba_inner_ref
from models.ops.selective_scan_cpu import SCAN_CHUNK, load_cpu_kernel


@pytest.fixture(scope="module")
def ext():
    return load_cpu_kernel().module


@pytest.fixture(autouse=True)
def restore_isa_and_backend(ext, monkeypatch):
    monkeypatch.delenv("VIDEOMAMBA_SCAN_BACKEND", raising=False)
    yield
    ext.set_isa("auto")
    ops.set_backend("auto")


def random_inner(batch, length, d_inner, n_state=16, rank=3, width=4, d_model=6, conv_bias=True, proj_bias=False,
                 dtype=torch.float64, seed=0):
    """Leaves (hidden, InnerParams) with direction-specific values."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=0.3):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype).requires_grad_()

    def direction():
        A = (-torch.exp(torch.randn(d_inner, n_state, generator=gen) * 0.5)).to(dtype).requires_grad_()
        return Direction(randn(d_inner, width), randn(d_inner) if conv_bias else None,
                         randn(rank + 2 * n_state, d_inner), randn(d_inner, rank, scale=0.5), randn(d_inner), A,
                         randn(d_inner))

    params = InnerParams(randn(2 * d_inner, d_model), randn(2 * d_inner) if proj_bias else None, direction(),
                         direction(), randn(d_model, d_inner), randn(d_model) if proj_bias else None)
    return randn(batch, length, d_model, scale=1.0), params


def leaves(args):
    hidden, params = args
    return [t for t in (hidden, *params.flat()) if t is not None]


def output_and_grads(fn, args, seed=1):
    """fn(*args) and the gradients of a fixed random weighting of it (the same weights whatever the output's
    dtype) with respect to every leaf of args."""
    out = fn(*args)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return out.detach(), torch.autograd.grad((out * weight.to(out.dtype)).sum(), leaves(args))


def rel_err(got, want):
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


def fused(hidden, params):
    return bimamba_inner_fn(hidden, params, backend="cpp")


def composed(backend):
    return lambda hidden, params: bimamba_inner_ref(hidden, params, backend=backend)


CASES = [
    # batch, L, d_inner, N, rank, width, conv bias, projection biases
    (2, 2 * SCAN_CHUNK + 22, 40, 16, 3, 4, True, True),  # three scan chunks; 40 channels = vectors + a tail
    (1, 1, 8, 4, 2, 4, True, False),  # one step
    (2, SCAN_CHUNK, 20, 5, 2, 3, False, False),  # exactly one chunk; N = 5 (general state loop); width 3
    (3, 9, 16, 16, 1, 2, True, False),
]


@pytest.mark.parametrize("case", CASES)
def test_fused_equals_composed_in_fp64_for_every_gradient(ext, case):
    batch, length, d_inner, n_state, rank, width, conv_bias, proj_bias = case
    args = random_inner(batch, length, d_inner, n_state, rank, width, conv_bias=conv_bias, proj_bias=proj_bias,
                        seed=length)
    out, grads = output_and_grads(fused, args)
    want, want_grads = output_and_grads(composed("ref"), args)
    assert out.dtype == torch.float64 and out.shape == (batch, length, 6)
    assert rel_err(out, want) < 1e-12
    for got, expected, leaf in zip(grads, want_grads, leaves(args)):
        assert got.shape == leaf.shape and got.dtype == leaf.dtype
        assert rel_err(got, expected) < 1e-11


def test_fp32_matches_composed_torch_path(ext):
    args = random_inner(2, 150, 64, dtype=torch.float32, proj_bias=True, seed=3)
    out, grads = output_and_grads(fused, args)
    want, want_grads = output_and_grads(composed("torch"), args)
    assert out.dtype == torch.float32
    assert rel_err(out, want) < 1e-5
    for got, expected in zip(grads, want_grads):
        assert rel_err(got, expected) < 1e-4


def cpu_flags():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def expected_isa(flags):
    if {"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return "avx512"
    return "avx2" if {"avx2", "fma"} <= flags else "generic"


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs /proc/cpuinfo")
def test_dispatch_picks_the_best_instruction_set_of_this_cpu(ext):
    want = expected_isa(cpu_flags())
    assert ext.best_isa() == want
    ext.set_isa("auto")
    assert ext.isa() == want
    with pytest.raises(ValueError, match="unknown instruction set"):
        ext.set_isa("sse9")
    if want != "avx512":
        with pytest.raises(ValueError, match="cannot run"):
            ext.set_isa("avx512")


def test_every_supported_instruction_set_computes_the_same(ext):
    levels = ["generic", "avx2", "avx512"]
    supported = levels[:levels.index(ext.best_isa()) + 1]
    args = random_inner(2, SCAN_CHUNK + 5, 40, seed=9)
    want, want_grads = output_and_grads(composed("ref"), args)
    for level in supported:
        ext.set_isa(level)
        assert ext.isa() == level
        out, grads = output_and_grads(fused, args)
        assert rel_err(out, want) < 1e-12, level
        assert max(rel_err(g, w) for g, w in zip(grads, want_grads)) < 1e-11, level


def test_results_do_not_depend_on_thread_count(ext):
    args = random_inner(1, 300, 64, dtype=torch.float32, seed=4)
    threads = torch.get_num_threads()
    try:
        runs = {}
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            runs.setdefault(n, []).append(output_and_grads(fused, args))
    finally:
        torch.set_num_threads(threads)
    (out1, grads1), = runs[1]
    (out2, grads2), (out2b, grads2b) = runs[2]
    assert torch.equal(out1, out2) and torch.equal(out2, out2b)  # the forward has no cross-thread sums
    for a, b, c in zip(grads1, grads2, grads2b):
        assert torch.equal(b, c)  # deterministic for a given thread count
        assert rel_err(a, b) < 1e-5  # dB, dC and per-channel sums are split differently


def test_inference_runs_the_same_op_without_saving(ext):
    args = random_inner(2, 70, 24, dtype=torch.float32, seed=5)
    with torch.no_grad():
        out = bimamba_inner_fn(*args, backend="cpp")
    with torch.enable_grad():
        want = bimamba_inner_fn(*args, backend="cpp")
    assert want.requires_grad and torch.equal(out, want.detach())
    with torch.no_grad():
        hidden, params = args
        results = torch.ops.videomamba.bimamba_inner(hidden, *params.flat(), False)
    assert len(results) == 1


def test_custom_op_registrations_pass_opcheck(ext):
    hidden, params = random_inner(1, 7, 8, n_state=4, rank=2, dtype=torch.float32, proj_bias=True)
    torch.library.opcheck(torch.ops.videomamba.bimamba_inner.default, (hidden, *params.flat(), True))


def test_positive_A_is_rejected(ext):
    hidden, params = random_inner(1, 5, 8, n_state=4)
    params = params._replace(forward=params.forward._replace(A=params.forward.A.detach().abs()))
    with pytest.raises(RuntimeError, match="A must be <= 0"):
        bimamba_inner_fn(hidden, params, backend="cpp")


def test_auto_uses_the_fused_op_on_cpu_and_logs_it_once(ext, caplog):
    ops.backend._announced.discard(("bimamba_inner", "cpp", "cpu"))
    args = random_inner(1, 5, 8, n_state=4, dtype=torch.float32)
    with caplog.at_level(logging.INFO, logger="models.ops.backend"):
        for _ in range(2):
            bimamba_inner_fn(*args)
    assert len([r for r in caplog.records if "bimamba_inner: using the 'cpp' backend" in r.getMessage()]) == 1
    assert bimamba_inner.resolve_inner_backend("cpu", None, 4, 16) == "cpp"
    assert bimamba_inner.resolve_inner_backend("cpu", "torch", 4, 16) == "composed:torch"
    assert bimamba_inner.resolve_inner_backend("cpu", None, 9, 16) == "composed:auto"  # conv wider than the C++ kernel
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        bimamba_inner.resolve_inner_backend("cpu", "cuda", 4, 16)


def test_falls_back_to_the_composed_path_with_one_warning_when_the_extension_fails(monkeypatch):
    def broken():
        raise RuntimeError("fused CPU selective scan unavailable: no compiler")

    monkeypatch.setattr(bimamba_inner, "load_cpu_kernel", broken)
    ops.backend._warned.discard("bimamba_inner:cpp")
    args = random_inner(1, 6, 8, n_state=4, dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [bimamba_inner_fn(*args) for _ in range(2)]
    assert len([w for w in caught if "no compiler" in str(w.message)]) == 1
    assert bimamba_inner.resolve_inner_backend("cpu", None, 4, 4) == "composed:torch"
    torch.testing.assert_close(outs[0], bimamba_inner_ref(*args, backend="torch"))


def test_compiled_tiny_videomamba_has_no_graph_break_and_matches_eager(ext):
    """torch.compile(fullgraph=True) of a 2-block VideoMamba: the fused op is one node per block; outputs and
    every parameter's gradient equal eager's."""
    import timm

    import models  # noqa: F401  (registers the architectures)

    torch.manual_seed(0)
    model = timm.create_model("videomamba_tiny", img_size=32, num_frames=2, depth=2, num_classes=5)
    x = torch.randn(2, 3, 2, 32, 32)
    compiled = torch.compile(model, fullgraph=True)
    outputs, grads = [], []
    for run in (compiled, model):
        model.zero_grad()
        out = run(x)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        outputs.append(out.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_the_op_computes_in_the_dtypes_it_is_given_even_under_autocast(ext):
    """The custom op never autocasts (autocast applies at `bimamba_inner_fn`'s boundary): called directly under
    bf16 autocast with fp32 arguments it computes, saves and differentiates in fp32 as outside autocast."""
    args = random_inner(2, 30, 16, n_state=4, rank=2, dtype=torch.float32, proj_bias=True, seed=4)

    def op(hidden, params):
        return torch.ops.videomamba.bimamba_inner(hidden, *params.flat(), True)[0]

    want, want_grads = output_and_grads(op, args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, grads = output_and_grads(op, args)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    for a, b in zip(grads, want_grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("native_bf16", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_cpu_path_under_autocast_matches_fp64(ext, dtype, native_bf16, monkeypatch):
    """bimamba_inner_fn on CPU under autocast: the output in the autocast dtype, as a Linear's would be, within the
    dtype's rounding of the fp64 reference; every gradient in its parameter's dtype, as close; with the big GEMMs in
    bf16 (a CPU with AVX512-BF16 or AMX) and in fp32 (one without)."""
    monkeypatch.setattr(bimamba_cpu, "native_bf16", lambda: native_bf16)
    args64 = random_inner(2, 2 * SCAN_CHUNK + 5, 16, n_state=4, rank=2, proj_bias=True, seed=9)
    want, want_grads = output_and_grads(fused, args64)
    fresh = iter([t.detach().float().requires_grad_() for t in leaves(args64)])
    args = (next(fresh), InnerParams.from_flat([None if t is None else next(fresh) for t in args64[1].flat()]))
    with torch.autocast("cpu", dtype=dtype):
        out, grads = output_and_grads(fused, args)
    tolerance = {torch.bfloat16: (5e-2, 1e-1), torch.float16: (1e-2, 2e-2)}[dtype]
    assert out.dtype == dtype and rel_err(out, want) < tolerance[0]
    for got, expected in zip(grads, want_grads):
        assert got.dtype == torch.float32 and rel_err(got, expected) < tolerance[1]


def test_fused_cpu_path_takes_a_model_cast_to_bf16(ext):
    """DeepSpeed's bf16 engine casts the model rather than autocasting: bf16 input and parameters (A stays fp32,
    as the mixer forms it) give a bf16 output and bf16 gradients within bf16's rounding of fp64."""
    args64 = random_inner(2, SCAN_CHUNK + 9, 16, n_state=4, rank=2, proj_bias=True, seed=12)
    want, want_grads = output_and_grads(fused, args64)
    hidden, params = args64
    params = ops.bimamba_params.map_params(lambda t: t.detach().to(torch.bfloat16).requires_grad_(), params)
    params = params._replace(**{name: getattr(params, name)._replace(A=getattr(args64[1], name).A.detach().float()
                                                                     .requires_grad_())
                                for name in ("forward", "backward")})
    args = (hidden.detach().to(torch.bfloat16).requires_grad_(), params)
    out, grads = output_and_grads(fused, args)
    assert out.dtype == torch.bfloat16 and rel_err(out, want) < 5e-2
    for got, expected, leaf in zip(grads, want_grads, leaves(args)):
        assert got.dtype == leaf.dtype and rel_err(got, expected) < 1e-1


@pytest.mark.parametrize("chunk", [64, 128, 192])
def test_inference_windows_carry_the_state_and_the_conv_history(ext, chunk):
    """The inference forward runs each direction in windows of `chunk` steps, carrying the scan state and reading
    the conv's history rows across window borders: in fp64 it equals the training forward (one pass over the
    sequence) and the composed reference, for a length that is not a multiple of the window."""
    hidden, params = random_inner(2, 2 * SCAN_CHUNK + 150, 16, n_state=5, rank=2, width=4, proj_bias=True, seed=chunk)
    hidden, params = hidden.detach(), ops.bimamba_params.map_params(lambda t: t.detach(), params)
    windows = bimamba_cpu._forward_windows(ext, hidden, params, torch.float64, chunk=chunk)
    one_pass, _ = bimamba_cpu.forward(ext, hidden, params, save=True)
    assert rel_err(windows, one_pass) < 1e-13
    assert rel_err(windows, bimamba_inner_ref(hidden, params, backend="ref")) < 1e-12


def test_bf16_gemms_only_where_the_cpu_multiplies_bf16(monkeypatch):
    """The big GEMMs run in bf16 for bf16 inputs on a CPU with AVX512-BF16 or AMX-BF16 (emulated elsewhere, where
    fp32 is faster), never for other dtypes."""
    for flags, native in (({"avx512_bf16": True}, True), ({"amx_bf16": True}, True), ({"avx2": True}, False)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda flags=flags: flags)
        bimamba_cpu.native_bf16.cache_clear()
        assert bimamba_cpu.native_bf16() is native
        assert bimamba_cpu.gemm_dtype(torch.bfloat16) == (torch.bfloat16 if native else torch.float32)
        assert bimamba_cpu.gemm_dtype(torch.float16) == torch.float32
        assert bimamba_cpu.gemm_dtype(torch.float64) == torch.float64
    bimamba_cpu.native_bf16.cache_clear()
