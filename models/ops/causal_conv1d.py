"""Causal depthwise conv1d (+ optional SiLU), as used by the Mamba mixer before the scan.

x (batch, dim, L), weight (dim, width), bias (dim,) -> (batch, dim, L); output t sees inputs
t-width+1 .. t only (zero left padding). With ``reverse`` the conv runs backwards in time: it equals
``causal_conv1d_fn(x.flip(-1), ...).flip(-1)`` (output t sees inputs t .. t+width-1) without the two copies.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .backend import announce, requested_backend, warn_once
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


def _causal_conv1d_torch(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: Optional[str],
                         reverse: bool = False) -> Tensor:
    """Computed in weight's dtype. Channels-last inputs (x.stride(1) == 1, e.g. a transposed view of a
    (batch, L, dim) projection) take `width` shifted multiply-adds that keep that layout and need no padded
    copy; others F.conv1d on the padded input (right-padded with mirrored taps when ``reverse``)."""
    width = weight.shape[1]
    if x.stride(1) == 1 and x.shape[1] > 1:
        xl = x.to(weight.dtype).transpose(1, 2)  # (batch, L, dim) view
        length = xl.shape[1]
        if bias is None:
            out = xl.new_zeros(xl.shape)
        else:
            out = bias.to(weight.dtype).expand(xl.shape).clone()
        for k in range(width):
            shift = width - 1 - k  # tap k reads x[t - shift] (x[t + shift] when reverse)
            if shift >= length:
                continue
            if reverse:
                out[:, :length - shift].addcmul_(xl[:, shift:], weight[:, k])
            else:
                out[:, shift:].addcmul_(xl[:, :length - shift], weight[:, k])
        out = out.transpose(1, 2)
    else:
        pad, taps = ((0, width - 1), weight.flip(-1)) if reverse else ((width - 1, 0), weight)
        out = F.conv1d(F.pad(x.to(weight.dtype), pad), taps.unsqueeze(1),
                       None if bias is None else bias.to(weight.dtype), groups=weight.shape[0])
    if activation is not None:
        out = F.silu(out, inplace=not out.requires_grad)  # in place when autograd does not need the input
    return out.to(x.dtype)


def _conv_kernel_importable() -> bool:
    """Whether causal_conv1d imports; when not, one loud warning with the reason (auto then runs PyTorch)."""
    try:
        load_causal_conv1d()
    except ImportError as exc:
        warn_once("causal_conv1d:cuda", f"causal_conv1d: the stock CUDA kernel is unusable, so CUDA tensors take "
                                        f"the PyTorch conv: {exc}")
        return False
    return True


def causal_conv1d_fn(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     activation: Optional[str] = None, reverse: bool = False,
                     backend: Optional[str] = None) -> Tensor:
    """Causal depthwise conv1d: the causal_conv1d CUDA kernel when usable, else F.conv1d.

    `backend`: one of `BACKENDS`, None for the process default. "cuda" forced: ImportError with the install
    command when causal_conv1d is missing. "ref" uses `causal_conv1d_ref`; "cpp"/"torch" use F.conv1d, or
    shifted multiply-adds for channels-last input, and run ``reverse`` natively; the other backends run it on
    flipped copies. ("cpp" has no separate conv here: the C++ conv runs inside the fused mixer path.)
    """
    _check(x, weight, activation)
    requested = requested_backend(backend)
    if requested == "cuda":
        load_causal_conv1d()
        if not x.is_cuda:
            raise ValueError("the 'cuda' conv backend needs CUDA tensors")
    use_kernel = requested in ("cuda", "auto") and x.is_cuda and conv_kernel_supports(weight.shape[-1]) \
        and (requested == "cuda" or _conv_kernel_importable())
    device = "cuda" if x.is_cuda else "cpu"
    if use_kernel or requested == "ref":
        name, fn = ("cuda", causal_conv1d_cuda) if use_kernel else ("ref", causal_conv1d_ref)
        announce("causal_conv1d", name, device, requested)
        if reverse:
            return fn(x.flip(-1), weight, bias, activation).flip(-1)
        return fn(x, weight, bias, activation)
    announce("causal_conv1d", "torch", device, requested)
    return _causal_conv1d_torch(x, weight, bias, activation, reverse)
