"""Lazy build and load of the C++ CPU extension: the fused selective scan (`csrc/selective_scan_cpu.cpp`) and
the kernels of the fused bidirectional mixer (`csrc/bimamba_cpu.cpp`), one module.

Built once with torch.utils.cpp_extension on first use into `$TORCH_EXTENSIONS_DIR` when set,
else `~/.cache/videomamba/torch_extensions`, in a folder named by a hash of the checkout's source folder, the
flags and the torch/Python versions, so two checkouts never rebuild each other's extension (ninja rebuilds whenever
the source paths of a build change); torch rebuilds a folder in place when a source changes and serialises
concurrent builds of one folder with a lock file. Flags: -O3 and, on Linux, -fopenmp;
never -march=native; on x86-64 the hot loops carry AVX-512 (x86-64-v4) and AVX2+FMA (x86-64-v3) versions
chosen at load time from the CPU's features, so a cached binary runs on any x86-64 (or aarch64) host.
$VIDEOMAMBA_CPU_ISA (avx512, avx2, generic) forces a lower level for the mixer's kernels (for comparisons).
"""
import hashlib
import logging
import os
import platform
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import List, Optional, Tuple

import torch.nn.functional as F
import torch
from torch import Tensor

from .scan_args import discretise_delta

logger = logging.getLogger(__name__)

EXTENSION_NAME = "videomamba_cpu_ops"
CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = [CSRC / name for name in ("module.cpp", "isa.cpp", "selective_scan_cpu.cpp", "bimamba_cpu.cpp")]
ISA_ENV_VAR = "VIDEOMAMBA_CPU_ISA"
# OpenMP makes at::parallel_for (inlined from ATen's headers) run the rows on torch's threads. The extension
# links libgomp.so.1 by name; torch, imported first, has already loaded its own libgomp.so.1, and the loader
# reuses that one, so there is a single OpenMP runtime. Apple's clang has no -fopenmp: serial there.
_OPENMP_FLAGS = ["-fopenmp"] if sys.platform.startswith("linux") else []
BUILD_FLAGS = ["-O3", "-Wno-psabi", *_OPENMP_FLAGS]
LINK_FLAGS = list(_OPENMP_FLAGS)

LANES = 8  # the C++ loops work on 8-lane vectors: N is zero-padded to a multiple of this
SCAN_CHUNK = 64  # steps between the states the fused mixer's scan saves (kChunk in csrc/bimamba_scan.h)

_lock = threading.Lock()
_module: Optional["FusedCpuKernel"] = None
_error: Optional[BaseException] = None


def build_key() -> str:
    """A hash of where the sources are (the checkout), the flags, torch and Python."""
    text = " ".join([str(CSRC.resolve()), "|", *BUILD_FLAGS, "|", *LINK_FLAGS, "|", torch.__version__, sys.version,
                     platform.machine()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_directory() -> Path:
    """Where the extension is compiled and cached: one folder per `build_key`."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "videomamba" / "torch_extensions"
    return base / f"{EXTENSION_NAME}-{build_key()}"


def _build() -> ModuleType:
    """Compile (or load from cache) the extension; raises whatever the toolchain raises."""
    from torch.utils.cpp_extension import load

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / f"{EXTENSION_NAME}.so").exists():
        logger.info("compiling the C++ CPU kernels into %s (about a minute, once per version of the sources)",
                    directory)
    start = time.perf_counter()
    module = load(
        name=EXTENSION_NAME,
        sources=[str(s) for s in SOURCES],
        extra_include_paths=[str(CSRC)],
        extra_cflags=BUILD_FLAGS,
        extra_ldflags=LINK_FLAGS,
        build_directory=str(directory),
        verbose=False,
    )
    if module.scan_chunk != SCAN_CHUNK:
        raise RuntimeError(f"{EXTENSION_NAME}: scan_chunk {module.scan_chunk} != SCAN_CHUNK {SCAN_CHUNK}")
    isa = os.environ.get(ISA_ENV_VAR, "").strip().lower()
    if isa:
        module.set_isa(isa)
    logger.info("loaded %s from %s in %.1f s; mixer kernels use %s (best on this CPU: %s)", EXTENSION_NAME,
                directory, time.perf_counter() - start, module.isa(), module.best_isa())
    return module


class FusedCpuKernel:
    """The compiled module behind the kernel interface of `scan_autograd`.

    Pads the state size N to a multiple of 8 with zeros (A = 0, B = C = 0 keep the padded
    states at exactly zero and out of y) and slices the padding off the results.
    """

    def __init__(self, module: ModuleType) -> None:
        self.module = module

    @staticmethod
    def _pad(A: Tensor, Bt: Tensor, Ct: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        extra = (-A.shape[-1]) % LANES
        if not extra:
            return A, Bt, Ct
        return F.pad(A, (0, extra)), F.pad(Bt, (0, extra)), F.pad(Ct, (0, extra))

    def discretise(self, delta: Tensor, delta_bias: Optional[Tensor], softplus: bool) -> Tensor:
        """Δ = softplus(delta + delta_bias) as fp32 contiguous (batch, d_inner, L), in one vectorised pass."""
        if not softplus:
            return discretise_delta(delta, delta_bias, softplus).contiguous()
        bias = delta.new_empty(0) if delta_bias is None else delta_bias.float()
        return self.module.delta_softplus(delta.float().contiguous(), bias)

    def fwd(self, u: Tensor, dt: Tensor, A: Tensor, Bt: Tensor, Ct: Tensor) -> Tuple[Tensor, Tensor]:
        y, last_state = self.module.fwd(u, dt, *self._pad(A, Bt, Ct))
        return y, last_state[..., :A.shape[-1]]

    def bwd(self, u: Tensor, dt: Tensor, A: Tensor, Bt: Tensor, Ct: Tensor, dy: Tensor) -> List[Tensor]:
        n_state = A.shape[-1]
        du, ddt, dA, dBt, dCt = self.module.bwd(u, dt, *self._pad(A, Bt, Ct), dy)
        return [du, ddt, dA[:, :n_state], dBt[..., :n_state], dCt[..., :n_state]]


def load_cpu_kernel() -> FusedCpuKernel:
    """Return the compiled kernel (with `fwd`/`bwd`), building it on first call.

    A failure is remembered: later calls re-raise it at once instead of recompiling.
    """
    global _module, _error
    with _lock:
        if _module is not None:
            return _module
        if _error is not None:
            raise RuntimeError(f"fused CPU selective scan unavailable: {_error}") from _error
        try:
            _module = FusedCpuKernel(_build())
        except Exception as exc:  # compiler missing, headers missing, build error...
            _error = exc
            raise RuntimeError(f"fused CPU selective scan unavailable: {exc}") from exc
        return _module


def reset_cpu_kernel() -> None:
    """Forget the loaded module or remembered failure (tests use it to retry a build)."""
    global _module, _error
    with _lock:
        _module = None
        _error = None
