"""Per-window class probabilities of a long video (``tools/predict.py --timeline``): table, CSV and PNG.

A timeline is the JSON-ready dict ``predict.py`` builds: ``labels`` (C names), ``windows`` (one dict per window with
``window``, ``start``, ``end`` seconds and its top-k ``predictions``) and ``probabilities`` (windows × C, each row
the softmax averaged over the window's test views). matplotlib (for the PNG) is an optional extra.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping

import numpy as np

INSTALL_HINT = "pip install matplotlib (or: pip install -r requirements-extras.txt)"


def format_table(timeline: Mapping[str, Any]) -> str:
    """One line per window: index, start and end seconds, then the top-k classes with their probabilities."""
    lines = [f"{'window':>6} {'start':>8} {'end':>8}  top classes (probability)"]
    for row in timeline["windows"]:
        tops = "  ".join(f"{p['label']} {p['probability']:.4f}" for p in row["predictions"])
        lines.append(f"{row['window']:>6} {row['start']:>8.2f} {row['end']:>8.2f}  {tops}")
    return "\n".join(lines)


def write_csv(timeline: Mapping[str, Any], path: Path) -> None:
    """``window,start,end`` then one probability column per class (named by its label), one row per window."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["window", "start", "end", *timeline["labels"]])
        for row, probs in zip(timeline["windows"], timeline["probabilities"]):
            writer.writerow([row["window"], repr(row["start"]), repr(row["end"]), *map(repr, probs)])


def plotted_classes(probabilities: np.ndarray, count: int) -> list[int]:
    """The ``count`` classes with the highest peak probability over the windows, highest first."""
    peaks = probabilities.max(axis=0)
    return [int(c) for c in np.argsort(-peaks, kind="stable")[:count]]


def plot_png(timeline: Mapping[str, Any], path: Path, num_classes: int = 5, width: int = 1000,
             height: int = 400, dpi: int = 100) -> None:
    """Probability over time of the ``num_classes`` classes that peak highest: one line per class through the
    window centres (the x axis spans the video)."""
    from matplotlib.figure import Figure  # the optional extra; predict.py checks it is importable

    probs = np.asarray(timeline["probabilities"], dtype=np.float64)
    starts = np.array([w["start"] for w in timeline["windows"]])
    ends = np.array([w["end"] for w in timeline["windows"]])
    centres = (starts + ends) / 2
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    for k, c in enumerate(plotted_classes(probs, num_classes)):
        ax.plot(centres, probs[:, c], color=f"C{k}", marker=".", label=timeline["labels"][c])
    ax.set_xlim(0, max(float(ends.max()), 1e-6))
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_title(f"{Path(timeline['video']).name}: top classes per {timeline['window_seconds']:g} s window "
                 f"(stride {timeline['stride_seconds']:g} s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=dpi)
