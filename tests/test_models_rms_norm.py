"""models.rms_norm.RmsNormFp32: timm's RMSNorm function and gradients, keeping only its input for the backward."""
import pytest
import torch
from timm.layers import RmsNormFp32 as TimmRmsNormFp32

from models.rms_norm import RmsNormFp32


def _pair(dim=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ours, timm_norm = RmsNormFp32(dim, eps=1e-5), TimmRmsNormFp32(dim, eps=1e-5)
    with torch.no_grad():
        ours.weight.copy_(torch.rand(dim, generator=gen) + 0.5)
        timm_norm.weight.copy_(ours.weight)
    return ours, timm_norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_function_and_gradients_as_timms(dtype):
    ours, timm_norm = _pair()
    x = (torch.randn(3, 17, 24, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    dy = torch.randn(3, 17, 24, generator=torch.Generator().manual_seed(2)).to(dtype)
    results = []
    for norm in (ours, timm_norm):
        leaf = x.clone().requires_grad_()
        out = norm(leaf)
        (out.float() * dy.float()).sum().backward()
        results.append((out, leaf.grad, norm.weight.grad))
    (out_a, dx_a, dw_a), (out_b, dx_b, dw_b) = results
    assert out_a.dtype == out_b.dtype == dtype and dx_a.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out_a, out_b, **tol)
    torch.testing.assert_close(dx_a, dx_b, **tol)
    torch.testing.assert_close(dw_a, dw_b, rtol=1e-4, atol=1e-4)


def test_keeps_only_its_input_and_the_row_scale():
    """The lean backward: besides the input (the residual stream, alive anyway) and the weight, one value per row;
    timm's composed norm also keeps the normalised (B, L, C) tensor."""
    ours, timm_norm = _pair()
    x = torch.randn(2, 50, 24, requires_grad=True)
    for norm, extra_full_tensors in ((ours, 0), (timm_norm, 1)):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            norm(x)
        full = [t for t in saved if t.shape == x.shape and t.data_ptr() != x.data_ptr()]
        assert len(full) == extra_full_tensors


def test_recomputed_keeps_a_recipe_instead_of_the_tensor():
    """An op inside `recomputed` that saves the named tensor keeps nothing of it; the backward calls the recipe once
    and gets the same gradients as when the tensor is saved."""
    from models.rms_norm import recomputed

    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(8, 8, requires_grad=True)
    grads = []
    for recompute in (False, True):
        calls = []
        h = torch.tanh(x)

        def again():
            calls.append(1)
            return torch.tanh(x)

        if recompute:
            with recomputed(h, again):
                out = (h @ w).sin().sum()
        else:
            out = (h @ w).sin().sum()
        grads.append(torch.autograd.grad(out, (x, w)))
        assert len(calls) == int(recompute)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
