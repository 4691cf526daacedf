"""Which implementation the scan and conv ops use.

Names: "auto" (default), "cuda" (stock mamba_ssm / causal_conv1d kernels), "cpp" (fused C++ CPU
kernel), "torch" (vectorised PyTorch), "ref" (sequential reference). `set_backend` wins over the
environment variable VIDEOMAMBA_SCAN_BACKEND; `set_backend("auto")` goes back to automatic choice.
"""
import logging
import os
from typing import Optional, Set, Tuple

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "cuda", "cpp", "torch", "ref")
ENV_VAR = "VIDEOMAMBA_SCAN_BACKEND"
CUDA_INSTALL_HINT = "pip install --no-build-isolation -r requirements-cuda.txt"

_forced: Optional[str] = None
_announced: Set[Tuple[str, str, str]] = set()


def _check(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {name!r} from {source}; choose one of {BACKENDS}")
    return name


def set_backend(name: str) -> None:
    """Force a backend for this process ("auto" restores the automatic choice)."""
    global _forced
    _forced = None if _check(name, "set_backend()") == "auto" else name


def get_backend() -> str:
    """The requested backend: set_backend's, else $VIDEOMAMBA_SCAN_BACKEND, else "auto"."""
    if _forced is not None:
        return _forced
    env = os.environ.get(ENV_VAR, "").strip().lower()
    return _check(env, f"${ENV_VAR}") if env else "auto"


def announce(op: str, chosen: str, device: str) -> None:
    """Log the implementation used by `op` once per (op, backend, device type)."""
    key = (op, chosen, device)
    if key not in _announced:
        _announced.add(key)
        logger.info("%s: using the %r backend on %s tensors (requested %r)", op, chosen, device, get_backend())
