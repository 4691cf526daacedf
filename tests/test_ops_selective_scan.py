"""Selective scan: PyTorch path vs the sequential reference, dispatch, CUDA glue (substituted on CPU)."""
import logging
import sys
import warnings

import pytest
import torch

import cuda_standins
import models.ops as ops
from models.ops import cuda_glue, selective_scan, selective_scan_fn, selective_scan_ref, selective_scan_torch
from models.ops.scan_autograd import scan_with_kernel
from models.ops.scan_inputs import random_scan_inputs

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


def run_with_grads(fn, inputs, softplus, seed=1):
    """Output, last state and gradients of a fixed random projection of the output."""
    leaves = {k: None if v is None else v.clone().requires_grad_() for k, v in inputs.items()}
    out, last = fn(**leaves, delta_softplus=softplus, return_last_state=True)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (out.double() * weight).sum().backward()
    grads = {k: leaves[k].grad for k in GRAD_NAMES if leaves[k] is not None}
    return out.detach(), last.detach(), grads


def assert_matches_reference(fn, inputs, softplus, tol):
    """fn (fp32 inputs) against selective_scan_ref run in float64."""
    ref_inputs = {k: None if v is None else v.double() for k, v in inputs.items()}
    out_ref, last_ref, grads_ref = run_with_grads(selective_scan_ref, ref_inputs, softplus)
    out, last, grads = run_with_grads(fn, inputs, softplus)
    assert out.dtype == inputs["u"].dtype and out.shape == inputs["u"].shape
    assert rel_err(out, out_ref) < tol
    assert rel_err(last, last_ref) < tol
    assert grads.keys() == grads_ref.keys()
    for name, grad in grads.items():
        assert grad.dtype == inputs[name].dtype and grad.shape == inputs[name].shape, name
        assert rel_err(grad, grads_ref[name]) < tol, name


def torch_path(**kwargs):
    return scan_with_kernel(selective_scan_torch, **kwargs)


CASES = [
    # (batch, dim, L, N, groups, z, D, delta_bias, softplus)
    (1, 4, 1, 4, None, True, True, True, True),
    (2, 6, 37, 5, None, True, True, True, True),
    (2, 8, 300, 16, None, True, True, True, True),
    (1, 6, 33, 4, None, False, False, False, False),
    (3, 4, 17, 3, None, False, True, False, True),
    (2, 8, 45, 4, 1, True, False, True, False),
    (2, 8, 29, 4, 2, True, True, True, True),
]


@pytest.mark.parametrize("case", CASES)
def test_torch_path_matches_reference(case):
    batch, dim, length, n, groups, z, D, bias, softplus = case
    inputs = random_scan_inputs(batch, dim, length, n, groups=groups, with_z=z, with_D=D, with_delta_bias=bias,
                                seed=length)
    assert_matches_reference(torch_path, inputs, softplus, tol=1e-5)


def test_reference_follows_the_recurrence_by_hand():
    """One channel, N = 1, two steps, computed by hand."""
    u = torch.tensor([[[1.0, 2.0]]])
    delta = torch.tensor([[[0.5, 0.25]]])
    A = torch.tensor([[-1.0]])
    B = torch.tensor([[[2.0, 3.0]]])
    C = torch.tensor([[[1.0, -1.0]]])
    D = torch.tensor([0.5])
    h0 = 0.5 * 2.0 * 1.0
    h1 = torch.exp(torch.tensor(-0.25)) * h0 + 0.25 * 3.0 * 2.0
    want = torch.tensor([[[h0 + 0.5, -h1 + 1.0]]])
    out, last = selective_scan_ref(u, delta, A, B, C, D=D, return_last_state=True)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(last, h1.reshape(1, 1, 1))


def test_bf16_inputs_return_bf16_and_stay_close():
    inputs = random_scan_inputs(2, 8, 64, 8, seed=3, dtype=torch.bfloat16)
    out_ref = selective_scan_ref(**{k: None if v is None else v.double() for k, v in inputs.items()},
                                 delta_softplus=True)
    out = torch_path(**inputs, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    # fp32 accumulation: the only error left is bf16 rounding of the output (2^-8 relative).
    assert rel_err(out, out_ref) < 1e-2


def test_bad_shapes_raise_clear_errors():
    inputs = random_scan_inputs(2, 8, 10, 4)
    with pytest.raises(ValueError, match="delta shape"):
        selective_scan_fn(**{**inputs, "delta": inputs["delta"][:, :, :5]})
    with pytest.raises(ValueError, match="B must be"):
        selective_scan_fn(**{**inputs, "B": inputs["B"][:, :3]})
    with pytest.raises(ValueError, match="does not divide"):
        selective_scan_fn(**{**inputs, "B": torch.randn(2, 3, 4, 10), "C": torch.randn(2, 3, 4, 10)})
    with pytest.raises(ValueError, match="D must be"):
        selective_scan_fn(**{**inputs, "D": torch.randn(3)})


# ---- dispatch -------------------------------------------------------------------------------

@pytest.fixture
def restore_backend(monkeypatch):
    monkeypatch.delenv("VIDEOMAMBA_SCAN_BACKEND", raising=False)
    yield
    ops.set_backend("auto")


def spy_backend(monkeypatch):
    """Record which implementation selective_scan_fn calls."""
    calls = []
    monkeypatch.setattr(selective_scan, "selective_scan_ref",
                        lambda *a: calls.append("ref") or selective_scan_ref(*a))
    real = selective_scan.scan_with_kernel
    monkeypatch.setattr(selective_scan, "scan_with_kernel",
                        lambda kernel, *a: calls.append("torch" if kernel is selective_scan_torch else "cpp")
                        or real(kernel, *a))
    return calls


@pytest.mark.parametrize("name", ["ref", "torch"])
def test_forced_backend_is_used(name, restore_backend, monkeypatch):
    calls = spy_backend(monkeypatch)
    ops.set_backend(name)
    assert ops.get_backend() == name
    selective_scan_fn(**random_scan_inputs(1, 4, 6, 2))
    assert calls == [name]


def test_env_var_selects_backend_and_set_backend_wins(restore_backend, monkeypatch):
    calls = spy_backend(monkeypatch)
    monkeypatch.setenv("VIDEOMAMBA_SCAN_BACKEND", "ref")
    assert ops.get_backend() == "ref"
    selective_scan_fn(**random_scan_inputs(1, 4, 6, 2))
    ops.set_backend("torch")
    selective_scan_fn(**random_scan_inputs(1, 4, 6, 2))
    assert calls == ["ref", "torch"]
    monkeypatch.setenv("VIDEOMAMBA_SCAN_BACKEND", "fast")
    ops.set_backend("auto")
    with pytest.raises(ValueError, match="VIDEOMAMBA_SCAN_BACKEND"):
        ops.get_backend()
    with pytest.raises(ValueError, match="unknown selective-scan backend"):
        ops.set_backend("gpu")


def test_auto_falls_back_to_torch_with_one_warning_when_cpp_cannot_build(restore_backend, monkeypatch, caplog):
    def broken_loader():
        raise RuntimeError("fused CPU selective scan unavailable: no compiler")

    monkeypatch.setattr(selective_scan, "load_cpu_kernel", broken_loader)
    ops.backend._warned.discard("selective_scan:cpp")
    calls = spy_backend(monkeypatch)
    inputs = random_scan_inputs(1, 4, 6, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            out = selective_scan_fn(**inputs)
    assert calls == ["torch"] * 3
    assert len([w for w in caught if "no compiler" in str(w.message)]) == 1
    torch.testing.assert_close(out, selective_scan_ref(**inputs), rtol=1e-5, atol=1e-5)
    ops.set_backend("cpp")  # forcing cpp does not crash either
    selective_scan_fn(**inputs)
    assert calls[-1] == "torch"


def test_forcing_cuda_without_mamba_ssm_names_the_install_command(restore_backend, monkeypatch):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # makes the import fail even where it is installed
    ops.set_backend("cuda")
    with pytest.raises(ImportError, match=r"pip install .*-r requirements-cuda\.txt"):
        selective_scan_fn(**random_scan_inputs(1, 4, 6, 2))


def test_auto_on_cpu_never_picks_cuda(restore_backend, monkeypatch):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)
    name, _ = selective_scan.resolve_scan_backend(on_cuda=False)
    assert name in ("cpp", "torch")
    ops.backend._warned.discard("selective_scan:cuda")
    with pytest.warns(RuntimeWarning, match="stock CUDA kernel is unusable"):
        assert selective_scan.resolve_scan_backend(on_cuda=True)[0] == "torch"


def test_backend_choice_is_logged_once(restore_backend, caplog):
    ops.set_backend("ref")
    ops.backend._announced.discard(("selective_scan", "ref", "cpu"))
    with caplog.at_level(logging.INFO, logger="models.ops.backend"):
        for _ in range(3):
            selective_scan_fn(**random_scan_inputs(1, 4, 6, 2))
    assert len([r for r in caplog.records if "'ref' backend" in r.getMessage()]) == 1


# ---- CUDA glue, with the CPU stand-in that enforces mamba_ssm's kernel rules (tests/cuda_standins.py) -----

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_glue_matches_pure_path(dtype, monkeypatch):
    monkeypatch.setattr(cuda_glue, "load_mamba_scan", lambda: cuda_standins.selective_scan_fn)
    inputs = random_scan_inputs(2, 8, 21, 4, groups=1, seed=5, dtype=dtype)
    # Awkward layouts and dtypes the glue must fix: transposed (non unit-stride) u, fp64 A, bf16 D.
    inputs["u"] = inputs["u"].transpose(1, 2).contiguous().transpose(1, 2)
    inputs["A"] = inputs["A"].double()
    inputs["D"] = inputs["D"].to(torch.bfloat16)
    inputs["B"] = inputs["B"].float()
    out, last = cuda_glue.selective_scan_cuda(**inputs, delta_softplus=1, return_last_state=True)
    want, want_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    assert out.dtype == dtype
    torch.testing.assert_close(out, want, rtol=2e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-5)
    torch.testing.assert_close(last, want_last, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("length", [1, 2, 5, 16, 17, 100])
@pytest.mark.parametrize("chunk", [None, 1, 3, 16])
def test_chunked_scan_matches_the_loop(length, chunk):
    gen = torch.Generator().manual_seed(length)
    a = torch.rand(2, 3, length, 4, generator=gen)
    x = torch.randn(2, 3, length, 4, generator=gen)
    want = selective_scan_torch.linear_scan(a, x)
    torch.testing.assert_close(selective_scan_torch.chunked_linear_scan(a, x, chunk), want, rtol=1e-6, atol=1e-6)


class _Scan(torch.nn.Module):
    def forward(self, a, x):
        return selective_scan_torch.linear_scan(a, x)


def test_traced_scan_is_chunked_not_unrolled():
    # 100 tokens: chunks of 10, so 9 in-chunk steps, 9 carries and one final combine, not 100 unrolled steps.
    a, x = torch.rand(1, 2, 100, 3), torch.randn(1, 2, 100, 3)
    program = torch.export.export(_Scan(), (a, x))
    steps = [node for node in program.graph.nodes if node.target == torch.ops.aten.addcmul.default]
    assert len(steps) == 19
    torch.testing.assert_close(program.module()(a, x), selective_scan_torch.linear_scan(a, x))


# ---- time-invariant B and C (mamba_ssm's non-"variable" B, C of shape (d_inner, N)) -----------------------------

def _scan_by_hand(u, delta, A, B, C, D, delta_bias):
    """h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B(t), y_t = C(t)·h_t + D u_t, Δ = softplus(delta + bias), where B(t),
    C(t) is the (d_inner, N) matrix itself when 2-D, else the group's (N,) column of step t: written out without
    `check_scan_args`."""
    dt = torch.nn.functional.softplus(delta + delta_bias[:, None])
    batch, dim, length = u.shape

    def at(M, t):  # (batch, d_inner, N) of step t
        if M.dim() == 2:
            return M.expand(batch, dim, M.shape[1])
        M = M.unsqueeze(1) if M.dim() == 3 else M
        return M[..., t].repeat_interleave(dim // M.shape[1], dim=1)

    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * at(B, t)
        ys.append((h * at(C, t)).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, dim=-1)


def _cuda_glue_scan(**kwargs):
    return cuda_glue.selective_scan_cuda(**kwargs)


@pytest.mark.parametrize("backend", ["ref", "torch", "cpp", "cuda glue"])
@pytest.mark.parametrize("shapes", ["B fixed", "B and C fixed", "C fixed, B in 2 groups"])
def test_time_invariant_B_and_C_on_every_backend(backend, shapes, monkeypatch):
    """selective_scan_fn takes mamba_ssm's time-invariant (d_inner, N) B and C on every backend (the CUDA one
    through its glue, over the stand-in kernel): output and every gradient against the scan written out by hand."""
    inputs = random_scan_inputs(2, 8, 19, 4, groups=2 if "2 groups" in shapes else None, with_z=False, seed=8)
    gen = torch.Generator().manual_seed(9)
    if shapes.startswith("B"):
        inputs["B"] = torch.randn(8, 4, generator=gen)
    if "C" in shapes.split(",")[0]:
        inputs["C"] = torch.randn(8, 4, generator=gen)
    names = ("u", "delta", "A", "B", "C", "D", "delta_bias")
    ref = {k: inputs[k].double().requires_grad_() for k in names}
    want = _scan_by_hand(**ref)
    weight = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    want_grads = torch.autograd.grad((want * weight).sum(), [ref[k] for k in names])
    if backend == "cuda glue":
        monkeypatch.setattr(cuda_glue, "load_mamba_scan", lambda: cuda_standins.selective_scan_fn)
        fn = _cuda_glue_scan
    else:
        fn = lambda **kw: selective_scan_fn(**kw, backend=backend)  # noqa: E731
    leaves = {k: inputs[k].clone().requires_grad_() for k in names}
    out = fn(**leaves, delta_softplus=True)
    grads = torch.autograd.grad((out.double() * weight).sum(), [leaves[k] for k in names])
    assert rel_err(out, want) < 1e-5
    for name, got, expected in zip(names, grads, want_grads):
        assert got.shape == inputs[name].shape, name
        assert rel_err(got, expected) < 1e-4, name


def test_cuda_glue_passes_time_invariant_B_in_fp32_with_bf16_inputs(monkeypatch):
    """The stock kernel takes a time-invariant B, C in A's dtype (fp32) and time-varying ones in u's: with bf16
    activations the glue must not cast the fixed matrix to bf16."""
    monkeypatch.setattr(cuda_glue, "load_mamba_scan", lambda: cuda_standins.selective_scan_fn)
    inputs = random_scan_inputs(2, 8, 19, 4, with_z=False, seed=8)
    inputs["B"] = torch.randn(8, 4, generator=torch.Generator().manual_seed(9))
    want = _scan_by_hand(**{k: inputs[k].double() for k in ("u", "delta", "A", "B", "C", "D", "delta_bias")})
    bf16 = {k: v.to(torch.bfloat16) if k in ("u", "delta", "C") else v for k, v in inputs.items()}
    out = cuda_glue.selective_scan_cuda(**bf16, delta_softplus=True)
    assert out.dtype == torch.bfloat16 and rel_err(out, want) < 3e-2
