"""Where a model's time and memory go: time per op and the allocator's peak, attributed to the ops that allocated
what is live at that moment, at several frame counts.

    python benchmarks/profile_model.py                                   # VideoMamba-Ti inference at 8, 16, 32, 64 frames
    python benchmarks/profile_model.py --mode train --frames 16          # a training step (forward, backward, AdamW)
    python benchmarks/profile_model.py --model vit_tiny_joint --frames 16 64    # the joint-attention ViT baseline

Each configuration runs in a fresh process (one warm-up step, then one step under ``torch.profiler`` with
``profile_memory``). Time per op is the profiler's self CPU time (summed over threads, so on 2 threads it can exceed
the wall time); the fused mixer's parts carry ``record_function`` labels (``bimamba.*``, ``models/ops/bimamba_cpu.py``).
Memory is the tensor allocator's: the live bytes over the step, from every allocation and free the profiler saw;
"peak" is their maximum above what was live before the step, and the table lists the ops whose allocations make up
that peak (the innermost op running when each live block was allocated). ``rss`` is the process's peak resident set
above its size before the step (the throughput benchmark's "step" memory), which also holds what the C library keeps
after a free and the pages of the first use.
"""
import sys
from pathlib import Path

# Make the repository root importable when run as `python benchmarks/profile_model.py`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import bisect
import json
import logging
import os
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

from benchmarks.common import MIB, current_rss_bytes, machine_description, peak_rss_bytes, run_isolated
from models.vit_joint import VIT_JOINT_SIZES, vit_joint
from utils.logging import setup_logging
from utils.table import format_table

logger = logging.getLogger(__name__)


def build(arch: str, frames: int, img_size: int) -> torch.nn.Module:
    """A VideoMamba model from timm's registry, or the joint-attention ViT baseline (``models/vit_joint.py``)."""
    if arch in VIT_JOINT_SIZES:
        return vit_joint(arch, frames, img_size)
    import timm

    import models  # noqa: F401  (registers the VideoMamba architectures with timm)

    return timm.create_model(arch, img_size=img_size, num_frames=frames, num_classes=400, drop_path_rate=0.0)


def step_function(model: torch.nn.Module, x: torch.Tensor, mode: str):
    """One inference forward (``infer``) or training step (``train``: forward, cross-entropy, backward, AdamW)."""
    if mode == "infer":
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model(x)
        return step
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = torch.zeros(x.shape[0], dtype=torch.long)

    def step() -> None:
        F.cross_entropy(model(x), target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def memory_peak(events) -> tuple[int, dict[str, int]]:
    """(peak live bytes above the start, bytes live at the peak per allocating op) from the profiler's events."""
    ops = defaultdict(list)  # thread -> [(start, end, name)]
    allocations = []
    for event in events:
        if event.name() == "[memory]":
            if event.device_type() == torch.device("cpu").type or str(event.device_type()).endswith("CPU"):
                allocations.append((event.start_ns(), event.nbytes(), event.start_thread_id()))
        elif event.duration_ns() > 0:
            ops[event.start_thread_id()].append((event.start_ns(), event.end_ns(), event.name()))
    for spans in ops.values():
        spans.sort()
    allocations.sort()

    def owner(time_ns: int, thread: int) -> str:
        spans = ops.get(thread, [])
        best, index = "(outside any op)", bisect.bisect_right(spans, (time_ns, float("inf"), "")) - 1
        for start, end, name in reversed(spans[max(0, index - 64):index + 1]):  # innermost: the latest start
            if start <= time_ns <= end:
                return name
        return best

    live, peak, peak_index, blocks = 0, 0, -1, []
    for index, (start, nbytes, thread) in enumerate(allocations):
        live += nbytes
        blocks.append((nbytes, start, thread))
        if live > peak:
            peak, peak_index = live, index
    by_op: dict[str, int] = defaultdict(int)
    # What is live at the peak: the allocations up to it whose size was not freed again by then (matched by size,
    # latest first, as a free reports the block's size).
    outstanding: dict[int, list] = defaultdict(list)
    for nbytes, start, thread in blocks[:peak_index + 1]:
        if nbytes > 0:
            outstanding[nbytes].append((start, thread))
        elif outstanding.get(-nbytes):
            outstanding[-nbytes].pop()
    for nbytes, items in outstanding.items():
        for start, thread in items:
            by_op[owner(start, thread)] += nbytes
    return peak, dict(by_op)


def run_worker(arch: str, frames: int, mode: str, args: argparse.Namespace) -> dict:
    """Profile one configuration in this process."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(arch, frames, args.img_size)
    x = torch.randn(1, 3, frames, args.img_size, args.img_size)
    step = step_function(model, x, mode)
    setup = current_rss_bytes()
    step()  # warm-up: the optimiser's state, the kernels' first use
    start = time.perf_counter()
    step()
    wall = time.perf_counter() - start
    rss = peak_rss_bytes() - setup  # before the profiler adds its own buffers
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    times = sorted(((e.key, e.self_cpu_time_total / 1e3) for e in prof.key_averages()), key=lambda kv: -kv[1])
    peak, by_op = memory_peak(prof.profiler.kineto_results.events())
    return {"wall_s": wall, "rss_mib": max(rss, 0) / MIB, "peak_mib": peak / MIB,
            "times_ms": times[:args.top], "total_ms": sum(t for _, t in times),
            "peak_by_op_mib": sorted(((k, v / MIB) for k, v in by_op.items()), key=lambda kv: -kv[1])[:args.top]}


def report(results: dict, args: argparse.Namespace) -> str:
    """One table of the step's totals, then per frame count the top ops by time and by memory at the peak."""
    lines = [format_table(["frames", "wall s", "rss MiB", "allocator peak MiB", "op self-CPU total ms"], [
        [f, f"{r['wall_s']:.3f}", f"{r['rss_mib']:.0f}", f"{r['peak_mib']:.0f}", f"{r['total_ms']:.0f}"]
        for f, r in results.items()])]
    for frames, r in results.items():
        rows = []
        for i in range(args.top):
            by_time = r["times_ms"][i] if i < len(r["times_ms"]) else ("", 0.0)
            by_memory = r["peak_by_op_mib"][i] if i < len(r["peak_by_op_mib"]) else ("", 0.0)
            rows.append([by_time[0], f"{by_time[1]:.1f}" if by_time[0] else "",
                         by_memory[0], f"{by_memory[1]:.1f}" if by_memory[0] else ""])
        lines.append(f"\n{args.model} {args.mode}, {frames} frames: the ops by self CPU time, and what is live at "
                     f"the allocator's peak ({r['peak_mib']:.0f} MiB) by the op that allocated it")
        lines.append(format_table(["op", "self CPU ms", "allocated by", "live at peak MiB"], rows))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="videomamba_tiny", help="a VideoMamba model or vit_tiny_joint/_small")
    parser.add_argument("--mode", default="infer", choices=["infer", "train"])
    parser.add_argument("--frames", nargs="+", type=int, default=[8, 16, 32, 64])
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=10, help="ops listed per table")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_worker(args.model, args.worker, args.mode, args)))
        return
    setup_logging()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env.setdefault("OMP_WAIT_POLICY", "passive")
    results = {}
    for frames in args.frames:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(frames), "--model", args.model,
               "--mode", args.mode, "--img_size", str(args.img_size), "--threads", str(args.threads),
               "--top", str(args.top)]
        child = run_isolated(cmd, timeout_s=1800, env=env)
        if child.returncode != 0:
            logger.error("%d frames failed (exit %d)", frames, child.returncode)
            continue
        results[frames] = json.loads(child.stdout.strip().splitlines()[-1])
        logger.info("%d frames: %.3f s, allocator peak %.0f MiB", frames, results[frames]["wall_s"],
                    results[frames]["peak_mib"])
    print(f"Machine: {machine_description(args.threads)}; OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}")
    print(report(results, args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
