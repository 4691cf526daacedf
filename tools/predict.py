"""Classify videos with a fine-tuned VideoMamba checkpoint: the top-k classes per video, or a timeline of class
probabilities over the sliding windows of a long video.

Each video is cut into ``--test_num_segment`` temporal segments × ``--test_num_crop`` spatial crops with the sampling
and test transform of the multi-view test of ``run_class_finetuning.py`` (``tools/video_views.py``), and the softmax
is averaged over those views. ``--timeline`` does this per sliding window (``--window_seconds``, ``--stride_seconds``;
1 × 1 views per window unless given) and prints a table, and with ``--out DIR`` writes ``<stem>.timeline.csv``,
``.json`` and ``.png`` (matplotlib, an optional extra). ``--checkpoint`` is a file or a pretrained tag; the
architecture is read from the checkpoint, or is the tag's (``tools/checkpoint_model.py``); ``--num_frames`` and
``--input_size`` override its frames and resolution.

One video (``--video``) prints a table (or one JSON object with ``--json``); a folder (``--folder``) or list
(``--list``) prints one line per video (or one JSON object per line). Unreadable videos of a folder or list are
reported on stderr and skipped, and the exit status is then 1. ``--per_class OUT.json`` with a ``--list`` that holds
the true classes (``path label`` or ``path label duration`` lines) writes per-class accuracy, mean class accuracy and
the confusion matrix of the top-1 predictions (``engines/class_metrics.py``), and ``OUT.png`` where matplotlib is
installed.

Examples:
    python tools/predict.py --checkpoint videomamba_small.k400_f8_res224 --video clip.mp4 --labels k400_labels.txt
    python tools/predict.py --model videomamba_small --checkpoint out/checkpoint-best.pth --video clip.mp4
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python tools/x.py` from the repo root

from utils.omp import prefer_passive_wait

if __name__ == "__main__":  # before torch starts its OpenMP runtime; importing this module changes nothing
    prefer_passive_wait()

import torch

from datasets.lists import guess_format, read_list
from datasets.readers import BACKENDS, VideoDecodeError
from engines.class_metrics import class_report, summary, write_class_report
from tools import timeline as tl
from tools.checkpoint_model import CheckpointError, add_checkpoint_args, check_checkpoint_args, load_model
from tools.video_views import (VIDEO_SAMPLINGS, InputError, VideoResult, ViewPlan, add_video_source_args, map_videos,
                               output_stems, videos_from_args)
from utils.errors import UserError
from utils.logging import setup_logging

logger = logging.getLogger(__name__)


def read_labels(path: str | None, num_classes: int) -> list[str]:
    """Class names, one per line of ``path`` (blank lines ignored), or the indices when no file is given."""
    if path is None:
        return [str(i) for i in range(num_classes)]
    file = Path(path)
    if not file.is_file():
        raise InputError(f"--labels {path}: no such file")
    names = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != num_classes:
        raise InputError(f"--labels {path}: {len(names)} class names for a checkpoint with {num_classes} classes")
    return names


def true_classes(list_file: str, split: str, prefix: str, num_classes: int) -> dict[str, int]:
    """The true class of each video of a ``--list`` (its label field), for ``--per_class``."""
    fmt, regression = guess_format(Path(list_file).read_text(encoding="utf-8").splitlines(), split)
    if fmt not in ("classification", "trimmed") or regression:
        raise InputError(f"--per_class needs the true class of each video, but --list {list_file} has no integer "
                         f"label field (lines 'path label' or 'path label duration')")
    truth: dict[str, int] = {}
    for entry in read_list(list_file, fmt, split, prefix):
        if not 0 <= entry.label < num_classes:
            raise InputError(f"--list {list_file}: {entry.path} has label {entry.label}, not a class of the "
                             f"checkpoint (0 to {num_classes - 1})")
        truth.setdefault(entry.path, int(entry.label))
    return truth


def top_k(probs: torch.Tensor, labels: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable classes as [{"rank", "index", "label", "probability"}], best first."""
    values, indices = probs.topk(min(k, probs.numel()))
    return [{"rank": rank + 1, "index": int(i), "label": labels[int(i)], "probability": float(p)}
            for rank, (p, i) in enumerate(zip(values.tolist(), indices.tolist()))]


def get_parser() -> argparse.ArgumentParser:
    """Command-line flags; the data flags keep the names of ``run_class_finetuning.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_args(parser)
    add_video_source_args(parser)
    parser.add_argument("--labels", default=None, help="class names, one per line (default: class indices)")
    parser.add_argument("--num_frames", type=int, default=None, help="frames per view (default: the checkpoint's)")
    parser.add_argument("--input_size", type=int, default=None, help="crop size (default: the checkpoint's)")
    parser.add_argument("--short_side_size", type=int, default=None,
                        help="short side before cropping; test crops are short_side² so it must equal --input_size")
    parser.add_argument("--test_num_segment", type=int, default=None,
                        help="temporal views (default 4; 1 per window with --timeline)")
    parser.add_argument("--test_num_crop", type=int, default=None,
                        help="spatial views (default 3; 1 per window with --timeline)")
    parser.add_argument("--sampling", choices=VIDEO_SAMPLINGS, default="sparse",
                        help="frame sampling: sparse (Kinetics/Breakfast/COIN/LVU), ssv2, or dense")
    parser.add_argument("--sampling_rate", type=int, default=4, help="frame stride of dense sampling")
    parser.add_argument("--video_backend", choices=BACKENDS, default="auto")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=4, help="views per forward pass")
    parser.add_argument("--num_workers", type=int, default=0, help="video decoding processes (0: this one)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    timeline = parser.add_argument_group("timeline of a long video")
    timeline.add_argument("--timeline", action="store_true", help="class probabilities per sliding window")
    timeline.add_argument("--window_seconds", type=float, default=2.0, help="window length in seconds")
    timeline.add_argument("--stride_seconds", type=float, default=1.0, help="seconds between window starts")
    timeline.add_argument("--out", default=None, help="folder for <stem>.timeline.csv, .json and .png")
    timeline.add_argument("--no_png", action="store_true",
                          help="with --out or --per_class: write no PNG (no matplotlib needed)")
    parser.add_argument("--per_class", default=None, metavar="OUT.json",
                        help="with a --list of 'path label' lines: per-class accuracy, mean class accuracy and the "
                             "confusion matrix as JSON, and OUT.png (matplotlib)")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    check_checkpoint_args(args)
    if min(args.batch_size, args.topk) < 1 or args.num_workers < 0:
        raise InputError("--batch_size and --topk must be >= 1 and --num_workers >= 0")
    if args.out is not None and not args.timeline:
        raise InputError("--out writes timeline files: add --timeline")
    if args.per_class is not None and (args.list is None or args.timeline):
        raise InputError("--per_class scores the videos of a --list against its labels (without --timeline)")


def _plan(args: argparse.Namespace, num_frames: int, size: int) -> ViewPlan:
    segments, crops = (1, 1) if args.timeline else (4, 3)
    segments = segments if args.test_num_segment is None else args.test_num_segment
    crops = crops if args.test_num_crop is None else args.test_num_crop
    windows = (args.window_seconds, args.stride_seconds) if args.timeline else (None, None)
    return ViewPlan(num_frames=num_frames, input_size=size, num_segments=segments, num_crops=crops,
                    sampling=args.sampling, sampling_rate=args.sampling_rate, window_seconds=windows[0],
                    stride_seconds=windows[1], backend=args.video_backend)


def describe(result: VideoResult, args: argparse.Namespace, plan: ViewPlan, labels: Sequence[str]) -> dict[str, Any]:
    """The JSON-ready prediction of one video: top-k over all views, or the per-window timeline."""
    if result.error is not None:
        return {"video": result.path, "error": result.error}
    out: dict[str, Any] = {"video": result.path, "checkpoint": args.checkpoint, "model": args.model,
                           "num_frames": plan.num_frames, "input_size": plan.input_size,
                           "views": {"segments": plan.num_segments, "crops": plan.num_crops}}
    if not plan.windowed:
        return {**out, "predictions": top_k(result.outputs.mean(dim=0), labels, args.topk)}
    per_window = plan.num_segments * plan.num_crops
    probs = result.outputs.view(-1, per_window, result.outputs.shape[-1]).mean(dim=1)
    windows = [{"window": info.window, "start": info.start, "end": info.end,
                "predictions": top_k(p, labels, args.topk)}
               for info, p in zip(result.views[::per_window], probs)]
    return {**out, "window_seconds": plan.window_seconds, "stride_seconds": plan.stride_seconds,
            "fps": result.fps, "duration": result.num_video_frames / result.fps, "labels": list(labels),
            "windows": windows, "probabilities": probs.tolist()}


def run(args: argparse.Namespace) -> tuple[list[str], list[str], Iterator[dict[str, Any]]]:
    """Check the input and load the model; returns the videos, the class names and an iterator over the videos'
    JSON-ready predictions (in input order)."""
    _check_args(args)
    videos = videos_from_args(args)
    if args.out is not None:
        output_stems(videos)
    model, shape = load_model(args.model, args.checkpoint, args.num_frames, args.input_size, args.model_key,
                              args.trust_checkpoint)
    args.model = model.pretrained_cfg["architecture"]  # a pretrained tag names its model
    if shape.num_classes < 2:
        kind = "a regression checkpoint (one output)" if shape.num_classes == 1 else "a checkpoint without a head"
        raise CheckpointError(f"{args.checkpoint}: {kind}; predict.py ranks classes")
    labels = read_labels(args.labels, shape.num_classes)
    size = args.input_size or shape.img_size
    if args.short_side_size is not None and args.short_side_size != size:
        raise InputError(f"--short_side_size {args.short_side_size} must equal the input size {size}: "
                         f"test crops are short_side² squares")
    plan = _plan(args, args.num_frames or shape.num_frames, size)
    device = torch.device(args.device)
    model.to(device)

    @torch.no_grad()
    def probabilities(views: torch.Tensor) -> torch.Tensor:
        return model(views.to(device)).float().softmax(dim=-1).cpu()

    results = map_videos(videos, plan, probabilities, args.batch_size, args.num_workers)
    return videos, labels, (describe(result, args, plan, labels) for result in results)


def write_timeline(result: dict[str, Any], out: Path, png: bool) -> None:
    """``<stem>.timeline.csv``, ``.json`` and (``png``) ``.png`` of one video under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(result['video']).stem}.timeline"
    tl.write_csv(result, out / f"{stem}.csv")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if png:
        tl.plot_png(result, out / f"{stem}.png")


def write_per_class(args: argparse.Namespace, scored: list[tuple[int, int]], names: Sequence[str],
                    skipped: int) -> None:
    """``--per_class``: the report of the (true, top-1) classes of the readable videos, with the inputs named."""
    labels, preds = zip(*scored) if scored else ((), ())
    report = {"list": args.list, "checkpoint": args.checkpoint, "skipped_videos": skipped,
              **class_report(labels, preds, len(names), names)}
    png = write_class_report(report, Path(args.per_class), png=not args.no_png)
    print(f"predict.py: {summary(report)}; written to {args.per_class}{f' and {png}' if png else ''}",
          file=sys.stderr, flush=True)


def print_result(result: dict[str, Any], args: argparse.Namespace, single: bool) -> None:
    """A table for one video, one line (or JSON line) per video of a folder or list."""
    if args.json:
        print(json.dumps(result, indent=2) if single else json.dumps(result), flush=True)
        return
    if single or args.timeline:
        views = result["views"]
        head = f"{result['video']}: {views['segments']}x{views['crops']} views of {result['num_frames']} frames " \
               f"at {result['input_size']} px"
        if args.timeline:
            print(f"{head} per window ({len(result['windows'])} windows of {result['window_seconds']:g} s "
                  f"every {result['stride_seconds']:g} s)\n{tl.format_table(result)}", flush=True)
            return
        print(head)
        for row in result["predictions"]:
            print(f"{row['rank']:>2}. {row['label']:<40} {row['probability']:.4f}")
        return
    print("\t".join([result["video"], *(f"{r['label']}\t{r['probability']:.4f}" for r in result["predictions"])]),
          flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: 0 on success, 1 when videos of a folder/list were skipped, 2 with a one-line error on bad input
    (including an unreadable ``--video``)."""
    args = get_parser().parse_args(argv)
    setup_logging()
    if args.json:
        logging.getLogger().setLevel(logging.WARNING)
    png = args.out is not None and not args.no_png
    if png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(f"predict.py: error: matplotlib is not installed (needed for the timeline PNG); {tl.INSTALL_HINT}, "
                  f"or pass --no_png", file=sys.stderr)
            return 2
    bad = []
    try:
        videos, names, results = run(args)
        truth = true_classes(args.list, args.split, args.prefix, len(names)) if args.per_class else None
        scored: list[tuple[int, int]] = []
        single = args.video is not None
        for result in results:
            if "error" in result:
                if single:
                    raise VideoDecodeError(result["video"], result["error"])
                bad.append(f"{result['video']} ({result['error']})")
                print(f"predict.py: skipped {result['video']}: {result['error']}", file=sys.stderr)
                if args.json:
                    print(json.dumps(result), flush=True)
                continue
            if args.out is not None:
                write_timeline(result, Path(args.out), png)
            if truth is not None:
                scored.append((truth[result["video"]], result["predictions"][0]["index"]))
            print_result(result, args, single)
        if truth is not None:
            write_per_class(args, scored, names, len(bad))
    except (InputError, CheckpointError, VideoDecodeError, UserError, FileNotFoundError, ValueError) as err:
        print(f"predict.py: error: {err}", file=sys.stderr)
        return 2
    if bad:
        print(f"predict.py: {len(bad)} of {len(videos)} videos could not be read:\n  " + "\n  ".join(bad),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
