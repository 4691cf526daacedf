"""Per-class accuracy, mean class accuracy and the confusion matrix of a classification test; a JSON report and,
where matplotlib is installed, a PNG of the matrix.

Definitions (mmaction2's ``confusion_matrix`` / ``mean_class_accuracy``): the confusion matrix counts videos, row =
true class, column = predicted class; the accuracy of a class is its diagonal count over its row sum (correct / the
videos of that true class); the mean class accuracy averages it over the classes that occur as a true class. Here
the matrix spans every class of the model (mmaction2's spans the classes seen among labels and predictions), and a
class that is predicted but never true has no accuracy and is left out of the mean (mmaction2 counts it as 0).
The predicted class is computed by the caller (the multi-view merge: the top score, the lowest index on ties).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install matplotlib (or: pip install -r requirements-extras.txt)"


def confusion_matrix(labels: Sequence[int] | np.ndarray, preds: Sequence[int] | np.ndarray,
                     num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64: entry [t, p] counts the videos of true class t predicted as p."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    if labels.ndim != 1 or labels.shape != preds.shape:
        raise ValueError(f"labels and preds must be 1-D of one length, got {labels.shape} and {preds.shape}")
    outside = [int(c) for c in np.concatenate([labels, preds]) if not 0 <= c < num_classes]
    if outside:
        raise ValueError(f"class indices must lie in [0, {num_classes}), got {sorted(set(outside))}")
    counts = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """(C,) float64 in [0, 1]: each true class's correct / total (its row), NaN for a class with no videos."""
    totals = matrix.sum(axis=1)
    return np.divide(np.diag(matrix), totals, out=np.full(len(totals), np.nan), where=totals > 0)


def mean_class_accuracy(matrix: np.ndarray) -> float:
    """The mean of ``per_class_accuracy`` over the classes that occur as a true class (NaN when none does)."""
    accuracy = per_class_accuracy(matrix)
    present = ~np.isnan(accuracy)
    return float(accuracy[present].mean()) if present.any() else float("nan")


def _percent(value: float) -> float | None:
    return None if np.isnan(value) else 100.0 * float(value)


def class_report(labels: Sequence[int] | np.ndarray, preds: Sequence[int] | np.ndarray, num_classes: int,
                 names: Sequence[str] | None = None) -> dict[str, Any]:
    """The JSON-ready report of one test (accuracies in %; null for a class without videos).

    Keys: ``num_videos``, ``num_classes``, ``top1``, ``mean_class_accuracy``, ``classes_present``, ``per_class``
    (one ``{"class", "name", "videos", "correct", "accuracy"}`` per class; names default to the indices),
    ``confusion_matrix_layout`` and ``confusion_matrix`` (C rows of C counts).
    """
    names = [str(c) for c in range(num_classes)] if names is None else list(names)
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    matrix = confusion_matrix(labels, preds, num_classes)
    totals, correct = matrix.sum(axis=1), np.diag(matrix)
    accuracy = per_class_accuracy(matrix)
    total = int(totals.sum())
    return {
        "num_videos": total,
        "num_classes": num_classes,
        "top1": _percent(correct.sum() / total if total else np.nan),
        "mean_class_accuracy": _percent(mean_class_accuracy(matrix)),
        "classes_present": int((totals > 0).sum()),
        "per_class": [{"class": c, "name": names[c], "videos": int(totals[c]), "correct": int(correct[c]),
                       "accuracy": _percent(accuracy[c])} for c in range(num_classes)],
        "confusion_matrix_layout": "rows: true class, columns: predicted class",
        "confusion_matrix": matrix.tolist(),
    }


def report_json(report: Mapping[str, Any]) -> str:
    """JSON text with one line per scalar field, per class and per confusion-matrix row."""
    fields = []
    for key, value in report.items():
        if isinstance(value, list) and value and isinstance(value[0], (list, dict)):
            rows = ",\n    ".join(json.dumps(row, allow_nan=False) for row in value)
            fields.append(f"  {json.dumps(key)}: [\n    {rows}\n  ]")
        else:
            fields.append(f"  {json.dumps(key)}: {json.dumps(value, allow_nan=False)}")
    return "{\n" + ",\n".join(fields) + "\n}\n"


def plot_confusion_matrix(report: Mapping[str, Any], path: Path, max_named: int = 40, max_counts: int = 12) -> None:
    """The confusion matrix as an image, each row divided by its total (the fraction of the true class predicted
    as each class); class names on the axes up to ``max_named`` classes, counts in the cells up to ``max_counts``."""
    from matplotlib.figure import Figure  # the optional extra; write_class_report checks it is importable

    matrix = np.asarray(report["confusion_matrix"], dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    count = len(matrix)
    side = min(max(4.0, 2.0 + 0.25 * count), 20.0)
    fig = Figure(figsize=(side + 1.5, side), dpi=100, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    if count <= max_named:
        names = [c["name"] for c in report["per_class"]]
        ax.set_xticks(range(count), names, rotation=90, fontsize="small")
        ax.set_yticks(range(count), names, fontsize="small")
    if count <= max_counts:
        for (t, p), n in np.ndenumerate(matrix.astype(np.int64)):
            if n:
                ax.text(p, t, str(n), ha="center", va="center", color="white" if rates[t, p] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    mean = report["mean_class_accuracy"]
    ax.set_title(f"mean class accuracy {mean:.2f}%, top-1 {report['top1']:.2f}% ({report['num_videos']} videos)"
                 if mean is not None else "no videos")
    fig.savefig(path)


def write_class_report(report: Mapping[str, Any], path: Path, png: bool = True) -> Path | None:
    """Write ``report`` to ``path`` (JSON) and, with ``png`` and matplotlib installed, its matrix to ``path`` with
    the suffix ``.png`` (returned); without matplotlib one log line says the PNG was skipped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_json(report), encoding="utf-8")
    if not png:
        return None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logger.warning("per-class report: %s written; confusion matrix PNG skipped: matplotlib is not installed "
                       "(%s)", path, INSTALL_HINT)
        return None
    png_path = path.with_suffix(".png")
    plot_confusion_matrix(report, png_path)
    return png_path


def summary(report: Mapping[str, Any]) -> str:
    """One line: mean class accuracy, top-1, videos and classes."""
    mean = report["mean_class_accuracy"]
    text = "n/a" if mean is None else f"{mean:.2f}%"
    return (f"mean class accuracy {text} over {report['classes_present']} of {report['num_classes']} classes, "
            f"top-1 {report['top1'] or 0.0:.2f}% ({report['num_videos']} videos)")


def report_videos(videos: Sequence[Mapping[str, Any]], output_dir: Path | None) -> float | None:
    """The report of the multi-view test's merged videos (``label``, ``pred``, ``scores`` each): logged and, with
    ``output_dir``, written to ``test_per_class.json`` (and ``.png``) there. Returns the mean class accuracy (%),
    None when a label is not a class of the model (the report is skipped with a warning, the test goes on)."""
    try:
        report = class_report([v["label"] for v in videos], [v["pred"] for v in videos], len(videos[0]["scores"]))
    except ValueError as err:
        logger.warning("multi-view test: per-class report skipped: %s", err)
        return None
    logger.info("multi-view test: %s", summary(report))
    if output_dir is not None:
        path = Path(output_dir) / "test_per_class.json"
        png = write_class_report(report, path)
        logger.info("per-class accuracy and confusion matrix: %s%s", path, f", {png}" if png else "")
    return report["mean_class_accuracy"]
