"""Selective-scan and causal-conv1d ops, and the fused bidirectional mixer inner path built from them, with
interchangeable backends (CUDA kernels, C++, PyTorch, reference)."""
from .backend import BACKENDS, check_backend, get_backend, set_backend
from .bimamba_inner import bimamba_inner_fn, bimamba_inner_ref
from .bimamba_params import Direction, InnerParams
from .causal_conv1d import causal_conv1d_fn, causal_conv1d_ref
from .selective_scan import selective_scan_fn
from .selective_scan_ref import selective_scan_ref

__all__ = [
    "BACKENDS",
    "Direction",
    "InnerParams",
    "bimamba_inner_fn",
    "bimamba_inner_ref",
    "causal_conv1d_fn",
    "causal_conv1d_ref",
    "check_backend",
    "get_backend",
    "set_backend",
    "selective_scan_fn",
    "selective_scan_ref",
]
