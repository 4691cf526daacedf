"""Bidirectional Mamba mixer: official parameter layout, Mamba init, and equivalence to a hand-written
sequential reference (fp64 loops, independent of models.ops), for the composed path ("torch") and the fused
C++ path ("cpp")."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from models.mamba_mixer import BiMambaMixer
from models.ops import get_backend, set_backend


@pytest.fixture(autouse=True)
def torch_backend():
    """Default to the composed path with the vectorised PyTorch scan; tests of the fused path pick it per module
    with ``BiMambaMixer(..., backend="cpp")``."""
    previous = get_backend()
    set_backend("torch")
    yield
    set_backend(previous)


MIXER_BACKENDS = ["torch", "cpp"]


def _randomise(mixer: BiMambaMixer, seed: int) -> None:
    """Give every parameter (including A_log, D and biases) non-trivial, direction-specific values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mixer.named_parameters():
            if "A" in name.split(".")[-1] and "log" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 2 - 1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _reference_direction(x, z, conv_w, conv_b, xproj_w, dtproj_w, dtproj_b, A_log, D, dt_rank, n):
    """One direction with explicit loops; x, z (B, L, E) fp64 -> (B, L, E)."""
    batch, length, width = x.shape
    k = conv_w.shape[-1]
    xc = torch.zeros_like(x)
    for t in range(length):
        acc = conv_b.expand(batch, width).clone()
        for j in range(k):
            src = t - (k - 1) + j
            if src >= 0:
                acc = acc + conv_w[:, 0, j] * x[:, src]
        xc[:, t] = acc * torch.sigmoid(acc)
    proj = xc @ xproj_w.T
    dt = F.softplus(proj[..., :dt_rank] @ dtproj_w.T + dtproj_b)
    b_in, c_out = proj[..., dt_rank:dt_rank + n], proj[..., dt_rank + n:]
    A = -torch.exp(A_log)
    h = torch.zeros(batch, width, n, dtype=x.dtype)
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, t, :, None] * A) * h + dt[:, t, :, None] * b_in[:, t, None, :] * xc[:, t, :, None]
        y = (h * c_out[:, t, None, :]).sum(-1) + D * xc[:, t]
        ys.append(y * z[:, t] * torch.sigmoid(z[:, t]))
    return torch.stack(ys, dim=1)


def _reference_mixer(m: BiMambaMixer, hidden: torch.Tensor) -> torch.Tensor:
    p = {k: v.detach().double() for k, v in m.named_parameters()}
    xz = hidden.double() @ p["in_proj.weight"].T
    x, z = xz[..., :m.d_inner], xz[..., m.d_inner:]
    fwd = _reference_direction(x, z, p["conv1d.weight"], p["conv1d.bias"], p["x_proj.weight"],
                               p["dt_proj.weight"], p["dt_proj.bias"], p["A_log"], p["D"], m.dt_rank, m.d_state)
    bwd = _reference_direction(x.flip(1), z.flip(1), p["conv1d_b.weight"], p["conv1d_b.bias"], p["x_proj_b.weight"],
                               p["dt_proj_b.weight"], p["dt_proj_b.bias"], p["A_b_log"], p["D_b"], m.dt_rank,
                               m.d_state).flip(1)
    return (fwd + bwd) @ p["out_proj.weight"].T


def test_parameter_names_and_shapes():
    m = BiMambaMixer(40)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    dt_rank, d_inner = 3, 80
    assert shapes == {
        "A_log": (d_inner, 16), "D": (d_inner,), "A_b_log": (d_inner, 16), "D_b": (d_inner,),
        "in_proj.weight": (2 * d_inner, 40),
        "conv1d.weight": (d_inner, 1, 4), "conv1d.bias": (d_inner,),
        "conv1d_b.weight": (d_inner, 1, 4), "conv1d_b.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 32, d_inner), "x_proj_b.weight": (dt_rank + 32, d_inner),
        "dt_proj.weight": (d_inner, dt_rank), "dt_proj.bias": (d_inner,),
        "dt_proj_b.weight": (d_inner, dt_rank), "dt_proj_b.bias": (d_inner,),
        "out_proj.weight": (40, d_inner),
    }


def test_mamba_initialisation():
    torch.manual_seed(0)
    m = BiMambaMixer(32)
    expected_a = torch.log(torch.arange(1, 17, dtype=torch.float32)).expand(64, -1)
    for suffix in ("", "_b"):
        assert torch.equal(getattr(m, "A_log" if not suffix else "A_b_log"), expected_a)
        assert torch.equal(getattr(m, f"D{suffix}"), torch.ones(64))
        dt = F.softplus(getattr(m, f"dt_proj{suffix}").bias)
        assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
        bound = m.dt_rank ** -0.5
        assert getattr(m, f"dt_proj{suffix}").weight.abs().max() <= bound
    assert not torch.equal(m.dt_proj.bias, m.dt_proj_b.bias)


@pytest.mark.parametrize("backend", MIXER_BACKENDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_sequential_reference(seed, backend):
    torch.manual_seed(seed)
    m = BiMambaMixer(16, d_state=4, backend=backend)
    _randomise(m, seed)
    hidden = torch.randn(2, 9, 16)
    out = m(hidden)
    ref = _reference_mixer(m, hidden)
    assert out.shape == hidden.shape
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", MIXER_BACKENDS)
def test_directions_are_summed_not_averaged(backend):
    torch.manual_seed(3)
    m = BiMambaMixer(16, d_state=4, backend=backend)
    _randomise(m, 3)
    hidden = torch.randn(1, 6, 16)
    only_fwd = copy.deepcopy(m)
    with torch.no_grad():  # silence the backward direction: zero its conv, bias and skip
        only_fwd.conv1d_b.weight.zero_()
        only_fwd.conv1d_b.bias.zero_()
        only_fwd.D_b.zero_()
    only_bwd = copy.deepcopy(m)
    with torch.no_grad():
        only_bwd.conv1d.weight.zero_()
        only_bwd.conv1d.bias.zero_()
        only_bwd.D.zero_()
    torch.testing.assert_close(m(hidden), only_fwd(hidden) + only_bwd(hidden), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", MIXER_BACKENDS)
def test_flip_with_swapped_directions_flips_output(backend):
    torch.manual_seed(5)
    m = BiMambaMixer(16, d_state=4, backend=backend)
    _randomise(m, 5)
    swapped = copy.deepcopy(m)
    sd = m.state_dict()
    renamed = {}
    for key, value in sd.items():
        if key.startswith(("conv1d", "x_proj", "dt_proj")):
            head, _, tail = key.partition(".")
            other = head[:-2] if head.endswith("_b") else head + "_b"
            renamed[f"{other}.{tail}"] = value
        elif key in ("A_log", "A_b_log", "D", "D_b"):
            renamed[{"A_log": "A_b_log", "A_b_log": "A_log", "D": "D_b", "D_b": "D"}[key]] = value
        else:
            renamed[key] = value
    swapped.load_state_dict(renamed, strict=True)
    hidden = torch.randn(2, 11, 16)
    torch.testing.assert_close(swapped(hidden.flip(1)), m(hidden).flip(1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(m(hidden.flip(1)), m(hidden).flip(1), atol=1e-3)


@pytest.mark.parametrize("backend", MIXER_BACKENDS)
def test_backward_reaches_every_parameter(backend):
    torch.manual_seed(1)
    m = BiMambaMixer(16, d_state=4, backend=backend)
    m(torch.randn(2, 5, 16)).pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_dt_rank_is_ceil_of_width_over_16():
    assert BiMambaMixer(192).dt_rank == 12
    assert BiMambaMixer(40).dt_rank == math.ceil(40 / 16)


@pytest.mark.parametrize("backend", ["torch", "cpp", "ref"])
@pytest.mark.parametrize("length", [1, 2, 10])
def test_inference_equals_the_autograd_path(backend, length):
    """No-grad inference (the fused op without saving anything, or the composed ops) is the same function."""
    set_backend(backend)
    torch.manual_seed(7)
    m = BiMambaMixer(16, d_state=4)
    _randomise(m, 7)
    hidden = torch.randn(2, length, 16)
    with torch.enable_grad():
        want = m(hidden)
    assert want.requires_grad
    with torch.no_grad():
        got = m(hidden)
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.double(), _reference_mixer(m, hidden), rtol=1e-4, atol=1e-5)


def test_fused_gradients_equal_the_composed_path_in_fp64():
    """Every parameter's gradient (A_log, D, in_proj, both directions, out_proj) and the input's, fused C++ path
    against the composed ops with the sequential reference scan, in fp64."""
    torch.manual_seed(2)
    m = BiMambaMixer(24, d_state=16, backend="cpp").double()
    _randomise(m, 2)
    hidden = torch.randn(2, 70, 24, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 70, 24, dtype=torch.float64)
    results = {}
    for backend in ("cpp", "ref"):
        m.backend = backend
        out = m(hidden)
        results[backend] = (out.detach(), torch.autograd.grad((out * weight).sum(), [hidden, *m.parameters()]))
    (out, grads), (want, want_grads) = results["cpp"], results["ref"]
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    names = ["input"] + [name for name, _ in m.named_parameters()]
    for name, got, expected in zip(names, grads, want_grads):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12, msg=name)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="BiMambaMixer"):
        BiMambaMixer(16, backend="gpu")
