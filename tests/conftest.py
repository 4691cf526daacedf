"""Fixtures shared by the test modules."""
import pytest

from models.ops import get_backend, set_backend


@pytest.fixture
def torch_backend():
    """Use the vectorised PyTorch scan, so a test does not depend on building the C++ kernel; restores the
    previous backend afterwards. Modules opt in with ``pytestmark = pytest.mark.usefixtures("torch_backend")``."""
    previous = get_backend()
    set_backend("torch")
    yield
    set_backend(previous)
