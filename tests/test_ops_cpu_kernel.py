"""Fused C++ CPU selective scan: built on first use, exact against the sequential reference.

The first test compiles the extension (once per machine; cached under ~/.cache/videomamba).
"""
import logging
import time

import pytest
import torch

import models.ops as ops
from models.ops import selective_scan, selective_scan_cpu, selective_scan_fn
from models.ops.scan_autograd import scan_with_kernel
from models.ops.scan_inputs import random_scan_inputs
from test_ops_selective_scan import CASES, assert_matches_reference, rel_err, run_with_grads

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def kernel():
    start = time.perf_counter()
    module = selective_scan_cpu.load_cpu_kernel()
    logger.info("fused CPU scan ready in %.1f s", time.perf_counter() - start)
    return module


def fused(kernel):
    return lambda **kwargs: scan_with_kernel(kernel, **kwargs)


@pytest.mark.parametrize("case", CASES)
def test_fused_matches_reference(kernel, case):
    batch, dim, length, n, groups, z, D, bias, softplus = case
    inputs = random_scan_inputs(batch, dim, length, n, groups=groups, with_z=z, with_D=D, with_delta_bias=bias,
                                seed=100 + length)
    assert_matches_reference(fused(kernel), inputs, softplus, tol=1e-5)


def test_long_sequence_many_channels_against_torch_path(kernel):
    """L = 1000, 32 channels, 2 threads: checked against the (already verified) PyTorch path."""
    from models.ops import selective_scan_torch

    inputs = random_scan_inputs(2, 32, 1000, 16, seed=7)
    out_t, last_t, grads_t = run_with_grads(lambda **kw: scan_with_kernel(selective_scan_torch, **kw), inputs, True)
    out_c, last_c, grads_c = run_with_grads(fused(kernel), inputs, True)
    assert rel_err(out_c, out_t) < 1e-5 and rel_err(last_c, last_t) < 1e-5
    for name in grads_t:
        assert rel_err(grads_c[name], grads_t[name]) < 1e-5, name


def test_thread_count_does_not_change_results(kernel):
    inputs = random_scan_inputs(2, 12, 50, 8, groups=2, seed=11)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_with_grads(fused(kernel), inputs, True)
        torch.set_num_threads(3)
        three = run_with_grads(fused(kernel), inputs, True)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one[0], three[0], rtol=0, atol=0)
    for name in one[2]:
        torch.testing.assert_close(one[2][name], three[2][name], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(kernel, dtype):
    inputs = random_scan_inputs(2, 8, 64, 8, seed=13, dtype=dtype)
    ref = {k: None if v is None else v.double() for k, v in inputs.items()}
    out_ref, _, grads_ref = run_with_grads(ops.selective_scan_ref, ref, True)
    out, _, grads = run_with_grads(fused(kernel), inputs, True)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads.values())
    # fp32 inside: what is left is the rounding of outputs and gradients (bf16 2^-8, fp16 2^-11).
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert rel_err(out, out_ref) < tol
    for name in grads:
        assert rel_err(grads[name], grads_ref[name]) < tol, name


def test_fused_kernel_does_not_decay_to_zero_on_extreme_delta(kernel):
    """exp(Δ·A) far below fp32's range must behave as 0 decay, not produce NaN."""
    inputs = random_scan_inputs(1, 4, 20, 4, seed=3)
    inputs["delta"] = inputs["delta"] * 0 + 500.0
    out = scan_with_kernel(kernel, **inputs, delta_softplus=True)
    want = ops.selective_scan_ref(**inputs, delta_softplus=True)
    assert torch.isfinite(out).all()
    assert rel_err(out, want) < 1e-5


def test_auto_picks_fused_kernel_on_cpu(kernel, monkeypatch):
    monkeypatch.delenv("VIDEOMAMBA_SCAN_BACKEND", raising=False)
    ops.set_backend("auto")
    name, module = selective_scan.resolve_scan_backend(on_cuda=False)
    assert name == "cpp" and module is kernel
    inputs = random_scan_inputs(1, 4, 9, 4, seed=2)
    torch.testing.assert_close(selective_scan_fn(**inputs), scan_with_kernel(kernel, **inputs))


def test_build_failure_is_remembered_and_reported(monkeypatch):
    def failing_build():
        raise OSError("c++: command not found")

    monkeypatch.setattr(selective_scan_cpu, "_build", failing_build)
    selective_scan_cpu.reset_cpu_kernel()
    try:
        for _ in range(2):
            with pytest.raises(RuntimeError, match="command not found"):
                selective_scan_cpu.load_cpu_kernel()
    finally:
        selective_scan_cpu.reset_cpu_kernel()


def test_delta_softplus_matches_torch(kernel):
    """The vectorised discretisation Δ = softplus(delta + bias): within 4e-7 of float64 softplus over ±30, x
    itself above torch's threshold 20, and the far negative end in [0, 1e-37) (its values near exp(-87) are flushed to 0
    with the kernels' denormals)."""
    gen = torch.Generator().manual_seed(3)
    delta = torch.randn(2, 7, 37, generator=gen) * 10
    bias = torch.randn(7, generator=gen)
    got = kernel.discretise(delta, bias, True)
    want = torch.nn.functional.softplus((delta + bias[:, None]).double())
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert ((got.double() - want).abs() / want).max() < 4e-7
    edges = torch.tensor([[[-200.0, -87.0, -20.0, 0.0, 1e-4, 20.0, 20.5, 1e3, 3.0]]])
    out = kernel.discretise(edges, None, True)
    torch.testing.assert_close(out[..., 2:], torch.nn.functional.softplus(edges)[..., 2:], rtol=4e-7, atol=0)
    assert torch.equal(out[..., 5:8], edges[..., 5:8])
    assert (out[..., :2] >= 0).all() and (out[..., :2] < 1e-37).all()
    # non-contiguous and non-fp32 inputs are converted; no softplus is a plain bias add
    strided = delta.transpose(1, 2).contiguous().transpose(1, 2).double()
    torch.testing.assert_close(kernel.discretise(strided, bias, True), got, rtol=0, atol=0)
    torch.testing.assert_close(kernel.discretise(delta, bias, False), delta + bias[:, None])


def test_build_folder_is_keyed_by_the_checkout(tmp_path, monkeypatch):
    """Each checkout builds into a folder of its own (ninja would rebuild a shared folder whenever the source paths
    change), the same checkout always into the same folder."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    folders = []
    for name in ("checkout_a", "checkout_b", "checkout_a"):
        monkeypatch.setattr(selective_scan_cpu, "CSRC", tmp_path / name / "csrc")
        folders.append(selective_scan_cpu.build_directory())
    assert folders[0] == folders[2] != folders[1]
    assert folders[0].parent == tmp_path / "cache"


def test_first_build_says_it_is_compiling(tmp_path, monkeypatch, caplog):
    built = []

    def fake_load(name, build_directory, **kwargs):
        built.append(build_directory)
        return type("Module", (), {"scan_chunk": selective_scan_cpu.SCAN_CHUNK, "isa": lambda: "x",
                                   "best_isa": lambda: "x"})

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr("torch.utils.cpp_extension.load", fake_load)
    with caplog.at_level(logging.INFO, logger=selective_scan_cpu.__name__):
        selective_scan_cpu._build()
    assert any("compiling the C++ CPU kernels" in r.getMessage() for r in caplog.records)
    caplog.clear()
    (tmp_path / built[0].split("/")[-1] / f"{selective_scan_cpu.EXTENSION_NAME}.so").write_bytes(b"")
    with caplog.at_level(logging.INFO, logger=selective_scan_cpu.__name__):
        selective_scan_cpu._build()
    assert not any("compiling" in r.getMessage() for r in caplog.records)


def _denormal_survives() -> bool:
    """Whether this thread and torch's worker threads keep fp32 denormals (the caller's mode, not flushed)."""
    return bool((torch.full((1 << 20,), 1e-39) * 1.0).ne(0).all())


@pytest.mark.parametrize("threads", [1, 2])
def test_kernels_flush_denormals_inside_and_leave_the_callers_mode(kernel, threads):
    """Denormal inputs read as zero inside the kernels (DAZ: the official init made denormals cost a training step
    50 %), and the caller's threads keep denormals afterwards (the mode is never changed globally)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert _denormal_survives()
        x = torch.full((1, 4096, 64), 1e-39)  # conv: silu(x_{t-3} + ... + x_t) = 2e-39 without flushing
        out = kernel.module.conv_forward(x, torch.ones(64, 4), torch.zeros(64), False, None, None)
        assert torch.count_nonzero(out) == 0
        u = torch.full((1, 64, 4096), 1e-39)  # standalone scan: h_t = e^-1 h_{t-1} + u_t, y = 4 h: denormal
        y = selective_scan_fn(u, torch.ones_like(u), -torch.ones(64, 4), torch.ones(1, 4, 4096),
                              torch.ones(1, 4, 4096), backend="cpp")
        assert torch.count_nonzero(y) == 0
        assert _denormal_survives()
    finally:
        torch.set_num_threads(previous)
