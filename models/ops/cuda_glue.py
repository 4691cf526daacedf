"""Calls into the stock PyPI CUDA kernels (mamba-ssm 2.3.2.post1, causal-conv1d 1.7.0) with the layouts and dtypes
they demand.

The kernels are reached only through the loaders below, so tests can substitute CPU stand-ins with the same
signatures and rules and check the glue without a GPU. Rules of the kernels (from their C++ sources):
- selective scan: u, delta, B, C, z in one dtype (fp32/fp16/bf16) with unit stride along L; A, D, delta_bias
  fp32, D and delta_bias with unit stride; N <= 256; it does not check that the group count divides d_inner;
  the backward's dout in u's dtype with unit stride along L; states (batch, d_inner, ceil(L / 2048), 2N) fp32.
- causal conv1d: x and weight fp32/fp16/bf16, 2 <= width <= 4, bias in weight's dtype with unit stride and
  shape (dim,); x with unit stride along L, or channels-last (unit channel stride), which further needs
  dim % 8 == 0 and x.stride(0), x.stride(2) multiples of 8. `out` is not checked: the L-contiguous kernel writes
  it assuming unit stride along L, the channels-last kernel assuming unit channel stride (the stock wrapper
  allocates empty_like(x)); both use 16-byte vector loads and stores, so the rows they address must be 16-byte
  aligned (not checked either). In the backward dx must have x's layout (unit channel stride when
  channels-last), dweight and dbias are fp32 accumulators that must start at zero.
"""
from types import SimpleNamespace
from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor

from .backend import CUDA_INSTALL_HINT
from .scan_args import check_scan_args


def _import_error(what: str, exc: BaseException) -> ImportError:
    return ImportError(f"the 'cuda' backend needs {what}: {CUDA_INSTALL_HINT} ({type(exc).__name__}: {exc})")


def load_mamba_scan() -> Callable:
    """mamba_ssm's `selective_scan_fn`; ImportError with the install command when it cannot be imported for any
    reason (importing mamba_ssm also imports triton, transformers and huggingface_hub)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # noqa: BLE001 - any failure means the kernel is unusable; the caller reports it
        raise _import_error("mamba_ssm", exc) from exc
    return selective_scan_fn


def load_causal_conv1d() -> Callable:
    """causal_conv1d's `causal_conv1d_fn`; ImportError with the install command when it cannot be imported."""
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception as exc:  # noqa: BLE001
        raise _import_error("causal_conv1d", exc) from exc
    return causal_conv1d_fn


def load_fused_kernels() -> SimpleNamespace:
    """The compiled kernels the stock packages' public functions call, for the fused mixer path:
    scan_fwd/scan_bwd = selective_scan_cuda.fwd/bwd, conv_fwd/conv_bwd = causal_conv1d_cuda's. Importing them
    directly skips mamba_ssm's Python package (and its triton / transformers imports)."""
    try:
        import causal_conv1d_cuda
        import selective_scan_cuda
    except Exception as exc:  # noqa: BLE001
        raise _import_error("the selective_scan_cuda and causal_conv1d_cuda kernels", exc) from exc
    return SimpleNamespace(scan_fwd=selective_scan_cuda.fwd, scan_bwd=selective_scan_cuda.bwd,
                           conv_fwd=causal_conv1d_cuda.causal_conv1d_fwd,
                           conv_bwd=causal_conv1d_cuda.causal_conv1d_bwd)


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
    check_scan_args(u, delta, A, B, C, D, z, delta_bias)  # the kernel does not check the group count
    kernel = load_mamba_scan()
    dtype = u.dtype

    def bc(t: Tensor) -> Tensor:  # time-invariant (d_inner, N) in fp32, as A; time-varying in u's dtype
        return t.float().contiguous() if t.dim() == 2 else _unit_stride(t, dtype)

    return kernel(
        _unit_stride(u), _unit_stride(delta, dtype), A.float().contiguous(), bc(B), bc(C),
        D=None if D is None else D.float().contiguous(),
        z=_unit_stride(z, dtype),
        delta_bias=None if delta_bias is None else delta_bias.float().contiguous(),
        delta_softplus=bool(delta_softplus),
        return_last_state=return_last_state,
    )


def conv_kernel_supports(width: int) -> bool:
    """causal_conv1d handles widths 2 to 4 only."""
    return 2 <= width <= 4


def _vector_elements(t: Tensor) -> int:
    """Elements of t in one 16-byte vector access."""
    return max(1, 16 // t.element_size())


def _aligned(t: Tensor, *strides: int) -> bool:
    """Whether t's first element and every step of `strides` (elements) fall on 16 bytes, as the kernels' vector
    loads and stores need (the storage itself comes 16-byte aligned from the allocator)."""
    return all(s % _vector_elements(t) == 0 for s in (t.storage_offset(), *strides))


def channels_last_ok(x: Tensor) -> bool:
    """Whether the channels-last conv kernel takes x (batch, dim, L) as it is: unit channel stride, dim and the
    batch and L strides multiples of 8 (its TORCH_CHECKs), and a 16-byte aligned start (its vector accesses)."""
    return (x.stride(1) == 1 and x.shape[1] % 8 == 0 and x.stride(0) % 8 == 0 and x.stride(2) % 8 == 0
            and _aligned(x))


def l_contiguous(t: Tensor) -> Tensor:
    """t (batch, channels, L) as both kernels take it without a channels-last special case: unit stride along L
    and, when L is a multiple of a 16-byte vector (the kernels then load and store whole vectors; otherwise element
    by element), 16-byte aligned rows; else a fresh contiguous copy."""
    vectors = t.shape[-1] % _vector_elements(t) == 0
    if t.stride(-1) == 1 and (not vectors or _aligned(t, *t.stride()[:-1])):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def conv_input(x: Tensor, dense: bool) -> Tensor:
    """x in a layout the conv kernel accepts: channels-last when `channels_last_ok` (and, with `dense`, when x
    has no gaps, so that empty_like(x) in the stock backward is channels-last too), else L-contiguous."""
    if channels_last_ok(x) and (not dense or x.transpose(1, 2).is_contiguous()):
        return x
    return l_contiguous(x)


def causal_conv1d_cuda(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                       activation: Optional[str] = None) -> Tensor:
    """causal_conv1d's kernel with its layout preconditions met (x (batch, dim, L), weight (dim, width))."""
    kernel = load_causal_conv1d()
    weight = weight.contiguous()
    if bias is not None:
        bias = bias.to(weight.dtype).contiguous()
    return kernel(conv_input(x, dense=True), weight, bias=bias, activation=activation)
