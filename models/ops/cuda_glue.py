"""Calls into the stock PyPI CUDA kernels (mamba_ssm, causal_conv1d) with the layouts and dtypes they demand.

The kernels are reached only through `load_mamba_scan` / `load_causal_conv1d`, so tests can
substitute a pure reference with the same signature and check the glue on CPU.
mamba_ssm's kernel requires: delta, B, C, z in u's dtype (fp32/fp16/bf16); A, D, delta_bias fp32;
unit stride along L. causal_conv1d's requires: x with unit stride along L (or channels), weight
(dim, width) with 2 <= width <= 4, bias in weight's dtype.
"""
from typing import Callable, Optional, Tuple, Union

from torch import Tensor

from .backend import CUDA_INSTALL_HINT


def load_mamba_scan() -> Callable:
    """mamba_ssm's `selective_scan_fn`; ImportError with the install command when missing."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError as exc:
        raise ImportError(f"the 'cuda' scan backend needs mamba_ssm: {CUDA_INSTALL_HINT} ({exc})") from exc
    return selective_scan_fn


def load_causal_conv1d() -> Callable:
    """causal_conv1d's `causal_conv1d_fn`; ImportError with the install command when missing."""
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError as exc:
        raise ImportError(f"the 'cuda' conv backend needs causal_conv1d: {CUDA_INSTALL_HINT} ({exc})") from exc
    return causal_conv1d_fn


def _unit_stride(t: Optional[Tensor], dtype=None) -> Optional[Tensor]:
    if t is None:
        return None
    if dtype is not None:
        t = t.to(dtype)
    return t if t.stride(-1) == 1 else t.contiguous()


def selective_scan_cuda(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                        D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                        delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                        return_last_state: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """mamba_ssm's fused scan with its dtype/stride preconditions met (signature as selective_scan_fn)."""
    kernel = load_mamba_scan()
    dtype = u.dtype
    return kernel(
        _unit_stride(u), _unit_stride(delta, dtype), A.float().contiguous(),
        _unit_stride(B, dtype), _unit_stride(C, dtype),
        D=None if D is None else D.float().contiguous(),
        z=_unit_stride(z, dtype),
        delta_bias=None if delta_bias is None else delta_bias.float().contiguous(),
        delta_softplus=bool(delta_softplus),
        return_last_state=return_last_state,
    )


def conv_kernel_supports(weight: Tensor) -> bool:
    """causal_conv1d handles widths 2 to 4 only."""
    return 2 <= weight.shape[-1] <= 4


def causal_conv1d_cuda(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                       activation: Optional[str] = None) -> Tensor:
    """causal_conv1d's kernel with its layout preconditions met (x (batch, dim, L), weight (dim, width))."""
    kernel = load_causal_conv1d()
    if x.stride(-1) != 1 and x.stride(1) != 1:
        x = x.contiguous()
    weight = weight.contiguous()
    if bias is not None:
        bias = bias.to(weight.dtype).contiguous()
    return kernel(x, weight, bias=bias, activation=activation)
