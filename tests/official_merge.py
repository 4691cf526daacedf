"""The official multi-view merge (``engines/engine_for_finetuning.py::merge`` and its regression twin), re-implemented
from its rules to check that our ``{rank}.txt`` files read the way user scripts built on it read them."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _parse(line: str, task: str) -> tuple[str, np.ndarray | float, str, str]:
    """(name, scores, label, view key) of one line; the key is segment and crop joined, as the official code."""
    if task == "classification":
        name = line.split("[")[0]
        _, label, segment, crop = line.split("]")[1].split(" ")[:4]
        logits = np.array(line.split("[")[1].split("]")[0].split(","), dtype=np.float32).astype(np.float64)
        scores = np.exp(logits - logits.max())
        return name, scores / scores.sum(), label, segment + crop
    name, value, label, segment, crop = line.split(" ")[:5]
    return name, float(value), label, segment + crop


def official_merge(folder: Path, num_tasks: int, task: str = "classification") -> tuple[float, ...]:
    """Read ``folder/{rank}.txt`` for every rank, skipping each file's first line; keep the first line of each
    (name, segment + crop); average the views of each name. Returns (top-1 %, top-5 %) or (MSE,)."""
    views: dict[str, list] = {}
    keys: dict[str, list[str]] = {}
    labels: dict[str, str] = {}
    for rank in range(num_tasks):
        for line in (Path(folder) / f"{rank}.txt").read_text().splitlines()[1:]:
            name, scores, label, key = _parse(line.strip(), task)
            if key in keys.setdefault(name, []):
                continue
            views.setdefault(name, []).append(scores)
            keys[name].append(key)
            labels[name] = label
    if task != "classification":
        return (float(np.mean([(np.mean(views[n]) - float(labels[n])) ** 2 for n in views])),)
    top1, top5 = [], []
    for name, scores in views.items():
        mean = np.mean(scores, axis=0)
        top1.append(int(np.argmax(mean)) == int(labels[name]))
        top5.append(int(labels[name]) in np.argsort(-mean)[:5])
    return 100 * float(np.mean(top1)), 100 * float(np.mean(top5))
