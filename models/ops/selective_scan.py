"""`selective_scan_fn`: the mamba_ssm-compatible entry point, dispatching to a backend (see `backend`)."""
import logging
from typing import Any, Optional, Tuple, Union

from torch import Tensor

from . import selective_scan_torch
from .backend import announce, requested_backend, warn_once
from .cuda_glue import load_mamba_scan, selective_scan_cuda
from .scan_autograd import scan_with_kernel
from .selective_scan_cpu import load_cpu_kernel
from .selective_scan_ref import selective_scan_ref

logger = logging.getLogger(__name__)


def _mamba_importable() -> bool:
    """Whether mamba_ssm's scan imports; when not, one loud warning with the reason (auto then runs PyTorch)."""
    try:
        load_mamba_scan()
    except ImportError as exc:
        warn_once("selective_scan:cuda", f"selective_scan: the stock CUDA kernel is unusable, so CUDA tensors take "
                                         f"the much slower PyTorch scan: {exc}")
        return False
    return True


def _cpp_kernel_or_none() -> Optional[Any]:
    """The fused C++ module, or None after one warning if it cannot be built."""
    try:
        return load_cpu_kernel()
    except RuntimeError as exc:
        warn_once("selective_scan:cpp", f"{exc}; falling back to the PyTorch selective scan")
        return None


def resolve_scan_backend(on_cuda: bool, backend: Optional[str] = None) -> Tuple[str, Optional[Any]]:
    """Pick the backend for tensors on CUDA or CPU: returns (name, CPU kernel module or None).

    `backend` None = the process default (see `backend`). "cuda" forced: ImportError with the install command
    when mamba_ssm is missing, ValueError on CPU tensors. "cpp" forced on CPU: the C++ kernel, or the PyTorch
    path after one warning if it cannot be built. "auto" on CUDA without a usable mamba_ssm: the PyTorch path
    after one loud warning that names the import error.
    """
    requested = requested_backend(backend)
    if requested == "cuda":
        load_mamba_scan()
        if not on_cuda:
            raise ValueError("the 'cuda' selective-scan backend needs CUDA tensors")
        return "cuda", None
    if requested == "cpp" and on_cuda:
        raise ValueError("the 'cpp' selective-scan backend runs on CPU tensors only")
    if requested in ("ref", "torch"):
        return requested, selective_scan_torch if requested == "torch" else None
    if requested == "auto" and on_cuda:
        return ("cuda", None) if _mamba_importable() else ("torch", selective_scan_torch)
    module = _cpp_kernel_or_none()
    return ("cpp", module) if module is not None else ("torch", selective_scan_torch)


def selective_scan_fn(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                      D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                      delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                      return_last_state: bool = False,
                      backend: Optional[str] = None) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Selective scan with mamba_ssm's signature and semantics (see `selective_scan_ref`).

    u, delta, z: (batch, d_inner, L); A: (d_inner, N); B, C: (batch, N, L), (batch, G, N, L) or time-invariant
    (d_inner, N); D, delta_bias: (d_inner,). Accumulates in fp32 (fp64 for fp64 inputs on the "ref" backend), returns u's
    dtype (and the fp32 last state (batch, d_inner, N) with return_last_state, which carries no gradient).
    `backend`: one of `BACKENDS`, None for the process default.
    """
    on_cuda = u.is_cuda
    name, kernel = resolve_scan_backend(on_cuda, backend)
    announce("selective_scan", name, "cuda" if on_cuda else "cpu", requested_backend(backend))
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if name == "cuda":
        return selective_scan_cuda(*args)
    if name == "ref":
        return selective_scan_ref(*args)
    return scan_with_kernel(kernel, *args)
