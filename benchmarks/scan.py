"""Selective-scan benchmark: fused C++ vs sequential reference vs our PyTorch path vs mambapy.pscan.

One table, all cells measured in this run: forward time (no_grad), forward+backward time, and the
peak memory of each. Every cell runs in a fresh subprocess so that its peak resident set size is
its own: "peak MB" is the growth of ru_maxrss (peak RSS) over the RSS with the inputs allocated,
measured on the first call of each phase (before any timing repeats). Shapes: batch 1, N 16,
d_inner = 2 x embed (Ti 384, S 768, M 1152), L = T*196 + 1 (224^2, patch 16, one cls token),
one direction of one layer. Times are medians over --repeats calls after one warm-up call (the
reference's fwd+bwd: its single call), as wall-clock and as CPU time (process_time summed over
threads: less sensitive to other jobs on the cores, but it counts OpenMP spin-waiting).
`err` is the forward output's max relative error against selective_scan_ref on the same inputs.

    python benchmarks/scan.py --widths 384 --frames 8              # Ti 8x224, all methods
    python benchmarks/scan.py --skip-ref --csv scan.csv            # full grid without the reference

On a machine shared with other jobs, prefix OMP_WAIT_POLICY=passive: OpenMP's default busy-wait
between parallel regions then steals the cores the other thread needs (measured 4x slower here).
"""
import argparse
import csv
import json
import logging
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

# Run as `python benchmarks/scan.py` from the repo root: make the project packages importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models import ops  # noqa: E402
from models.ops.scan_inputs import random_scan_inputs  # noqa: E402
from models.ops.selective_scan_cpu import load_cpu_kernel  # noqa: E402
from utils.table import format_table  # noqa: E402

logger = logging.getLogger("benchmarks.scan")

METHODS = ("cpp", "torch", "pscan", "ref")
WIDTH_NAMES = {384: "Ti", 768: "S", 1152: "M"}
N_STATE = 16


def pscan_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The same selective scan built on mambapy's Blelloch parallel scan (tensors (B, L, D, N))."""
    from mambapy.pscan import pscan

    dt = delta + delta_bias[:, None] if delta_bias is not None else delta
    dt = F.softplus(dt) if delta_softplus else dt
    decay = torch.exp(dt.transpose(1, 2).unsqueeze(-1) * A)  # (B, L, D, N)
    drive = (dt * u).transpose(1, 2).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2)  # (B, L, D, N)
    hs = pscan(decay, drive)
    y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)  # (B, D, L)
    if D is not None:
        y = y + u * D[:, None]
    return y * F.silu(z) if z is not None else y


def method_fn(method: str) -> Callable:
    if method == "pscan":
        return pscan_scan
    if method == "cpp":
        load_cpu_kernel()  # fail loudly here rather than time a silent fallback
    ops.set_backend(method)
    return ops.selective_scan_fn


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(method: str, width: int, length: int, repeats: int, threads: int) -> Dict[str, float]:
    """Measure one cell in this (fresh) process."""
    torch.set_num_threads(threads)
    fn = method_fn(method)
    inputs = random_scan_inputs(1, width, length, N_STATE, seed=0)
    leaves = {k: v.requires_grad_() for k, v in inputs.items()}
    input_mb = sum(v.numel() * v.element_size() for v in inputs.values()) / 2**20

    def forward():
        with torch.no_grad():
            return fn(**leaves, delta_softplus=True)

    def forward_backward():
        fn(**leaves, delta_softplus=True).sum().backward()
        for v in leaves.values():
            v.grad = None

    def timed(call: Callable) -> tuple:
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        return time.perf_counter() - wall, time.process_time() - cpu

    base = peak_rss_mb()
    out = forward()  # first calls: memory and warm-up
    fwd_peak = peak_rss_mb() - base
    first_fwdbwd = timed(forward_backward)
    fwdbwd_peak = peak_rss_mb() - base
    fwd_times = [timed(forward) for _ in range(max(repeats, 1))]
    # The reference's backward takes tens of seconds: its first call is its only timing.
    bwd_times = [timed(forward_backward) for _ in range(max(repeats, 1))] if method != "ref" else [first_fwdbwd]
    with torch.no_grad():
        want = ops.selective_scan_ref(**inputs, delta_softplus=True)
    err = ((out - want).abs().max() / want.abs().max()).item()
    return {
        "fwd_s": statistics.median(t[0] for t in fwd_times),
        "fwdbwd_s": statistics.median(t[0] for t in bwd_times),
        "fwd_cpu_s": statistics.median(t[1] for t in fwd_times),
        "fwdbwd_cpu_s": statistics.median(t[1] for t in bwd_times),
        "fwd_peak_mb": fwd_peak,
        "fwdbwd_peak_mb": fwdbwd_peak,
        "input_mb": input_mb,
        "err": err,
    }


def run_cell(method: str, width: int, length: int, repeats: int, threads: int) -> Dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", method, str(width), str(length),
           "--repeats", str(repeats), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark cell {method} d_inner={width} L={length} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def results_table(rows: List[Dict]) -> str:
    header = ["model", "frames", "L", "method", "fwd s", "fwd+bwd s", "fwd cpu s", "fwd+bwd cpu s",
              "fwd peak MB", "fwd+bwd peak MB", "inputs MB", "fwd+bwd vs pscan", "err"]
    return format_table(header, [[
        r["model"], r["frames"], r["L"], r["method"], f"{r['fwd_s']:.4f}", f"{r['fwdbwd_s']:.4f}",
        f"{r['fwd_cpu_s']:.4f}", f"{r['fwdbwd_cpu_s']:.4f}",
        f"{r['fwd_peak_mb']:.1f}", f"{r['fwdbwd_peak_mb']:.1f}", f"{r['input_mb']:.1f}",
        f"{r['speedup_vs_pscan']:.1f}x" if r.get("speedup_vs_pscan") else "-", f"{r['err']:.1e}",
    ] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[384, 768, 1152], help="d_inner values")
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--skip-ref", action="store_true", help="leave out the sequential reference")
    parser.add_argument("--ref-max-frames", type=int, default=8,
                        help="run the reference only up to this many frames (its backward is very slow)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per phase (after one untimed call)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each cell")
    parser.add_argument("--csv", type=Path, help="also write the table here")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "WIDTH", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        method, width, length = args.worker
        print(json.dumps(worker(method, int(width), int(length), args.repeats, args.threads)))
        return

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    load_cpu_kernel()
    logger.info("fused kernel ready in %.1f s (build or cache load); cpu threads per cell: %d",
                time.perf_counter() - start, args.threads)
    rows = []
    for width in args.widths:
        for frames in args.frames:
            length = frames * 196 + 1
            cells = {}
            for method in args.methods:
                if method == "ref" and (args.skip_ref or frames > args.ref_max_frames):
                    continue
                cells[method] = run_cell(method, width, length, args.repeats, args.threads)
                logger.info("%s d_inner=%d L=%d %s: %s", WIDTH_NAMES.get(width, width), width, length, method,
                            cells[method])
            for method, cell in cells.items():
                pscan_time = cells.get("pscan", {}).get("fwdbwd_s")
                rows.append({"model": WIDTH_NAMES.get(width, str(width)), "frames": frames, "L": length,
                             "method": method, **cell,
                             "speedup_vs_pscan": pscan_time / cell["fwdbwd_s"] if pscan_time else None})
    print(results_table(rows))
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
