"""The CUDA glue (standalone scan and conv, and the fused mixer path) on CPU, over stand-ins that enforce the
stock kernels' rules (tests/cuda_standins.py): forward and backward against the references, both conv layouts,
and the loud fallback when the stock packages cannot be imported."""
import warnings

import pytest
import torch

import cuda_standins as stock
import models.ops as ops
from models.ops import bimamba_cuda, bimamba_inner, cuda_glue, selective_scan, selective_scan_ref
from models.ops.causal_conv1d import _conv_kernel_importable
from models.ops.scan_inputs import random_scan_inputs
from test_ops_bimamba_inner import leaves, output_and_grads, random_inner, rel_err


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.delenv("VIDEOMAMBA_SCAN_BACKEND", raising=False)
    ops.backend._warned.clear()
    yield
    ops.set_backend("auto")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scan_glue_forward_and_backward_match_the_reference(dtype, monkeypatch):
    monkeypatch.setattr(cuda_glue, "load_mamba_scan", lambda: stock.selective_scan_fn)
    inputs = random_scan_inputs(2, 8, 21, 4, groups=1, seed=5, dtype=dtype)
    # Awkward layouts and dtypes the glue must fix: transposed (non unit-stride) u, fp64 A, bf16 D, a strided D.
    inputs["u"] = inputs["u"].transpose(1, 2).contiguous().transpose(1, 2)
    inputs["A"] = inputs["A"].double()
    inputs["D"] = torch.stack([inputs["D"], inputs["D"]], dim=1)[:, 0].to(torch.bfloat16)
    leaves_glue = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out = cuda_glue.selective_scan_cuda(**leaves_glue, delta_softplus=1)
    leaves_ref = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
    want = selective_scan_ref(**leaves_ref, delta_softplus=True)
    assert out.dtype == dtype
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (out.double() * weight).sum().backward()
    (want * weight).sum().backward()
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-5  # bf16 keeps 8 bits (D is bf16 in both runs)
    assert rel_err(out, want) < tol
    for name, leaf in leaves_glue.items():
        assert leaf.grad.dtype == inputs[name].dtype, name
        assert rel_err(leaf.grad, leaves_ref[name].grad) < (3e-2 if name == "D" else tol), name


def test_scan_glue_checks_the_group_count_the_kernel_does_not(monkeypatch):
    monkeypatch.setattr(cuda_glue, "load_mamba_scan", lambda: stock.selective_scan_fn)
    inputs = random_scan_inputs(1, 8, 5, 4, groups=3)
    with pytest.raises(ValueError, match="does not divide d_inner"):
        cuda_glue.selective_scan_cuda(**inputs)


@pytest.mark.parametrize("layout", ["channels-last", "channels-last width 12", "channels-last view of xz",
                                    "L-contiguous"])
def test_conv_glue_forward_and_backward_in_both_layouts(layout, monkeypatch):
    monkeypatch.setattr(cuda_glue, "load_causal_conv1d", lambda: stock.causal_conv1d_fn)
    gen = torch.Generator().manual_seed(3)
    dim = 12 if "12" in layout else 16
    if layout == "channels-last view of xz":  # x = xz[..., :dim] as the mixer has it: no dense layout
        base = torch.randn(2, 10, 2 * dim, generator=gen)[..., :dim]
    else:
        base = torch.randn(2, 10, dim, generator=gen)
    x = base.transpose(1, 2)
    if layout == "L-contiguous":
        x = x.contiguous()
    x = x.detach().requires_grad_()
    weight = torch.randn(dim, 4, generator=gen, requires_grad=True)
    bias = torch.randn(dim, generator=gen, dtype=torch.float64, requires_grad=True)  # the glue casts it
    out = cuda_glue.causal_conv1d_cuda(x, weight, bias, "silu")
    want = ops.causal_conv1d_ref(x.double(), weight.double(), bias, "silu")
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    got_grads = torch.autograd.grad((out.double() * g).sum(), (x, weight, bias))
    want_grads = torch.autograd.grad((want * g).sum(), (x, weight, bias))
    assert rel_err(out, want) < 1e-5
    for got, expected in zip(got_grads, want_grads):
        assert rel_err(got, expected) < 1e-5


@pytest.mark.parametrize("d_inner", [16, 12])  # channels-last conv input, and the L-contiguous fallback
def test_fused_cuda_path_matches_the_composed_reference(d_inner):
    """bimamba_cuda's forward and backward over the stand-in kernels, against the composed ops in fp32: every
    gradient, with both projection biases."""
    hidden, params = random_inner(2, 23, d_inner, n_state=4, rank=2, dtype=torch.float32, proj_bias=True, seed=d_inner)

    def fused(h, p):
        return _FusedCudaForTest.apply(h, *p.flat())

    out, grads = output_and_grads(fused, (hidden, params))
    want, want_grads = output_and_grads(lambda h, p: ops.bimamba_inner_ref(h, p, backend="torch"), (hidden, params))
    assert rel_err(out, want) < 1e-5
    for got, expected, leaf in zip(grads, want_grads, leaves((hidden, params))):
        assert got.shape == leaf.shape and got.dtype == leaf.dtype
        assert rel_err(got, expected) < 1e-4


class _FusedCudaForTest(torch.autograd.Function):
    """The CUDA forward/backward pair of the fused op, run on CPU tensors over the stand-ins."""

    @staticmethod
    def forward(ctx, hidden, *flat):
        params = ops.InnerParams.from_flat(flat)
        out, residuals = bimamba_cuda.forward(stock.fused_kernels(), hidden, params, save=True)
        ctx.params = params
        ctx.save_for_backward(hidden, *residuals)
        return out

    @staticmethod
    def backward(ctx, dout):
        hidden, *residuals = ctx.saved_tensors
        d_hidden, grads = bimamba_cuda.backward(stock.fused_kernels(), hidden, ctx.params, residuals, dout)
        return (d_hidden, *grads.flat())


def test_auto_on_cuda_warns_loudly_with_the_reason_when_the_stock_packages_fail(monkeypatch):
    def broken():
        raise ImportError("the 'cuda' backend needs mamba_ssm: pip ... (RuntimeError: triton failed to load)")

    monkeypatch.setattr(selective_scan, "load_mamba_scan", broken)
    monkeypatch.setattr(ops.causal_conv1d, "load_causal_conv1d", broken)
    monkeypatch.setattr(bimamba_inner, "load_fused_kernels", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            assert selective_scan.resolve_scan_backend(on_cuda=True)[0] == "torch"
            assert not _conv_kernel_importable()
            assert bimamba_inner.resolve_inner_backend("cuda", None, 4, 16) == "composed:auto"
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 3  # once per op
    assert all("triton failed to load" in m for m in messages)


def test_fused_cuda_path_is_chosen_when_its_kernels_load(monkeypatch):
    monkeypatch.setattr(bimamba_inner, "load_fused_kernels", stock.fused_kernels)
    assert bimamba_inner.resolve_inner_backend("cuda", None, 4, 16) == "cuda"
    assert bimamba_inner.resolve_inner_backend("cuda", "cuda", 4, 16) == "cuda"
    assert bimamba_inner.resolve_inner_backend("cuda", None, 5, 16) == "composed:auto"  # width beyond the kernel
    with pytest.raises(ValueError, match="CPU tensors only"):
        bimamba_inner.resolve_inner_backend("cuda", "cpp", 4, 16)
