"""Export a trained VideoMamba classifier (or with ``--features`` its backbone, giving the pre-logits vector) at a fixed
clip size (1, 3, T, S, S) to ``torch.export`` (``.pt2``) or ONNX, then check the exported graph against eager PyTorch.

By default each block's mixer stays one fused op, run by the same C++ kernels as eager PyTorch, so the exported graph
is as fast as eager: in the ``.pt2`` program the custom op ``videomamba::bimamba_inner`` (loading the program needs
``import models.ops``, which registers it); in ONNX the projections as MatMul nodes around the custom ops
``videomamba.CausalConvSilu`` and ``videomamba.SelectiveScan``, which ONNX Runtime runs from a small library
(``models/ops/ort_bimamba.py``: ``SessionOptions.register_custom_ops_library(path)``, the path printed here; compiled on
first use). ``--portable`` instead traces the plain PyTorch formulation of the scan and conv (``models.ops`` backend
``torch``, the same function) into standard aten / ONNX ops, for runtimes without those ops: its chunked scan
(``models.ops.selective_scan_torch.chunked_linear_scan``, about 2·sqrt(L) steps per block and direction for L tokens)
is many times slower than eager at full size.

The check runs the exported graph (``torch.export.load`` or onnxruntime) on the first test view of ``--video``
(``tools/video_views.py``), prints the max relative error ``max |exported - eager| / max |eager|`` against the eager
model with its usual kernels (and the max absolute error), and exits 1 above ``--tolerance``. It also prints the
median and the fastest time per clip of both over ``--repeats`` runs (taking turns). ONNX needs the optional extras
onnx, onnxscript and onnxruntime (requirements-extras.txt).

Example (``--checkpoint``: a file with ``--model``, or a pretrained tag such as ``videomamba_tiny.k400_f8_res224``):
    python tools/export.py --model videomamba_tiny --checkpoint ckpt.pth --num_frames 8 --input_size 224 \\
        --video clip.mp4 --onnx videomamba_t.onnx
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python tools/x.py` from the repo root

from utils.omp import prefer_passive_wait, threads_spin

if __name__ == "__main__":  # before torch starts its OpenMP runtime; importing this module changes nothing
    prefer_passive_wait()

import torch
import torch.nn as nn

from datasets.readers import BACKENDS, VideoDecodeError, open_video
from models.ops import get_backend, set_backend
from models.ops.ort_bimamba import library_path, translation_table
from models.ops.selective_scan_cpu import load_cpu_kernel
from tools.checkpoint_model import CheckpointError, add_checkpoint_args, check_checkpoint_args, load_model
from tools.video_views import InputError, ViewPlan, iter_views
from utils.errors import UserError
from utils.logging import setup_logging

logger = logging.getLogger(__name__)

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
INSTALL_HINT = "pip install onnx onnxscript onnxruntime (or: pip install -r requirements-extras.txt)"
MIN_OPSET = 17


class PooledFeatures(nn.Module):
    """The backbone alone: video (B, 3, T, S, S) -> the (B, C) vector the classifier head sees."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


class RuntimeLibraryError(UserError):
    """The fast export's runtime library (the C++ kernels, the ONNX Runtime custom-op library) is unavailable."""


@contextlib.contextmanager
def scan_backend(portable: bool) -> Iterator[None]:
    """Inside the block the mixer runs the fused op on the C++ kernels, or with `portable` the plain PyTorch
    formulation of the scan and conv ops (the previous backend is restored afterwards)."""
    previous = get_backend()
    set_backend("torch" if portable else "cpp")
    try:
        yield
    finally:
        set_backend(previous)


def fast_runtime(flag: str) -> Path | None:
    """Check the fast export's runtime: the C++ kernels for both formats and, for ONNX, the custom-op library,
    whose path is returned (None for .pt2); RuntimeLibraryError with the reason when one is unavailable."""
    try:
        load_cpu_kernel()
        return library_path() if flag == "--onnx" else None
    except (RuntimeError, OSError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RuntimeLibraryError(f"{flag}: {reason}; --portable exports standard operators without it") from err


def first_view(video: str, num_frames: int, size: int, backend: str) -> torch.Tensor:
    """The first test view (sparse sampling, one segment, centre crop) of ``video`` as (1, 3, T, S, S)."""
    reader = open_video(video, backend=backend)
    try:
        _, view = next(iter_views(reader, ViewPlan(num_frames=num_frames, input_size=size, backend=backend)))
    finally:
        reader.close()
    return view.unsqueeze(0)


def export_pt2(module: nn.Module, x: torch.Tensor, path: Path,
               portable: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.export`` ``module`` at the shape of ``x`` to ``path``, the mixers as the fused op (or with `portable`
    as plain PyTorch ops); returns the reloaded program's forward."""
    with scan_backend(portable), torch.no_grad():
        program = torch.export.export(module, (x,))
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()

    def run(clip: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return loaded(clip)

    return run


def session_options(library: Path | None) -> "onnxruntime.SessionOptions":
    """ONNX Runtime's options for the check: the custom-op `library` (if any), as many threads as eager PyTorch, and
    idle threads that spin only where OpenMP's are told to (``OMP_WAIT_POLICY=active``; passive is this tool's
    default), so that neither side is timed with threads that wait differently on a shared machine."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if threads_spin() else "0")
    if library is not None:
        options.register_custom_ops_library(str(library))
    return options


def export_onnx(module: nn.Module, x: torch.Tensor, path: Path, opset: int, output_name: str,
                library: Path | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """ONNX export (the dynamo exporter) at the shape of ``x``, with the mixers as the custom ops that `library`
    runs, or as standard ops when it is None; returns an onnxruntime session's forward.

    The exporter's own graph optimiser is skipped (it took over 20 minutes on a 24-block model at 65 tokens when the
    scan was still traced token by token); onnxruntime optimises the graph when it loads it.
    """
    import onnx
    import onnxruntime

    table = None if library is None else translation_table()
    with scan_backend(library is None), torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
        torch.onnx.export(module, (x,), str(path), dynamo=True, opset_version=opset, input_names=["video"],
                          output_names=[output_name], external_data=False, optimize=False, verbose=False,
                          custom_translation_table=table)
    onnx.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), session_options(library), providers=["CPUExecutionProvider"])

    def run(clip: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"video": clip.numpy()})[0])

    return run


def runtime_needs(flag: str, portable: bool, library: Path | None) -> str:
    """What running the exported file needs, in words."""
    if portable:
        return "standard operators only"
    if flag == "--pt2":
        return "the videomamba::bimamba_inner op: `import models.ops` before torch.export.load"
    return f"the videomamba custom ops: SessionOptions.register_custom_ops_library({str(library)!r})"


def max_relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (shapes must agree)."""
    if got.shape != want.shape:
        raise ValueError(f"exported output has shape {tuple(got.shape)}, eager {tuple(want.shape)}")
    return float((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-12))


def timings_ms(fns: Sequence[Callable[[], object]], repeats: int) -> list[tuple[float, float]]:
    """(median, fastest) wall time in milliseconds of each of ``fns`` over ``repeats`` runs, after one warm-up run of
    each; the functions take turns, so a load that comes and goes on the machine slows them alike (the fastest run is
    the figure least disturbed by it)."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [(1000 * statistics.median(spent), 1000 * min(spent)) for spent in times]


def get_parser() -> argparse.ArgumentParser:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_args(parser)
    parser.add_argument("--num_frames", type=int, required=True, help="T of the fixed input (1, 3, T, S, S)")
    parser.add_argument("--input_size", type=int, required=True, help="S of the fixed input (1, 3, T, S, S)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--onnx", default=None, help="write an ONNX model here (needs onnx, onnxscript, onnxruntime)")
    target.add_argument("--pt2", default=None, help="write a torch.export program here")
    parser.add_argument("--features", action="store_true", help="export the backbone: output (1, C) features")
    parser.add_argument("--portable", action="store_true",
                        help="standard operators only (the scan traced as PyTorch ops), for runtimes without the "
                             "videomamba ops; many times slower than eager at full size")
    parser.add_argument("--video", required=True, help="a real video whose first test view checks the export")
    parser.add_argument("--video_backend", choices=BACKENDS, default="auto")
    parser.add_argument("--opset", type=int, default=18, help=f"ONNX opset (>= {MIN_OPSET})")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted max relative error")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of eager and exported model (0: none)")
    return parser


def run(args: argparse.Namespace) -> float:
    """Export, check, time; returns the max relative error."""
    check_checkpoint_args(args)
    if not Path(args.video).is_file():
        raise InputError(f"--video {args.video}: no such file")
    if args.onnx is not None and args.opset < MIN_OPSET:
        raise InputError(f"--opset {args.opset}: must be >= {MIN_OPSET}")
    flag = "--onnx" if args.onnx is not None else "--pt2"
    library = None if args.portable else fast_runtime(flag)
    model, _ = load_model(args.model, args.checkpoint, args.num_frames, args.input_size, args.model_key,
                          args.trust_checkpoint)
    module = PooledFeatures(model).eval() if args.features else model
    x = first_view(args.video, args.num_frames, args.input_size, args.video_backend)
    with torch.no_grad():
        want = module(x)
    path = Path(args.onnx or args.pt2)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.onnx is not None:
        exported = export_onnx(module, x, path, args.opset, "features" if args.features else "logits", library)
        runtime = "onnxruntime"
    else:
        exported = export_pt2(module, x, path, args.portable)
        runtime = "torch.export"
    seconds = time.perf_counter() - start
    got = exported(x)
    error = max_relative_error(got, want)
    print(f"exported {path} ({path.stat().st_size / 2 ** 20:.1f} MiB) in {seconds:.1f} s: input (1, 3, "
          f"{args.num_frames}, {args.input_size}, {args.input_size}) -> {'features' if args.features else 'logits'} "
          f"{tuple(want.shape)}")
    print(f"runtime: {runtime_needs(flag, args.portable, library)}")
    print(f"max relative error of {runtime} vs eager PyTorch on {args.video}: {error:.3g} "
          f"(tolerance {args.tolerance:g}; max absolute error {float((got - want).abs().max()):.3g})")
    if args.repeats > 0:
        with torch.no_grad():
            (eager_ms, eager_min), (exported_ms, exported_min) = timings_ms([lambda: module(x), lambda: exported(x)],
                                                                            args.repeats)
        print(f"time per clip over {args.repeats} runs, median / fastest: eager PyTorch {eager_ms:.1f} / "
              f"{eager_min:.1f} ms, {runtime} {exported_ms:.1f} / {exported_min:.1f} ms "
              f"({torch.get_num_threads()} torch threads)")
    return error


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: 0 when the exported graph matches, 1 above --tolerance, 2 with a one-line error."""
    args = get_parser().parse_args(argv)
    if args.onnx is not None:
        missing = []
        for name in ONNX_PACKAGES:
            try:
                importlib.import_module(name)
            except ImportError:
                missing.append(name)
        if missing:
            print(f"export.py: error: --onnx needs {', '.join(missing)}, not installed; {INSTALL_HINT}",
                  file=sys.stderr)
            return 2
    setup_logging()
    for noisy in ("onnxscript", "onnx_ir"):  # the ONNX exporter's optimiser logs every rewrite at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        error = run(args)
    except (InputError, CheckpointError, VideoDecodeError, UserError, FileNotFoundError, ValueError) as err:
        print(f"export.py: error: {err}", file=sys.stderr)
        return 2
    if not error <= args.tolerance:
        print(f"export.py: error: max relative error {error:.3g} is above --tolerance {args.tolerance:g}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
