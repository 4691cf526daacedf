"""Selective-scan and causal-conv1d ops with interchangeable backends (CUDA kernels, fused C++, PyTorch, reference)."""
from .backend import BACKENDS, get_backend, set_backend
from .causal_conv1d import causal_conv1d_fn, causal_conv1d_ref
from .selective_scan import selective_scan_fn
from .selective_scan_ref import selective_scan_ref

__all__ = [
    "BACKENDS",
    "causal_conv1d_fn",
    "causal_conv1d_ref",
    "get_backend",
    "selective_scan_fn",
    "selective_scan_ref",
    "set_backend",
]
