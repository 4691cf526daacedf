"""Causal depthwise conv1d (+ optional SiLU), as used by the Mamba mixer before the scan.

x (batch, dim, L), weight (dim, width), bias (dim,) -> (batch, dim, L); output t sees inputs
t-width+1 .. t only (zero left padding).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .backend import announce, get_backend
from .cuda_glue import causal_conv1d_cuda, conv_kernel_supports, load_causal_conv1d

_ACTIVATIONS = (None, "silu", "swish")


def _check(x: Tensor, weight: Tensor, activation: Optional[str]) -> None:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be None or 'silu', got {activation!r}")
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"causal_conv1d: need x (batch, dim, L) and weight (dim, width), "
                         f"got {tuple(x.shape)} and {tuple(weight.shape)}")


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                      activation: Optional[str] = None) -> Tensor:
    """Readable reference: out_t = bias + Σ_k weight[:, k] · x_{t - (width-1) + k}, computed in weight's dtype."""
    _check(x, weight, activation)
    width = weight.shape[1]
    xw = F.pad(x.to(weight.dtype), (width - 1, 0))
    out = sum(weight[:, k, None] * xw[..., k:k + x.shape[-1]] for k in range(width))
    if bias is not None:
        out = out + bias.to(weight.dtype)[:, None]
    if activation is not None:
        out = F.silu(out)
    return out.to(x.dtype)


def _causal_conv1d_torch(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: Optional[str]) -> Tensor:
    """F.conv1d with groups=dim on the left-padded input, computed in weight's dtype."""
    width = weight.shape[1]
    out = F.conv1d(F.pad(x.to(weight.dtype), (width - 1, 0)), weight.unsqueeze(1),
                   None if bias is None else bias.to(weight.dtype), groups=weight.shape[0])
    if activation is not None:
        out = F.silu(out)
    return out.to(x.dtype)


def _conv_kernel_importable() -> bool:
    try:
        load_causal_conv1d()
    except ImportError:
        return False
    return True


def causal_conv1d_fn(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     activation: Optional[str] = None) -> Tensor:
    """Causal depthwise conv1d: the causal_conv1d CUDA kernel when usable, else F.conv1d.

    Backend "cuda" forced: ImportError with the install command when causal_conv1d is missing.
    "ref" uses `causal_conv1d_ref`; "cpp"/"torch" use F.conv1d.
    """
    _check(x, weight, activation)
    requested = get_backend()
    if requested == "cuda":
        load_causal_conv1d()
        if not x.is_cuda:
            raise ValueError("the 'cuda' conv backend needs CUDA tensors")
    use_kernel = requested in ("cuda", "auto") and x.is_cuda and conv_kernel_supports(weight) \
        and (requested == "cuda" or _conv_kernel_importable())
    if use_kernel:
        announce("causal_conv1d", "cuda", "cuda")
        return causal_conv1d_cuda(x, weight, bias, activation)
    device = "cuda" if x.is_cuda else "cpu"
    if requested == "ref":
        announce("causal_conv1d", "ref", device)
        return causal_conv1d_ref(x, weight, bias, activation)
    announce("causal_conv1d", "torch", device)
    return _causal_conv1d_torch(x, weight, bias, activation)
