"""The fused mixer in ONNX: two custom ops of the domain ``videomamba``, the exporter's translation of
``videomamba::bimamba_inner`` into them, and the ONNX Runtime library that runs them (``csrc/ort_bimamba.cpp``).

A block's mixer becomes standard MatMul / Split nodes for the projections around four custom nodes::

    x, z = Split(hidden @ in_proj^T)
    u_f = CausalConvSilu(x, conv_f)                     u_b = CausalConvSilu(x, conv_b, reverse=1)
    y_f = SelectiveScan(u_f, u_f @ x_proj_f^T, ...)     y = SelectiveScan(u_b, u_b @ x_proj_b^T, ..., y_f, z, reverse=1)
    out = y @ out_proj^T

so ONNX Runtime runs each scan as one call of the same C++ kernels as eager PyTorch, with its own GEMMs. Running
such a graph needs the library: ``SessionOptions.register_custom_ops_library(str(library_path()))``. It is a
standalone shared object (no torch, no OpenMP; ONNX Runtime >= 1.18), compiled with the system C++ compiler (``$CXX``,
else ``c++``) on first use into ``~/.cache/videomamba/ort_ops/`` (or ``$VIDEOMAMBA_ORT_OPS_DIR``), in a file named
by a hash of its sources and flags; ``python -m models.ops.ort_bimamba`` builds it and prints its path.
"""
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Dict, Optional

logger = logging.getLogger(__name__)

DOMAIN = "videomamba"
CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = [CSRC / "ort_bimamba.cpp", CSRC / "isa.cpp"]
HEADERS = ["ort_api.h", "bimamba_conv.h", "bimamba_scan.h", "denormals.h", "isa.h", "vec_math.h"]
FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fvisibility=hidden", "-Wno-psabi"]
DIR_ENV_VAR = "VIDEOMAMBA_ORT_OPS_DIR"

_lock = threading.Lock()
_path: Optional[Path] = None


class OrtLibraryError(RuntimeError):
    """The ONNX Runtime custom-op library could not be built."""


def compiler() -> str:
    """The C++ compiler: $CXX, else c++."""
    return os.environ.get("CXX", "c++")


def build_key() -> str:
    """A hash of the sources (and the headers they include), the compiler, its flags and the machine."""
    digest = hashlib.sha256(" ".join([compiler(), *FLAGS, platform.machine()]).encode())
    for path in [*SOURCES, *(CSRC / name for name in HEADERS)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def cache_directory() -> Path:
    """Where built libraries are kept: $VIDEOMAMBA_ORT_OPS_DIR, else ~/.cache/videomamba/ort_ops."""
    root = os.environ.get(DIR_ENV_VAR)
    return Path(root) if root else Path.home() / ".cache" / "videomamba" / "ort_ops"


def _compile(target: Path) -> None:
    """Compile the library to `target` (via a temporary file, so a concurrent build never sees half a file)."""
    cxx = compiler()
    if shutil.which(cxx) is None:
        raise OrtLibraryError(f"no C++ compiler {cxx!r} found (install g++, or set $CXX)")
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("compiling the ONNX Runtime custom-op library into %s (seconds, once per version of the sources)",
                target)
    handle, scratch = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    command = [cxx, *FLAGS, f"-I{CSRC}", *map(str, SOURCES), "-o", scratch]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        os.unlink(scratch)
        logger.error("%s", result.stderr)
        lines = result.stderr.splitlines()
        first = next((line for line in lines if "error" in line), lines[0] if lines else f"exit {result.returncode}")
        raise OrtLibraryError(f"compiling the ONNX Runtime custom-op library failed: {first.strip()}")
    os.replace(scratch, target)


def library_path() -> Path:
    """The custom-op library for this checkout's sources, built on first use; OrtLibraryError when it cannot be."""
    global _path
    with _lock:
        if _path is None or not _path.exists():
            target = cache_directory() / f"libvideomamba_ort_ops-{build_key()}.so"
            if not target.exists():
                _compile(target)
            _path = target
        return _path


# ---- ONNX export ------------------------------------------------------------------------------------------------

def _register_schemas() -> None:
    """Make the two ops known to onnx (its checker and onnxscript's exporter look them up there); idempotent."""
    import onnx.defs as defs

    if defs.has("SelectiveScan", DOMAIN):
        return
    tensor = [("T", ["tensor(float)"], "fp32 tensors")]
    reverse = defs.OpSchema.Attribute("reverse", defs.OpSchema.AttrType.INT, "1: run backwards in time",
                                      required=True)
    optional = defs.OpSchema.FormalParameterOption.Optional

    def param(name: str, description: str, option=defs.OpSchema.FormalParameterOption.Single):
        return defs.OpSchema.FormalParameter(name, "T", description, param_option=option)

    defs.register_schema(defs.OpSchema(
        "CausalConvSilu", DOMAIN, 1, "silu(causal depthwise conv1d(x)) on (batch, L, channels)",
        inputs=[param("x", "(batch, L, C)"), param("weight", "(C, width)"), param("bias", "(C,)", optional)],
        outputs=[param("y", "(batch, L, C)")], type_constraints=tensor, attributes=[reverse]))
    defs.register_schema(defs.OpSchema(
        "SelectiveScan", DOMAIN, 1, "(y_in + selective scan of u + D u) * silu(gate) on (batch, L, channels)",
        inputs=[param("u", "(batch, L, C)"), param("proj", "(batch, L, R + 2N): dt_low, B, C"),
                param("dt_weight", "(C, R)"), param("dt_bias", "(C,)"), param("A", "(C, N), <= 0"),
                param("D", "(C,)"), param("y_in", "(batch, L, C)", optional), param("gate", "(batch, L, C)", optional)],
        outputs=[param("y", "(batch, L, C)")], type_constraints=tensor, attributes=[reverse]))


def _translate_bimamba_inner(hidden, in_proj_weight, in_proj_bias, conv_weight, conv_bias, x_proj_weight,
                             dt_proj_weight, dt_proj_bias, A, D, conv_weight_b, conv_bias_b, x_proj_weight_b,
                             dt_proj_weight_b, dt_proj_bias_b, A_b, D_b, out_proj_weight, out_proj_bias, save):
    """onnxscript for one ``videomamba::bimamba_inner`` node (arguments as the op's; `save` is False when
    exporting); returns its outputs, [out]."""
    from onnxscript import opset18 as op
    from onnxscript.values import Opset

    custom = Opset(DOMAIN, 1)

    def linear(x, weight, bias=None):
        y = op.MatMul(x, op.Transpose(weight, perm=[1, 0]))
        return y if bias is None else op.Add(y, bias)

    x, z = op.Split(linear(hidden, in_proj_weight, in_proj_bias), num_outputs=2, axis=-1)
    u = custom.CausalConvSilu(x, conv_weight, conv_bias, reverse=0)
    y = custom.SelectiveScan(u, linear(u, x_proj_weight), dt_proj_weight, dt_proj_bias, A, D, reverse=0)
    u = custom.CausalConvSilu(x, conv_weight_b, conv_bias_b, reverse=1)
    y = custom.SelectiveScan(u, linear(u, x_proj_weight_b), dt_proj_weight_b, dt_proj_bias_b, A_b, D_b, y, z,
                             reverse=1)
    return [linear(y, out_proj_weight, out_proj_bias)]


def translation_table() -> Dict[object, Callable]:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``: the fused mixer op as the custom ops
    (registers their schemas with onnx first)."""
    import torch  # the package's __init__ has defined torch.ops.videomamba.bimamba_inner

    _register_schemas()
    return {torch.ops.videomamba.bimamba_inner.default: _translate_bimamba_inner}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        print(library_path())
    except (OrtLibraryError, OSError) as err:
        sys.exit(f"error: {err}")
