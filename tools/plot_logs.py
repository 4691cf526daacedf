"""Plot training curves of one or more runs from their ``log.txt`` (ours or the official format), overlaid.

A log holds one JSON object per line. Records with an ``epoch`` key give the series, per epoch:
  train_loss, train_lr, val_acc1 (validation top-1, %), val_mse (regression). An official regression log has no
  val_mse: its val_loss, the MSE criterion, is used when a run has neither val_mse nor val_acc1.
Other JSON records (final test results: ``{"Final top-1": ...}``, our ``test_acc1``) and plain-text lines are
skipped and counted. An epoch logged twice (a run resumed from an earlier checkpoint) keeps its later record.
Only panels with data are drawn. matplotlib is an optional extra (requirements-extras.txt).
Example: python tools/plot_logs.py out/mine/log.txt official/log.txt --names mine official --out curves.png
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

logger = logging.getLogger(__name__)

PANELS = {"train_loss": "training loss", "train_lr": "learning rate", "val_acc1": "validation top-1 (%)",
          "val_mse": "validation MSE"}
INSTALL_HINT = "pip install matplotlib (or: pip install -r requirements-extras.txt)"


class UsageError(ValueError):
    """Bad command-line input (exit status 2)."""


@dataclass
class Run:
    """One run: its name and ``{metric: {epoch: value}}`` for the metrics of ``PANELS``."""

    name: str
    series: dict[str, dict[int, float]] = field(default_factory=dict)
    skipped_text: int = 0
    skipped_records: int = 0


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parse_log(lines: Iterable[str], name: str) -> Run:
    """The series of one log's lines (see the module docstring for the rules)."""
    run = Run(name)
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            run.skipped_text += 1
            continue
        epoch = _number(record.get("epoch"))
        if epoch is None:
            run.skipped_records += 1
            continue
        for key in PANELS:
            value = _number(record.get(key))
            if value is not None:
                run.series.setdefault(key, {})[int(epoch)] = value
        val_loss = _number(record.get("val_loss"))
        if val_loss is not None and "val_acc1" not in record and "val_mse" not in record:
            run.series.setdefault("val_mse", {})[int(epoch)] = val_loss
    run.series = {k: dict(sorted(v.items())) for k, v in run.series.items()}
    return run


def read_log(path: Path, name: str) -> Run:
    """``parse_log`` of the file at ``path``; the skipped lines are logged."""
    if not path.is_file():
        raise UsageError(f"{path}: no such log file")
    run = parse_log(path.read_text(encoding="utf-8", errors="replace").splitlines(), name)
    if run.skipped_text or run.skipped_records:
        logger.info("%s: skipped %d plain-text lines and %d JSON records without an epoch", path,
                    run.skipped_text, run.skipped_records)
    return run


def default_names(paths: Sequence[Path]) -> list[str]:
    """Each log's parent folder name; the parent path where those collide, then a ``#k`` suffix."""
    names = [p.resolve().parent.name for p in paths]
    if len(set(names)) < len(names):
        names = [str(p.parent) for p in paths]
    if len(set(names)) < len(names):
        names = [f"{n}#{k + 1}" for k, n in enumerate(names)]
    return names


def panels(runs: Sequence[Run]) -> list[str]:
    """The metrics of ``PANELS`` that some run has data for, in ``PANELS`` order."""
    return [key for key in PANELS if any(run.series.get(key) for run in runs)]


def plot(runs: Sequence[Run], out: Path, width: int, height: int, dpi: int = 100) -> None:
    """Draw the panels with data, each run a colour of its own, into a ``width`` × ``height`` pixel PNG."""
    from matplotlib.figure import Figure  # the optional extra; main() checks it is importable
    from matplotlib.ticker import MaxNLocator

    keys = panels(runs)
    cols = 1 if len(keys) == 1 else 2
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        for k, run in enumerate(runs):
            points = run.series.get(key, {})
            if points:
                ax.plot(list(points), list(points.values()), color=f"C{k}", marker="." if len(points) < 50 else None,
                        label=run.name)
        ax.set_title(PANELS[key])
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(keys):]:
        ax.remove()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)


def write_csv(runs: Sequence[Run], path: Path) -> None:
    """Every plotted point as ``run,metric,epoch,value`` rows."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "metric", "epoch", "value"])
        for run in runs:
            for key in PANELS:
                for epoch, value in run.series.get(key, {}).items():
                    writer.writerow([run.name, key, epoch, repr(value)])


def summary(run: Run) -> str:
    """One line per run: epochs, last training loss, best validation top-1 or MSE."""
    epochs = sorted({e for points in run.series.values() for e in points})
    parts = [f"{run.name}: {len(epochs)} epochs" + (f" ({epochs[0]}-{epochs[-1]})" if epochs else "")]
    if run.series.get("train_loss"):
        epoch, value = list(run.series["train_loss"].items())[-1]
        parts.append(f"train_loss {value:.4g} at epoch {epoch}")
    for key, pick in (("val_acc1", max), ("val_mse", min)):
        if run.series.get(key):
            epoch = pick(run.series[key], key=run.series[key].get)
            parts.append(f"best {key} {run.series[key][epoch]:.4g} at epoch {epoch}")
    return ", ".join(parts)


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, e.g. 1200x800, got {text!r}") from None
    if min(width, height) < 100:
        raise argparse.ArgumentTypeError(f"the image must be at least 100x100 pixels, got {text!r}")
    return width, height


def get_parser() -> argparse.ArgumentParser:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", type=Path, metavar="LOG", help="log.txt files")
    parser.add_argument("--names", nargs="+", default=None, help="one name per log (default: its folder name)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--size", type=_size, default=(1200, 800), help="image size WIDTHxHEIGHT in pixels")
    parser.add_argument("--dump_csv", "--dump-csv", dest="dump_csv", type=Path, default=None,
                        help="also write every plotted point as CSV (run,metric,epoch,value)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: one summary line per run on stdout; 0 written, 1 nothing to plot, 2 usage error."""
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"plot_logs.py: error: matplotlib is not installed; {INSTALL_HINT}", file=sys.stderr)
        return 2
    try:
        if args.names is not None and len(args.names) != len(args.logs):
            raise UsageError(f"--names gives {len(args.names)} names for {len(args.logs)} logs")
        names = args.names or default_names(args.logs)
        runs = [read_log(path, name) for path, name in zip(args.logs, names)]
    except UsageError as err:
        print(f"plot_logs.py: error: {err}", file=sys.stderr)
        return 2
    if not panels(runs):
        print(f"plot_logs.py: error: no epoch records with {', '.join(PANELS)} in {', '.join(map(str, args.logs))}",
              file=sys.stderr)
        return 1
    plot(runs, args.out, *args.size)
    if args.dump_csv is not None:
        write_csv(runs, args.dump_csv)
    print("\n".join(summary(run) for run in runs))
    logger.info("wrote %s (%s)", args.out, ", ".join(PANELS[k] for k in panels(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
