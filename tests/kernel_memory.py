"""Raw-memory access and TORCH_CHECK for the CPU stand-ins of the stock CUDA kernels (tests/cuda_standins.py).

A CUDA kernel does not see tensors, only a data pointer, an element type and the strides it was given: it loads
and stores at the element offsets it computes itself. `Pointer` does the same on CPU, over a tensor's whole
storage, so that a buffer given with a layout the kernel does not expect receives the kernel's writes where the
kernel puts them (wrong numbers, as on a GPU), and vector accesses at unaligned addresses raise the fault a GPU
raises. `check` and `check_shape` raise what TORCH_CHECK and the sources' CHECK_SHAPE macro raise.
"""
from typing import Optional, Sequence

import torch
from torch import Tensor

INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what both kernels take as input (and weight) types
# The C++ text of the dtype TORCH_CHECKs (selective_scan.cpp ~235, causal_conv1d.cpp ~160-161)
INPUT_TYPE_CHECK = ("input_type == at::ScalarType::Float || input_type == at::ScalarType::Half || "
                    "input_type == at::ScalarType::BFloat16")
MISALIGNED = "CUDA error: misaligned address"
# A guess: on a GPU an access past the tensor's storage may also land silently in a neighbouring allocation.
ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered"
# What c10's TORCH_CHECK(cond) without a message appends to "Expected <cond> to be true, but got false."
_TORCH_CHECK_TAIL = "  (Could this error message be improper? If so, please report an enhancement request to PyTorch.)"


class KernelRuleError(RuntimeError):
    """What the real kernel raises: a failed TORCH_CHECK of its C++ entry point, or a CUDA fault."""


def check(ok: bool, condition: str, message: Optional[str] = None) -> None:
    """TORCH_CHECK(condition[, message]); `condition` is the C++ text of the condition, which PyTorch quotes in
    its message when the check has none."""
    if not ok:
        raise KernelRuleError(message if message is not None
                              else f"Expected {condition} to be true, but got false.{_TORCH_CHECK_TAIL}")


def check_shape(t: Tensor, name: str, dims_text: str, *sizes: int) -> None:
    """CHECK_SHAPE(t, ...) (selective_scan.cpp ~12, causal_conv1d.cpp ~31): the message quotes the C++ text."""
    check(tuple(t.shape) == tuple(sizes), "", f"{name} must have shape ({dims_text})")


def unit_last(t: Tensor) -> bool:
    """`t.stride(-1) == 1 || t.size(-1) == 1`, the sources' unit-stride test."""
    return t.stride(-1) == 1 or t.shape[-1] == 1


def offsets(sizes: Sequence[int], strides: Sequence[int]) -> Tensor:
    """int64 (*sizes): the element offset sum_i index_i * stride_i of every point of the grid."""
    total = torch.zeros(tuple(sizes), dtype=torch.int64)
    for axis, (size, stride) in enumerate(zip(sizes, strides)):
        shape = [1] * len(sizes)
        shape[axis] = size
        total += (torch.arange(size, dtype=torch.int64) * stride).view(shape)
    return total


def empty_like(t: Tensor, **kwargs) -> Tensor:
    """torch::empty_like as the C++ allocates outputs (x's layout when x is dense), filled with NaN so that
    anything the kernel did not write stands out."""
    return torch.empty_like(t, **kwargs).fill_(float("nan"))


class Pointer:
    """`reinterpret_cast<dtype *>(t.data_ptr())`: loads, stores and atomic adds in `dtype` at element offsets
    from t's first element, anywhere in t's storage (the storage's own start is taken as aligned, as the CUDA
    caching allocator's blocks are)."""

    def __init__(self, t: Tensor, dtype: torch.dtype, name: str):
        storage = t.untyped_storage()
        self.itemsize = dtype.itemsize
        self.byte = t.data_ptr() - storage.data_ptr()  # t's first element, in bytes from the storage's start
        self.name = name
        if self.byte % self.itemsize:
            raise KernelRuleError(f"{MISALIGNED} ({name} read as {dtype} at byte {self.byte})")
        self.flat = torch.empty(0, dtype=dtype, device=t.device).set_(
            storage, 0, (storage.nbytes() // self.itemsize,), (1,))

    def aligned(self, starts: Tensor, nbytes: int) -> None:
        """Vector accesses (16-byte uint4 or 8-byte uint64 loads and stores of a kernel's vec_t) need their
        address aligned to their size; `starts` are the element offsets where vectors begin."""
        bad = (self.byte + starts * self.itemsize) % nbytes != 0
        if bool(bad.any()):
            first = int(starts[bad].flatten()[0])
            raise KernelRuleError(f"{MISALIGNED} ({self.name}: a {nbytes}-byte vector access at element offset "
                                  f"{first}, byte {self.byte + first * self.itemsize})")

    def _start(self, sizes: Sequence[int], strides: Sequence[int], offset: int) -> int:
        """The storage index of the grid's first element, after checking that the whole grid lies in the storage."""
        start = self.byte // self.itemsize + offset
        if any(stride < 0 for stride in strides):
            raise ValueError("stand-in: negative strides are not modelled")
        last = start + sum((size - 1) * stride for size, stride in zip(sizes, strides) if size > 0)
        if min(sizes, default=1) > 0 and (start < 0 or last >= self.flat.numel()):
            raise KernelRuleError(f"{ILLEGAL_ACCESS} ({self.name}: an access outside its storage)")
        return start

    def load(self, sizes: Sequence[int], strides: Sequence[int], offset: int = 0) -> Tensor:
        """The elements at offset + sum_i index_i * strides_i over a grid of `sizes`, as a float64 copy."""
        start = self._start(sizes, strides, offset)
        return self.flat.as_strided(tuple(sizes), tuple(strides), start).to(torch.float64, copy=True)

    def store(self, sizes: Sequence[int], strides: Sequence[int], values: Tensor, offset: int = 0) -> None:
        """Plain stores over the grid, rounded to the pointer's type; where addresses repeat, one of the writes
        wins (a race, as on the GPU)."""
        start = self._start(sizes, strides, offset)
        self.flat.as_strided(tuple(sizes), tuple(strides), start).copy_(values.expand(tuple(sizes)))

    def atomic_add(self, sizes: Sequence[int], strides: Sequence[int], values: Tensor, offset: int = 0) -> None:
        """atomicAdd over the grid: every value is added, in the pointer's type, repeated addresses included."""
        start = self._start(sizes, strides, offset)
        where = offsets(sizes, strides).flatten() + start
        self.flat.index_add_(0, where, values.expand(tuple(sizes)).flatten().to(self.flat.dtype))
