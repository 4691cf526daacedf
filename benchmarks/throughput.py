"""VideoMamba vs a joint space-time ViT: training-step and inference time, achieved GFLOP/s and step memory.

Every (model, frames, mode, condition) runs in its own fresh process so each peak RSS belongs to one configuration;
the parent collects the results, prints the CPU (model, family/model numbers, ISA), one table with the ViT/VideoMamba
speed-ups, the goals of issue 23 with pass/fail, and writes a PNG plot. Conditions: "idle" (nothing else running),
"busy" (beside one competing busy-looping process), "compiled" (VideoMamba under torch.compile; the compilation is
not timed) and "bf16" (both models under bf16 autocast; VideoMamba's fp32 run beside it).

    python benchmarks/throughput.py            # every row, 3 timed steps each
    python benchmarks/throughput.py --quick    # the goals' rows only (no busy or compiled rows), under 3 minutes

Children run with OMP_WAIT_POLICY=passive (``--omp-wait-policy``), as entry scripts should set it before torch
starts: with libgomp's default spinning, each of the many parallel regions of a step waits a scheduler slice for
a worker whose core another process holds (see the README's Performance section).
"""
import sys
from pathlib import Path

# Make the repository root importable when run as `python benchmarks/throughput.py`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import gc
import json
import logging
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.common import MIB, busy_neighbour, current_rss_bytes, machine_description, run_isolated, time_call
from benchmarks.throughput_report import Row, goal_lines, plot, results_table
from models.vit_joint import VIT_JOINT_SIZES, vit_joint
from utils.logging import setup_logging

logger = logging.getLogger(__name__)

# Model family -> (VideoMamba arch, ViT arch of models/vit_joint.py).
FAMILIES = {
    "tiny": ("videomamba_tiny", "vit_tiny_joint"),
    "small": ("videomamba_small", "vit_small_joint"),
}
NUM_CLASSES = 400


def build_model(arch: str, frames: int, img_size: int) -> nn.Module:
    """A VideoMamba model through timm's registry, or the joint-attention ViT baseline."""
    if arch in VIT_JOINT_SIZES:
        return vit_joint(arch, frames, img_size, num_classes=NUM_CLASSES)
    import timm

    import models  # noqa: F401  (registers the VideoMamba architectures with timm)

    return timm.create_model(arch, img_size=img_size, num_frames=frames, num_classes=NUM_CLASSES,
                             drop_path_rate=0.0)


class BackendRecorder(logging.Handler):
    """Collects which implementation each VideoMamba op announced (``models.ops`` logs it once per op)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.chosen: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.args, tuple) and len(record.args) >= 2 and "backend" in str(record.msg):
            self.chosen[str(record.args[0])] = str(record.args[1])

    def summary(self) -> str:
        return ", ".join(f"{op}={name}" for op, name in sorted(self.chosen.items())) or "unknown"


def run_worker(arch: str, frames: int, mode: str, condition: str, args: argparse.Namespace) -> dict:
    """Time one configuration in this process; return the medians, RSS before the first step, backend."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    recorder = BackendRecorder()
    ops_logger = logging.getLogger("models.ops")
    ops_logger.setLevel(logging.INFO)
    ops_logger.addHandler(recorder)
    model = build_model(arch, frames, args.img_size)
    compiled = condition == "compiled"
    run = torch.compile(model) if compiled else model
    x = torch.randn(1, 3, frames, args.img_size, args.img_size)
    precision = torch.autocast("cpu", dtype=torch.bfloat16, enabled=condition == "bf16")
    if mode == "infer":
        model.eval()

        def step() -> None:
            with torch.inference_mode() if not compiled else torch.no_grad(), precision:
                run(x)
    else:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        target = torch.zeros(1, dtype=torch.long)

        def step() -> None:
            with precision:
                loss = F.cross_entropy(run(x), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    compile_s = None
    if compiled:  # the first call compiles; it is reported, not timed with the steps
        start = time.perf_counter()
        step()
        compile_s = time.perf_counter() - start
    gc.collect()
    setup_rss = current_rss_bytes()
    timing = time_call(step, args.repeats, args.warmup)
    return {
        "median_s": timing.median, "cpu_median_s": timing.cpu_median, "times_s": timing.times,
        "setup_rss": setup_rss, "compile_s": compile_s,
        "backend": recorder.summary() if arch.startswith("videomamba") else "-",
    }


def run_child(arch: str, frames: int, mode: str, condition: str, args: argparse.Namespace) -> dict | None:
    """Run one configuration in a fresh process (beside a busy process for "busy"); add its peak RSS."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", arch, str(frames), mode, condition,
           "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--img_size", str(args.img_size),
           "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    with busy_neighbour(condition == "busy"):
        child = run_isolated(cmd, timeout_s=args.timeout, env=env)
    lines = child.stdout.strip().splitlines()
    if child.returncode != 0 or not lines:
        logger.error("%s %d frames %s (%s) failed (exit %d)", arch, frames, mode, condition, child.returncode)
        return None
    result = json.loads(lines[-1])
    result["peak_rss"] = child.peak_rss_bytes
    logger.info("%-16s %2d frames %-5s %-8s median %.3f s (cpu %.3f s)  peak RSS %.0f MiB (setup %.0f MiB)  "
                "backend %s", arch, frames, mode, condition, result["median_s"], result["cpu_median_s"],
                result["peak_rss"] / MIB, result["setup_rss"] / MIB, result["backend"])
    return result


def forward_gflop(arch: str, frames: int, img_size: int) -> float:
    """Forward GFLOPs (1 multiply-add = 1 FLOP) from tools/flops.py, counted on the meta device."""
    from tools.flops import count_flops

    model = build_model(arch, frames, img_size).to("meta")
    return count_flops(model, torch.empty(1, 3, frames, img_size, img_size, device="meta")).total / 1e9


def peak_gflops(threads: int) -> tuple[float, str]:
    """The machine's peak in G multiply-adds/s for `threads` threads, and how it was obtained."""
    from models.ops.selective_scan_cpu import load_cpu_kernel

    ext = load_cpu_kernel().module
    per_core = ext.fma_rate() / 1e9
    return threads * per_core, (f"peak = {threads} threads x {per_core:.1f} G fp32 multiply-adds/s per core, "
                                f"measured by a register-only loop of independent {ext.isa()} FMAs "
                                f"(FMA width x FMA units x clock)")


def plan(args: argparse.Namespace) -> list[Row]:
    """The configurations to run, VideoMamba and ViT for each (compiled: VideoMamba only)."""
    rows = []
    for family in args.models:
        for mode, frames in (("train", args.train_frames), ("infer", args.infer_frames)):
            rows += [Row(family, mode, t, "idle") for t in sorted(set(frames))]
        if not args.no_busy:
            rows += [Row(family, "infer", t, "busy") for t in args.busy_frames]
        if not args.no_bf16:
            rows += [Row(family, mode, t, "bf16") for mode, t in (("train", min(args.train_frames)),
                                                                  ("infer", max(args.infer_frames)))]
        if not args.no_compile:
            rows += [Row(family, mode, t, "compiled") for mode, t in (("train", min(args.train_frames)),
                                                                      ("infer", max(args.infer_frames)))]
    return rows


def archs_to_run(row: Row, quick: bool) -> tuple[str, ...]:
    """VideoMamba and the ViT, or VideoMamba alone for a compiled row (compared with the eager ViT) and, in --quick,
    for the 8-frame inference row (only the growth goal reads it)."""
    vm_only = row.condition == "compiled" or (quick and row.mode == "infer" and row.frames == 8)
    return FAMILIES[row.family][:1 if vm_only else 2]


# The rows the goals need (the infer rows at 8 frames: only VideoMamba's is used, for the growth goal).
QUICK = dict(train_frames=[16], infer_frames=[8, 64], no_busy=True, no_compile=True, repeats=2, warmup=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny"], choices=sorted(FAMILIES))
    parser.add_argument("--train-frames", "--train_frames", dest="train_frames", nargs="+", type=int,
                        default=[16, 32, 64], help="frame counts of the training-step rows")
    parser.add_argument("--infer-frames", "--infer_frames", dest="infer_frames", nargs="+", type=int,
                        default=[8, 16, 32, 64], help="frame counts of the inference rows")
    parser.add_argument("--busy-frames", "--busy_frames", dest="busy_frames", nargs="+", type=int, default=[64],
                        help="inference rows repeated beside one busy process")
    parser.add_argument("--no-busy", "--no_busy", dest="no_busy", action="store_true",
                        help="skip the rows beside a busy process")
    parser.add_argument("--no-compile", "--no_compile", dest="no_compile", action="store_true",
                        help="skip the torch.compile rows")
    parser.add_argument("--no-bf16", "--no_bf16", dest="no_bf16", action="store_true",
                        help="skip the bf16 autocast rows")
    parser.add_argument("--quick", action="store_true",
                        help="only the rows the goals need, 2 timed steps each (no busy or compiled rows)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--omp-wait-policy", "--omp_wait_policy", dest="omp_wait_policy", default="passive",
                        choices=["passive", "active", ""], help="OMP_WAIT_POLICY of the children ('' = inherit)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds before a configuration is killed")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/throughput.png"), help="PNG plot path")
    parser.add_argument("--worker", nargs=4, metavar=("ARCH", "FRAMES", "MODE", "CONDITION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    if args.img_size % 16:
        parser.error(f"--img_size must be a multiple of the patch size 16, got {args.img_size}")
    if any(t < 1 for t in (*args.train_frames, *args.infer_frames, *args.busy_frames)):
        parser.error("frame counts must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        arch, frames, mode, condition = args.worker
        print(json.dumps(run_worker(arch, int(frames), mode, condition, args)))
        return
    setup_logging()
    machine = machine_description(args.threads)
    peak, peak_how = peak_gflops(args.threads)
    logger.info("machine: %s; %s", machine, peak_how)
    rows = plan(args)
    flops = {}
    results = {}
    for row in rows:
        for arch in archs_to_run(row, args.quick):
            key = (arch, row.frames)
            if key not in flops:
                flops[key] = forward_gflop(arch, row.frames, args.img_size)
            results[(arch, row.frames, row.mode, row.condition)] = run_child(arch, row.frames, row.mode,
                                                                             row.condition, args)
    backends = sorted({r["backend"] for r in results.values() if r and r["backend"] != "-"})
    plot(results, FAMILIES, args.models, args.out,
         f"VideoMamba (green) vs joint space-time ViT (red), {args.img_size}², solid = inference, "
         f"dashed = training step; {machine}")
    print(f"Machine: {machine}; OMP_WAIT_POLICY={args.omp_wait_policy or 'inherited'}; "
          f"VideoMamba backend: {', '.join(backends) or 'unknown'}")
    print(f"{peak_how}: {peak:.0f} GFLOP/s (1 FLOP = 1 multiply-add here and below)")
    print(f"Batch 1, {args.img_size}², median of {args.repeats} steps after {args.warmup} warm-up; "
          "time = inference forward or training step (forward + cross-entropy + backward + AdamW), wall clock; "
          "speed-up = ViT time / VideoMamba time; GFLOP/s = tools/flops.py forward count (x3 for a training "
          "step) / time, recomputation not counted; peak = ru_maxrss of a fresh process per configuration; "
          "step = peak minus the RSS after model/input set-up.")
    print(results_table(results, rows, FAMILIES, flops, peak))
    for line in goal_lines(results):
        print(line)
    print(f"Plot: {args.out}")


if __name__ == "__main__":
    main()
