"""Causal depthwise conv1d: reference by hand, F.conv1d path, dispatch and the causal_conv1d glue."""
import sys

import pytest
import torch

import cuda_standins
import models.ops as ops
from models.ops import causal_conv1d, causal_conv1d_fn, causal_conv1d_ref, cuda_glue


@pytest.fixture(autouse=True)
def auto_backend(monkeypatch):
    monkeypatch.delenv("VIDEOMAMBA_SCAN_BACKEND", raising=False)
    yield
    ops.set_backend("auto")


def test_reference_by_hand():
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    weight = torch.tensor([[0.5, -1.0, 2.0]])  # out_t = 0.5 x_{t-2} - x_{t-1} + 2 x_t + bias
    want = torch.tensor([[[2.0, 3.0, 4.5, 6.0]]]) + 0.25
    torch.testing.assert_close(causal_conv1d_ref(x, weight, torch.tensor([0.25])), want)
    torch.testing.assert_close(causal_conv1d_ref(x, weight, torch.tensor([0.25]), "silu"),
                               torch.nn.functional.silu(want))


@pytest.mark.parametrize("width", [1, 2, 4, 5])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fn_matches_reference_and_gradients(width, activation, with_bias):
    gen = torch.Generator().manual_seed(width)
    x = torch.randn(2, 6, 13, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, width, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True) if with_bias else None
    out = causal_conv1d_fn(x, weight, bias, activation)
    want = causal_conv1d_ref(x, weight, bias, activation)
    torch.testing.assert_close(out, want)
    leaves = [t for t in (x, weight, bias) if t is not None]
    g_out = torch.autograd.grad(out.sum(), leaves)
    g_want = torch.autograd.grad(want.sum(), leaves)
    for got, exp in zip(g_out, g_want):
        torch.testing.assert_close(got, exp)


def test_output_never_sees_the_future():
    x = torch.randn(1, 3, 20)
    weight = torch.randn(3, 4)
    changed = x.clone()
    changed[..., 12:] += 5.0
    a, b = causal_conv1d_fn(x, weight), causal_conv1d_fn(changed, weight)
    torch.testing.assert_close(a[..., :12], b[..., :12])
    assert not torch.allclose(a[..., 12:], b[..., 12:])


def test_bf16_input_fp32_weight_returns_bf16():
    x = torch.randn(2, 4, 9).to(torch.bfloat16)
    weight = torch.randn(4, 4)
    out = causal_conv1d_fn(x, weight, activation="silu")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), causal_conv1d_ref(x.float(), weight, activation="silu"),
                               rtol=1e-2, atol=1e-2)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_fn(torch.randn(1, 2, 3), torch.randn(2, 4), activation="relu")
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d_fn(torch.randn(1, 2, 3), torch.randn(3, 4))


def test_forced_ref_backend_uses_reference(monkeypatch):
    calls = []
    monkeypatch.setattr(causal_conv1d, "causal_conv1d_ref", lambda *a: calls.append(a) or causal_conv1d_ref(*a))
    ops.set_backend("ref")
    causal_conv1d_fn(torch.randn(1, 2, 5), torch.randn(2, 3))
    assert len(calls) == 1


def test_forcing_cuda_without_causal_conv1d_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "causal_conv1d", None)
    ops.set_backend("cuda")
    with pytest.raises(ImportError, match=r"requirements-cuda\.txt"):
        causal_conv1d_fn(torch.randn(1, 2, 5), torch.randn(2, 3))


def test_cuda_glue_matches_pure_path(monkeypatch):
    monkeypatch.setattr(cuda_glue, "load_causal_conv1d", lambda: cuda_standins.causal_conv1d_fn)
    x = torch.randn(2, 6, 3, 10)[:, :, 1, :]  # neither unit stride along L nor along channels
    weight = torch.randn(4, 6).t()  # (6, 4), not contiguous
    bias = torch.randn(6, dtype=torch.float64)
    out = cuda_glue.causal_conv1d_cuda(x, weight, bias, "silu")
    torch.testing.assert_close(out, causal_conv1d_ref(x, weight, bias.float(), "silu"))


def test_kernel_is_used_only_for_supported_widths():
    assert cuda_glue.conv_kernel_supports(4)
    assert not cuda_glue.conv_kernel_supports(5)


@pytest.mark.parametrize("backend", ["auto", "torch", "ref"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("length", [1, 3, 11])
def test_reverse_is_the_conv_of_the_flipped_sequence(backend, channels_last, length):
    """reverse=True equals flip ∘ conv ∘ flip, values and gradients, for (batch, dim, L) inputs in either layout
    (channels-last: a transposed view of (batch, L, dim), as the mixer passes its in_proj output)."""
    ops.set_backend(backend)
    gen = torch.Generator().manual_seed(length)
    base = torch.randn(2, length, 5, generator=gen, dtype=torch.float64)
    weight = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    outs, grads = [], []
    for reverse in (True, False):
        leaf = base.clone().requires_grad_(True)
        x = leaf.transpose(1, 2) if channels_last else leaf.transpose(1, 2).contiguous()
        if reverse:
            out = causal_conv1d_fn(x, weight, bias, "silu", reverse=True)
        else:
            out = causal_conv1d_ref(x.flip(-1), weight, bias, "silu").flip(-1)
        outs.append(out)
        grads.append(torch.autograd.grad((out * torch.arange(out.numel()).view_as(out)).sum(), (leaf, weight, bias)))
    torch.testing.assert_close(outs[0], outs[1])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)


def test_channels_last_forward_matches_contiguous():
    x = torch.randn(3, 17, 6).transpose(1, 2)  # (batch, dim, L) with stride(1) == 1
    weight, bias = torch.randn(6, 4), torch.randn(6)
    torch.testing.assert_close(causal_conv1d_fn(x, weight, bias, "silu"),
                               causal_conv1d_fn(x.contiguous(), weight, bias, "silu"))
