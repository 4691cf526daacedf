"""Multi-view test: each rank saves its per-view predictions; rank 0 merges them per video.

A view is identified by the tuple (video_id, window, segment, crop). The merge keeps each view once (the
distributed sampler pads the last batch with repeats), takes a softmax per view (classification), averages
the views of each video (all windows of a trimmed video together) and scores the videos. Each rank also writes its
views in the official text format, ``{rank}.txt`` (``official_prediction_lines``), for scripts that read those.
"""
from __future__ import annotations

import csv
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from engines.class_metrics import report_videos
from engines.contracts import EvalTask, Runtime
from engines.progress import Progress
from utils.batch import EvalBatch
from utils.distributed import barrier

logger = logging.getLogger(__name__)

_KEYS = ("video_id", "window", "segment", "crop")


@torch.no_grad()
def predict_views(runtime: Runtime, task: EvalTask, loader: Iterable[EvalBatch],
                  print_freq: int = 50) -> dict[str, np.ndarray]:
    """Run the model on every view of this rank's shard; returns arrays keyed by the view tuple fields plus
    ``outputs`` (V, C) float32, ``label`` (V,), ``valid`` (V,) bool (invalid views have zero outputs) and ``batch``
    (V,), the index of the loader batch."""
    model = runtime.model
    model.eval()
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    total = len(loader) if hasattr(loader, "__len__") else 0
    progress = Progress("test", total, print_freq)
    for i, batch in enumerate(loader):
        keep = batch.valid
        with runtime.autocast():
            outputs = task.predict(model, batch, runtime.device, runtime.input_dtype).float().cpu()
        outputs[~keep] = 0.0
        parts["outputs"].append(outputs.numpy())
        parts["label"].append(batch.label.numpy())
        parts["valid"].append(keep.numpy())
        parts["batch"].append(np.full(len(keep), i))
        for name, values in zip(_KEYS, (batch.video_id, batch.window, batch.segment, batch.crop)):
            parts[name].append(values.long().numpy())
        progress.step(i, len(keep))
    return {k: np.concatenate(v) for k, v in parts.items()}


def save_rank_predictions(preds: dict[str, np.ndarray], directory: Path, rank: int) -> Path:
    """Write one rank's predictions to ``directory/predictions_rank{rank}.npz``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"predictions_rank{rank}.npz"
    np.savez(path, **preds)
    return path


def load_rank_predictions(directory: Path, world_size: int) -> dict[str, np.ndarray]:
    """Concatenate the ``world_size`` rank files written by ``save_rank_predictions``."""
    files = [Path(directory) / f"predictions_rank{r}.npz" for r in range(world_size)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"multi-view merge: prediction files missing: {missing}")
    loaded = [dict(np.load(f)) for f in files]
    return {k: np.concatenate([d[k] for d in loaded]) for k in loaded[0]}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def merge_views(preds: dict[str, np.ndarray], task: str, views_per_window: int) -> dict[str, Any]:
    """Merge per-view predictions into per-video scores (pure function).

    ``preds``: arrays ``video_id``, ``window``, ``segment``, ``crop`` (V,), ``outputs`` (V, C), ``label`` (V,),
    ``valid`` (V,). Repeated view tuples are kept once; invalid views are dropped; a video with no valid view
    is counted in ``missing`` and listed in ``missing_ids``. ``task`` is ``classification`` (softmax per view,
    mean, top-1/top-5 in %) or ``regression`` (mean of outputs, MSE). Windows of scored videos with fewer than
    ``views_per_window`` valid views (none included) are listed in ``incomplete``. Returns metrics, counts and
    ``videos``: a list of per-video dicts sorted by id.
    """
    if task not in ("classification", "regression"):
        raise ValueError(f"unknown task {task!r}")
    seen: set[tuple[int, int, int, int]] = set()
    by_video: dict[int, list[int]] = defaultdict(list)
    views_per: dict[tuple[int, int], int] = defaultdict(int)
    all_ids: set[int] = set()
    duplicates = 0
    for i in range(len(preds["video_id"])):
        key = tuple(int(preds[k][i]) for k in _KEYS)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        all_ids.add(key[0])
        views_per[key[:2]] += 0  # every window seen, also one whose views all failed
        if bool(preds["valid"][i]):
            by_video[key[0]].append(i)
            views_per[key[:2]] += 1
    incomplete = sorted([vid, win, n] for (vid, win), n in views_per.items()
                        if n < views_per_window and vid in by_video)  # videos with no valid view are "missing"
    if incomplete:
        logger.warning("multi-view test: %d windows got fewer than %d views: %s", len(incomplete), views_per_window,
                       incomplete[:10])
    videos = []
    for vid in sorted(by_video):
        rows = by_video[vid]
        outputs = preds["outputs"][rows].astype(np.float64)
        scores = _softmax(outputs) if task == "classification" else outputs
        labels = preds["label"][rows]
        if np.any(labels != labels[0]):
            raise ValueError(f"multi-view merge: video {vid} has views with different labels {np.unique(labels)}")
        videos.append({"video_id": vid, "scores": scores.mean(axis=0), "label": labels[0].item(), "views": len(rows)})
    missing_ids = sorted(all_ids - set(by_video))
    result: dict[str, Any] = {"num_videos": len(videos), "missing": len(missing_ids), "missing_ids": missing_ids,
                              "duplicates": duplicates, "incomplete": incomplete, "videos": videos}
    if not videos:
        return result
    if task == "classification":
        scores = np.stack([v["scores"] for v in videos])
        labels = np.array([int(v["label"]) for v in videos])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :5]
        result["acc1"] = 100.0 * float(np.mean(order[:, 0] == labels))
        result["acc5"] = 100.0 * float(np.mean((order == labels[:, None]).any(axis=1)))
        for v, top in zip(videos, order):
            v["pred"] = int(top[0])
    else:
        preds_mean = np.array([float(v["scores"][0]) for v in videos])
        labels_f = np.array([float(v["label"]) for v in videos])
        result["mse"] = float(np.mean((preds_mean - labels_f) ** 2))
        for v, p in zip(videos, preds_mean):
            v["pred"] = float(p)
    return result


def write_video_csv(result: dict[str, Any], path: Path) -> None:
    """Per-video predictions: ``video_id,label,pred,views`` then the averaged scores."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "label", "pred", "views", "scores"])
        for v in result["videos"]:
            scores = " ".join(f"{s:.6g}" for s in np.atleast_1d(v["scores"]))
            writer.writerow([v["video_id"], v["label"], v["pred"], v["views"], scores])


def official_video_name(path: str) -> str:
    """The official test's video id: the file name up to its first dot (``a/b/clip.x.mp4`` -> ``clip``)."""
    return path.split("/")[-1].split(".")[0]


def _official_first_line(outputs: np.ndarray, labels: np.ndarray, task: str) -> str:
    """The first line of an official ``{rank}.txt``: the last batch's top-1 and top-5 accuracy in % as the tensors
    the official code formats (``tensor(50.), tensor(100.)``; top-5 is top-1 below 5 classes), or its MSE."""
    if not len(labels):
        return "nan, nan" if task == "classification" else "nan"
    if task == "regression":
        return str(float(np.mean((outputs[:, 0] - labels) ** 2)))
    order = np.argsort(-outputs, axis=1, kind="stable")
    topk = (1, 5 if outputs.shape[1] >= 5 else 1)
    return ", ".join(str(torch.tensor(100.0 * float(np.mean((order[:, :k] == labels[:, None]).any(axis=1)))))
                     for k in topk)


def official_prediction_lines(preds: dict[str, np.ndarray], task: str, names: Sequence[str]) -> list[str]:
    """This rank's views (``predict_views``) as the official final test writes them to ``{rank}.txt``.

    The first line (which its ``merge`` skips) holds the last batch's accuracies (``_official_first_line``); then one
    line per valid view in loader order, ``{name} {scores} {label} {segment} {crop}``: ``names[video_id]``, the
    logits as a Python list (regression: the output), the label (an int; regression a float) and the view's temporal
    and spatial index. The window of a trimmed video is not part of the format (the official merge keeps one window
    per video); unreadable views are left out (the official dataset replaced them by another random video).
    """
    valid = preds["valid"].astype(bool)
    last = valid & (preds["batch"] == preds["batch"].max()) if len(valid) else valid
    lines = [_official_first_line(preds["outputs"][last], preds["label"][last], task)]
    for i in np.flatnonzero(valid):
        if task == "classification":
            scores, label = str(preds["outputs"][i].astype(np.float32).tolist()), str(int(preds["label"][i]))
        else:
            scores, label = str(np.float32(preds["outputs"][i][0])), str(float(np.float32(preds["label"][i])))
        name = names[int(preds["video_id"][i])]
        lines.append(f"{name} {scores} {label} {int(preds['segment'][i])} {int(preds['crop'][i])}")
    return lines


def multiview_test(runtime: Runtime, task: EvalTask, loader: Iterable[EvalBatch], world_size: int, rank: int,
                   views_per_window: int, output_dir: Path | None,
                   names: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Predict this rank's views, write them, and on rank 0 merge all ranks' files.

    Rank 0 returns the merged result (``videos`` dropped) and writes ``test_videos.csv`` (classification also
    ``test_per_class.json`` / ``.png``, ``engines.class_metrics``; ``mean_class_acc`` is added); other ranks return
    None. Without ``output_dir`` (single process only) the merge happens in memory. With ``names`` (the official id
    of each video, ``official_video_name``) and ``output_dir``, every rank also writes ``output_dir/{rank}.txt``
    in the official format.
    """
    if output_dir is None and world_size > 1:
        raise ValueError("the distributed multi-view test needs --output_dir to exchange predictions")
    preds = predict_views(runtime, task, loader)
    if output_dir is not None:
        save_rank_predictions(preds, Path(output_dir) / "test_predictions", rank)
        if names is not None:
            lines = official_prediction_lines(preds, task.name, names)
            (Path(output_dir) / f"{rank}.txt").write_text("".join(f"{line}\n" for line in lines))
        barrier()
    if rank != 0:
        return None
    if output_dir is not None:
        preds = load_rank_predictions(Path(output_dir) / "test_predictions", world_size)
    result = merge_views(preds, task.name, views_per_window)
    if output_dir is not None:
        write_video_csv(result, Path(output_dir) / "test_videos.csv")
    if task.name == "classification" and result["videos"]:
        result["mean_class_acc"] = report_videos(result["videos"], output_dir)
    result.pop("videos")
    return result
