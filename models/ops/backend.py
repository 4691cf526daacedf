"""Which implementation the scan, conv and fused mixer ops use.

Names: "auto" (default), "cuda" (stock mamba_ssm / causal_conv1d kernels), "cpp" (C++ CPU kernels),
"torch" (vectorised PyTorch), "ref" (sequential reference). Every op takes an explicit ``backend=``; None means
the process default: `set_backend` wins over the environment variable VIDEOMAMBA_SCAN_BACKEND, and
`set_backend("auto")` goes back to automatic choice. Each op logs its choice once per (op, backend, device).
"""
import logging
import os
import warnings
from typing import Optional, Set, Tuple

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "cuda", "cpp", "torch", "ref")
ENV_VAR = "VIDEOMAMBA_SCAN_BACKEND"
CUDA_INSTALL_HINT = "pip install --no-build-isolation -r requirements-cuda.txt"

_forced: Optional[str] = None
_announced: Set[Tuple[str, str, str]] = set()
_warned: Set[str] = set()


def check_backend(name: str, source: str) -> str:
    """`name` if it is a known backend, else ValueError naming `source`."""
    if name not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {name!r} from {source}; choose one of {BACKENDS}")
    return name


def set_backend(name: str) -> None:
    """Force a backend for this process ("auto" restores the automatic choice)."""
    global _forced
    _forced = None if check_backend(name, "set_backend()") == "auto" else name


def get_backend() -> str:
    """The process default: set_backend's, else $VIDEOMAMBA_SCAN_BACKEND, else "auto"."""
    if _forced is not None:
        return _forced
    env = os.environ.get(ENV_VAR, "").strip().lower()
    return check_backend(env, f"${ENV_VAR}") if env else "auto"


def requested_backend(backend: Optional[str]) -> str:
    """An op's explicit ``backend=`` argument, or the process default when None."""
    return get_backend() if backend is None else check_backend(backend, "the backend argument")


def announce(op: str, chosen: str, device: str, requested: Optional[str] = None) -> None:
    """Log the implementation used by `op` once per (op, backend, device type)."""
    key = (op, chosen, device)
    if key not in _announced:
        _announced.add(key)
        logger.info("%s: using the %r backend on %s tensors (requested %r)", op, chosen, device,
                    requested or get_backend())


def warn_once(key: str, message: str) -> None:
    """A RuntimeWarning, and a WARNING log line, the first time `key` is seen in this process."""
    if key in _warned:
        return
    _warned.add(key)
    logger.warning("%s", message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
