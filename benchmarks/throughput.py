"""VideoMamba vs a joint space-time ViT: inference and training-step time and peak memory against frame count.

Every (model, frames, mode) runs in its own fresh process so each peak RSS belongs to one configuration;
the parent collects the results, prints one table with the VideoMamba/ViT ratios and writes a PNG plot.

    python benchmarks/throughput.py                                  # Ti and S, 8/16/32/64 frames
    python benchmarks/throughput.py --models tiny --frames 8 16      # a quick check
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

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from benchmarks.common import (
    MIB,
    current_rss_bytes,
    format_table,
    machine_description,
    run_isolated,
    time_call,
)
from utils.logging import setup_logging

logger = logging.getLogger(__name__)

# Model family -> (VideoMamba arch, ViT arch). The ViTs have DeiT-Ti/S widths and 12 layers.
FAMILIES = {
    "tiny": ("videomamba_tiny", "vit_tiny_joint"),
    "small": ("videomamba_small", "vit_small_joint"),
}
VIT_CONFIGS = {
    "vit_tiny_joint": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small_joint": dict(embed_dim=384, depth=12, num_heads=6),
}
NUM_CLASSES = 400


class JointSpaceTimeViT(nn.Module):
    """TimeSformer-style joint space-time attention baseline built from timm's ``VisionTransformer``.

    The T frames are tiled side by side into one (H, T*W) image, so timm's per-patch Conv2d embeds
    every frame separately (patches never straddle frames) and the model attends over 1 + T*(H/16)*(W/16)
    tokens with a learned (1, 1 + T*HW, C) position table: the same token count as VideoMamba.
    Input (B, 3, T, H, W) -> logits (B, num_classes).
    """

    def __init__(self, num_frames: int, img_size: int, embed_dim: int, depth: int, num_heads: int,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.vit = VisionTransformer(img_size=(img_size, img_size * num_frames), patch_size=16,
                                     embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                                     num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        tiled = x.permute(0, 1, 3, 2, 4).reshape(b, c, h, t * w)
        return self.vit(tiled)


def build_model(arch: str, frames: int, img_size: int) -> nn.Module:
    """A VideoMamba model through timm's registry, or the joint-attention ViT baseline."""
    if arch in VIT_CONFIGS:
        return JointSpaceTimeViT(frames, img_size, **VIT_CONFIGS[arch])
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


def run_worker(arch: str, frames: int, mode: str, args: argparse.Namespace) -> dict:
    """Time one configuration in this process; return the medians, RSS before the first step, backend."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    recorder = BackendRecorder()
    ops_logger = logging.getLogger("models.ops")
    ops_logger.setLevel(logging.INFO)
    ops_logger.addHandler(recorder)
    model = build_model(arch, frames, args.img_size)
    x = torch.randn(1, 3, frames, args.img_size, args.img_size)
    if mode == "infer":
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model(x)
    else:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        target = torch.zeros(1, dtype=torch.long)

        def step() -> None:
            loss = F.cross_entropy(model(x), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    gc.collect()
    setup_rss = current_rss_bytes()
    timing = time_call(step, args.repeats, args.warmup)
    return {
        "arch": arch, "frames": frames, "mode": mode, "median_s": timing.median, "best_s": timing.best,
        "times_s": timing.times, "cpu_median_s": timing.cpu_median, "setup_rss": setup_rss,
        "params": sum(p.numel() for p in model.parameters()),
        "backend": recorder.summary() if arch.startswith("videomamba") else "-",
    }


def run_child(arch: str, frames: int, mode: str, args: argparse.Namespace) -> dict | None:
    """Run one configuration in a fresh process; add its peak RSS. None when the child failed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", arch, str(frames), mode,
           "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--img_size", str(args.img_size),
           "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    child = run_isolated(cmd, timeout_s=args.timeout, env=env)
    lines = child.stdout.strip().splitlines()
    if child.returncode != 0 or not lines:
        logger.error("%s %d frames %s failed (exit %d)", arch, frames, mode, child.returncode)
        return None
    result = json.loads(lines[-1])
    result["peak_rss"] = child.peak_rss_bytes
    logger.info("%-16s %2d frames %-5s median %.3f s (cpu %.3f s)  peak RSS %.0f MiB (setup %.0f MiB)  "
                "backend %s", arch, frames, mode, result["median_s"], result["cpu_median_s"],
                result["peak_rss"] / MIB, result["setup_rss"] / MIB, result["backend"])
    return result


def _mib(result: dict | None, key: str) -> float | None:
    """Peak RSS ("peak") or peak above the set-up RSS ("step") in MiB; None for a failed run."""
    if result is None:
        return None
    return (result["peak_rss"] if key == "peak" else result["peak_rss"] - result["setup_rss"]) / MIB


def _seconds(result: dict | None, key: str = "median_s") -> float | None:
    return result[key] if result else None


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def _fmt(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "failed"


def results_table(results: dict, families: list[str], frames: list[int], modes: list[str]) -> str:
    """One row per (family, mode, frames): times, peak RSS, the step's own memory and the ratios."""
    headers = ["model", "mode", "frames", "VideoMamba s", "ViT s", "time VM/ViT", "VM cpu s", "ViT cpu s",
               "cpu VM/ViT", "VM peak MiB", "ViT peak MiB", "peak VM/ViT", "VM step MiB", "ViT step MiB",
               "step VM/ViT"]
    rows = []
    for family in families:
        vm_arch, vit_arch = FAMILIES[family]
        for mode in modes:
            for t in frames:
                if (vm_arch, t, mode) not in results:
                    continue
                vm, vit = results[(vm_arch, t, mode)], results[(vit_arch, t, mode)]
                row = [family, mode, t]
                for key in ("median_s", "cpu_median_s"):
                    row += [_fmt(_seconds(vm, key), ".3f"), _fmt(_seconds(vit, key), ".3f"),
                            _ratio(_seconds(vm, key), _seconds(vit, key))]
                for key in ("peak", "step"):
                    row += [_fmt(_mib(vm, key), ".0f"), _fmt(_mib(vit, key), ".0f"),
                            _ratio(_mib(vm, key), _mib(vit, key))]
                rows.append(row)
    return format_table(headers, rows)


def goal_lines(results: dict) -> list[str]:
    """The issue-3 goals for VideoMamba-Ti inference (64 vs 8 frames), checked on the measured numbers."""
    vm8, vm64 = results.get(("videomamba_tiny", 8, "infer")), results.get(("videomamba_tiny", 64, "infer"))
    vit64 = results.get(("vit_tiny_joint", 64, "infer"))
    if not (vm8 and vm64 and vit64):
        return ["goals: need tiny inference at 8 and 64 frames (--models tiny --frames 8 64)"]
    speedup = vit64["median_s"] / vm64["median_s"]
    growth = vm64["median_s"] / vm8["median_s"]
    lower = vm64["peak_rss"] < vit64["peak_rss"]
    return [
        f"goal Ti 64-frame inference >= 2x faster than ViT-Ti: ViT/VideoMamba time = {speedup:.2f} "
        f"({'met' if speedup >= 2 else 'NOT met'})",
        f"goal Ti 64-frame lower peak memory: {vm64['peak_rss'] / MIB:.0f} vs {vit64['peak_rss'] / MIB:.0f} MiB "
        f"peak RSS ({'met' if lower else 'NOT met'}); above set-up {_mib(vm64, 'step'):.0f} vs "
        f"{_mib(vit64, 'step'):.0f} MiB",
        f"goal Ti inference time 8 -> 64 frames grows <= 8.5x: {growth:.2f}x ({'met' if growth <= 8.5 else 'NOT met'})",
    ]


def plot(results: dict, families: list[str], frames: list[int], modes: list[str], out: Path, title: str) -> None:
    """Time, peak RSS and per-step memory against frames; solid = inference, dashed = training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = [("median time per step (s)", lambda r: r["median_s"]),
              ("peak RSS (MiB)", lambda r: r["peak_rss"] / MIB),
              ("peak RSS above set-up (MiB)", lambda r: max(r["peak_rss"] - r["setup_rss"], MIB) / MIB)]
    for ax, (label, value) in zip(axes, panels):
        for family in families:
            for arch, colour in zip(FAMILIES[family], ("tab:green", "tab:red")):
                for mode, style in (("infer", "-"), ("train", "--")):
                    if mode not in modes:
                        continue
                    pts = [(t, value(results[(arch, t, mode)])) for t in frames if results.get((arch, t, mode))]
                    if pts:
                        marker = "o" if family == "tiny" else "s"
                        ax.plot(*zip(*pts), style, marker=marker, color=colour, label=f"{arch} {mode}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(frames, [str(t) for t in frames])
        ax.set_xlabel("frames (batch 1)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "small"], choices=sorted(FAMILIES))
    parser.add_argument("--frames", nargs="+", type=int, default=[8, 16, 32, 64])
    parser.add_argument("--train-frames", "--train_frames", dest="train_frames", type=int, default=32,
                        help="time the training step only up to this many frames")
    parser.add_argument("--no-train", "--no_train", dest="no_train", action="store_true",
                        help="inference only")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds before a configuration is killed")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/throughput.png"), help="PNG plot path")
    parser.add_argument("--worker", nargs=3, metavar=("ARCH", "FRAMES", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.img_size % 16:
        parser.error(f"--img_size must be a multiple of the patch size 16, got {args.img_size}")
    if any(t < 1 for t in args.frames):
        parser.error(f"--frames must be positive, got {args.frames}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        arch, frames, mode = args.worker
        print(json.dumps(run_worker(arch, int(frames), mode, args)))
        return
    setup_logging()
    frames = sorted(set(args.frames))
    modes = ["infer"] if args.no_train else ["infer", "train"]
    logger.info("machine: %s", machine_description(args.threads))
    results = {}
    for family in args.models:
        for mode in modes:
            for t in frames:
                if mode == "train" and t > args.train_frames:
                    continue
                for arch in FAMILIES[family]:
                    results[(arch, t, mode)] = run_child(arch, t, mode, args)
    backends = sorted({r["backend"] for r in results.values() if r and r["backend"] != "-"})
    logger.info("VideoMamba scan backend: %s", ", ".join(backends) or "unknown")
    machine = machine_description(args.threads)
    plot(results, args.models, frames, modes, args.out,
         f"VideoMamba (green) vs joint space-time ViT (red), {args.img_size}², solid = inference, "
         f"dashed = training step; {machine}")
    print(f"Machine: {machine}; scan backend: {', '.join(backends) or 'unknown'}")
    print(f"Batch 1, {args.img_size}², median of {args.repeats} steps after {args.warmup} warm-up; "
          "time = inference forward (torch.inference_mode) or training step (forward + backward + AdamW), "
          "wall clock and process CPU time (all threads); "
          "peak = ru_maxrss of a fresh process per configuration (os.wait4); "
          "step = peak minus RSS after model/input set-up.")
    print(results_table(results, args.models, frames, modes))
    for line in goal_lines(results):
        print(line)
    print(f"Plot: {args.out}")


if __name__ == "__main__":
    main()
