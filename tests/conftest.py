"""Fixtures shared by the test modules."""
from types import SimpleNamespace

import pytest

import cuda_standins
from models.ops import bimamba_cuda, bimamba_inner, get_backend, set_backend


@pytest.fixture
def torch_backend():
    """Use the vectorised PyTorch scan, so a test does not depend on building the C++ kernel; restores the
    previous backend afterwards. Modules opt in with ``pytestmark = pytest.mark.usefixtures("torch_backend")``."""
    previous = get_backend()
    set_backend("torch")
    yield
    set_backend(previous)


@pytest.fixture
def cuda_glue_on_cpu(monkeypatch):
    """The fused op's CPU registration runs the CUDA glue (`bimamba_cuda`) over the stand-in kernels, so that a
    call of `bimamba_inner_fn` on CPU tensors takes the GPU's whole route: the autocast boundary, the custom op and
    its autograd registration, the glue and the kernels' rules."""
    kernels = cuda_standins.fused_kernels()
    glue = SimpleNamespace(
        forward=lambda ext, hidden, params, save: bimamba_cuda.forward(kernels, hidden, params, save),
        backward=lambda ext, hidden, params, residuals, dout: bimamba_cuda.backward(kernels, hidden, params,
                                                                                     residuals, dout),
        compute_dtype=lambda dtype: dtype)
    monkeypatch.setattr(bimamba_inner, "bimamba_cpu", glue)
    monkeypatch.setattr(bimamba_inner, "load_cpu_kernel", lambda: SimpleNamespace(module=None))
