"""Table, goal lines and plot of benchmarks/throughput.py from its per-configuration results.

A result is keyed (arch, frames, mode, condition) and holds median_s, peak_rss, setup_rss (bytes) and, for
compiled runs, compile_s; None marks a configuration that failed. Conditions: "idle", "busy" (beside one busy
process), "compiled" (torch.compile) and "bf16" (bf16 autocast; VideoMamba's goal compares it with its fp32 "idle" run).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import MIB
from utils.table import format_table

TRAIN_FLOPS_FACTOR = 3  # forward + backward (twice the forward's multiply-adds)


@dataclass(frozen=True)
class Row:
    """One line of the table: both models of `family` (VideoMamba only when compiled)."""

    family: str
    mode: str  # "train" or "infer"
    frames: int
    condition: str  # "idle", "busy", "compiled" or "bf16"


@dataclass(frozen=True)
class Goal:
    """One goal of issue 23, checked on the table's numbers.

    kind: "speed" (ViT time / VideoMamba time >= bound), "memory" (VideoMamba step memory / ViT's <= bound),
    "growth" (VideoMamba time at `frames` / time at `base_frames` <= bound), "bf16" (bf16 time / fp32 time <= bound).
    """

    text: str
    kind: str
    mode: str
    frames: int
    bound: float
    condition: str = "idle"
    base_frames: int = 0


GOALS = [
    Goal("Ti training step 16x224: >= 2.5x faster than ViT-Ti", "speed", "train", 16, 2.5),
    Goal("Ti training step 16x224: step memory <= 0.75x ViT-Ti's", "memory", "train", 16, 0.75),
    Goal("Ti inference 64x224: >= 5.5x faster than ViT-Ti", "speed", "infer", 64, 5.5),
    Goal("Ti inference 64x224 beside one busy process: >= 4x faster than ViT-Ti", "speed", "infer", 64, 4.0,
         condition="busy"),
    Goal("Ti inference 64x224: peak memory above set-up <= ViT-Ti's", "memory", "infer", 64, 1.0),
    Goal("Ti inference time 8 -> 64 frames: <= 8.5x (linear: 8x)", "growth", "infer", 64, 8.5, base_frames=8),
    Goal("Ti training step 16x224 under bf16 autocast: not slower than fp32", "bf16", "train", 16, 1.0,
         condition="bf16"),
    Goal("Ti inference 64x224 under bf16 autocast: not slower than fp32", "bf16", "infer", 64, 1.0,
         condition="bf16"),
]


def _step_mib(result: dict | None) -> float | None:
    return None if result is None else (result["peak_rss"] - result["setup_rss"]) / MIB


def _fmt(value: float | None, spec: str) -> str:
    return "failed" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def _gflops(result: dict | None, gflop: float, mode: str, peak: float) -> str:
    if result is None:
        return "-"
    rate = gflop * (TRAIN_FLOPS_FACTOR if mode == "train" else 1) / result["median_s"]
    return f"{rate:.1f} ({100 * rate / peak:.0f}%)"


def results_table(results: dict, rows: list[Row], families: dict, flops: dict, peak: float) -> str:
    """One line per Row: times, speed-up, achieved GFLOP/s (share of peak), step and peak memory."""
    headers = ["model", "mode", "frames", "condition", "VideoMamba s", "ViT s", "speed-up", "VM GFLOP/s",
               "ViT GFLOP/s", "VM step MiB", "ViT step MiB", "step VM/ViT", "VM peak MiB", "ViT peak MiB", "notes"]
    lines = []
    for row in rows:
        vm_arch, vit_arch = families[row.family]
        vm = results.get((vm_arch, row.frames, row.mode, row.condition))
        # A compiled VideoMamba row is compared with the eager ViT of the same configuration.
        vit_condition = "idle" if row.condition == "compiled" else row.condition
        vit = results.get((vit_arch, row.frames, row.mode, vit_condition))
        vm_s, vit_s = (None if r is None else r["median_s"] for r in (vm, vit))
        notes = ""
        eager = results.get((vm_arch, row.frames, row.mode, "idle"))
        if row.condition == "compiled":
            notes = (f"eager {_fmt(eager and eager['median_s'], '.3f')} s; "
                     f"compile {_fmt(vm and vm['compile_s'], '.0f')} s")
        elif row.condition == "bf16":
            notes = f"fp32 {_fmt(eager and eager['median_s'], '.3f')} s"
        lines.append([row.family, row.mode, row.frames, row.condition, _fmt(vm_s, ".3f"), _fmt(vit_s, ".3f"),
                      _ratio(vit_s, vm_s), _gflops(vm, flops[(vm_arch, row.frames)], row.mode, peak),
                      _gflops(vit, flops.get((vit_arch, row.frames), 0.0), row.mode, peak),
                      _fmt(_step_mib(vm), ".0f"), _fmt(_step_mib(vit), ".0f"), _ratio(_step_mib(vm), _step_mib(vit)),
                      _fmt(vm and vm["peak_rss"] / MIB, ".0f"), _fmt(vit and vit["peak_rss"] / MIB, ".0f"), notes])
    return format_table(headers, lines)


def _measure(goal: Goal, results: dict) -> tuple[float, str] | None:
    """The goal's measured value and how it was formed, or None when a run it needs is missing."""
    vm = results.get(("videomamba_tiny", goal.frames, goal.mode, goal.condition))
    other = {"speed": ("vit_tiny_joint", goal.frames, goal.condition), "memory": ("vit_tiny_joint", goal.frames, "idle"),
             "growth": ("videomamba_tiny", goal.base_frames, "idle"), "bf16": ("videomamba_tiny", goal.frames, "idle")}
    arch, frames, condition = other[goal.kind]
    base = results.get((arch, frames, goal.mode, condition))
    if vm is None or base is None:
        return None
    if goal.kind == "speed":
        return base["median_s"] / vm["median_s"], f"ViT/VideoMamba time = {base['median_s']:.3f} / {vm['median_s']:.3f} s"
    if goal.kind == "memory":
        vm_mib, vit_mib = _step_mib(vm), _step_mib(base)
        return vm_mib / vit_mib, f"VideoMamba/ViT memory = {vm_mib:.0f} / {vit_mib:.0f} MiB"
    label = f"{goal.frames}/{goal.base_frames} frames" if goal.kind == "growth" else "bf16/fp32"
    return vm["median_s"] / base["median_s"], f"time {label} = {vm['median_s']:.3f} / {base['median_s']:.3f} s"


def goal_lines(results: dict) -> list[str]:
    """The goals of issue 23 with pass/fail on the measured numbers ("not measured" where a row was not run)."""
    lines = []
    for goal in GOALS:
        measured = _measure(goal, results)
        if measured is None:
            lines.append(f"goal {goal.text}: not measured")
            continue
        value, how = measured
        met = value >= goal.bound if goal.kind == "speed" else value <= goal.bound
        lines.append(f"goal {goal.text}: {how} = {value:.2f}{'x' if goal.kind != 'memory' else ''} "
                     f"({'PASS' if met else 'FAIL'})")
    return lines


def plot(results: dict, families: dict, models: list[str], out: Path, title: str) -> None:
    """Time and step memory against frames for the idle rows; solid = inference, dashed = training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = [("median time per step (s)", lambda r: r["median_s"]),
              ("peak RSS above set-up (MiB)", lambda r: max(_step_mib(r), 1.0))]
    frames_seen = sorted({key[1] for key, r in results.items() if r is not None and key[3] == "idle"})
    for ax, (label, value) in zip(axes, panels):
        for family in models:
            for arch, colour in zip(families[family], ("tab:green", "tab:red")):
                for mode, style in (("infer", "-"), ("train", "--")):
                    pts = [(t, value(results[(arch, t, mode, "idle")])) for t in frames_seen
                           if results.get((arch, t, mode, "idle"))]
                    if pts:
                        marker = "o" if family == "tiny" else "s"
                        ax.plot(*zip(*pts), style, marker=marker, color=colour, label=f"{arch} {mode}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(frames_seen, [str(t) for t in frames_seen])
        ax.set_xlabel("frames (batch 1)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
