"""Table, goal lines and plot of benchmarks/throughput.py from its per-configuration results.

A result is keyed (arch, frames, mode, condition) and holds median_s, peak_rss, setup_rss (bytes) and, for
compiled runs, compile_s; None marks a configuration that failed.
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
    condition: str  # "idle", "busy" or "compiled"


# (family, mode, frames, condition, minimum ViT/VideoMamba speed-up or None for the memory goal, description)
GOALS = [
    ("tiny", "train", 16, "idle", 1.5, "Ti training step at 16x224 >= 1.5x faster than ViT-Ti"),
    ("tiny", "train", 16, "idle", None, "Ti training step at 16x224: step memory <= ViT-Ti's"),
    ("tiny", "infer", 64, "idle", 3.0, "Ti inference at 64x224 >= 3x faster than ViT-Ti"),
    ("tiny", "infer", 64, "busy", 2.0, "Ti inference at 64x224 beside one busy process >= 2x faster than ViT-Ti"),
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
        if row.condition == "compiled":
            eager = results.get((vm_arch, row.frames, row.mode, "idle"))
            notes = (f"eager {_fmt(eager and eager['median_s'], '.3f')} s; "
                     f"compile {_fmt(vm and vm['compile_s'], '.0f')} s")
        lines.append([row.family, row.mode, row.frames, row.condition, _fmt(vm_s, ".3f"), _fmt(vit_s, ".3f"),
                      _ratio(vit_s, vm_s), _gflops(vm, flops[(vm_arch, row.frames)], row.mode, peak),
                      _gflops(vit, flops.get((vit_arch, row.frames), 0.0), row.mode, peak),
                      _fmt(_step_mib(vm), ".0f"), _fmt(_step_mib(vit), ".0f"), _ratio(_step_mib(vm), _step_mib(vit)),
                      _fmt(vm and vm["peak_rss"] / MIB, ".0f"), _fmt(vit and vit["peak_rss"] / MIB, ".0f"), notes])
    return format_table(headers, lines)


def goal_lines(results: dict) -> list[str]:
    """The issue-14 goals, checked on the measured numbers ("not measured" where a row was not run)."""
    lines = []
    for family, mode, frames, condition, minimum, text in GOALS:
        vm = results.get((f"videomamba_{family}", frames, mode, condition))
        vit = results.get((f"vit_{family}_joint", frames, mode, condition))
        if vm is None or vit is None:
            lines.append(f"goal {text}: not measured")
        elif minimum is None:
            vm_mib, vit_mib = _step_mib(vm), _step_mib(vit)
            verdict = "met" if vm_mib <= vit_mib else "NOT met"
            lines.append(f"goal {text}: {vm_mib:.0f} vs {vit_mib:.0f} MiB ({verdict})")
        else:
            speedup = vit["median_s"] / vm["median_s"]
            verdict = "met" if speedup >= minimum else "NOT met"
            lines.append(f"goal {text}: ViT/VideoMamba time = {vit['median_s']:.3f} / {vm['median_s']:.3f} s = "
                         f"{speedup:.2f}x ({verdict})")
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
