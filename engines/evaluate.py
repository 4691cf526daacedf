"""Validation (one view per video): top-1/top-5 or MSE, with undecodable videos counted as missing."""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Iterable

import torch

from engines.contracts import EvalTask, Runtime
from engines.progress import Progress
from utils.batch import EvalBatch
from utils.distributed import all_reduce_sum

logger = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(runtime: Runtime, task: EvalTask, loader: Iterable[EvalBatch], reduce: bool = False,
             print_freq: int = 50) -> dict[str, float]:
    """Mean metrics of ``task.batch_stats`` over the valid items; ``missing`` counts the invalid ones.

    With ``reduce`` (distributed evaluation) the sums are added over all ranks.
    """
    model = runtime.model
    model.eval()
    sums: dict[str, float] = defaultdict(float)
    total = len(loader) if hasattr(loader, "__len__") else 0
    progress = Progress("val", total, print_freq)
    for i, batch in enumerate(loader):
        keep = batch.valid
        sums["missing"] += float((~keep).sum())
        if keep.any():
            with runtime.autocast():
                outputs = task.predict(model, batch, runtime.device, runtime.input_dtype)
            for k, v in task.batch_stats(outputs[keep.to(outputs.device)], batch.label[keep]).items():
                sums[k] += v
        progress.step(i, len(keep))
    names = sorted(set(sums) | {"n", "missing"})
    values = [sums[k] for k in names]
    if reduce:
        values = all_reduce_sum(values, runtime.device)
    totals = dict(zip(names, values))
    n = totals.pop("n")
    missing = totals.pop("missing")
    if missing:
        logger.warning("validation: %d videos could not be decoded and were excluded", int(missing))
    stats = {k: v / n if n else float("nan") for k, v in totals.items()}
    stats.update(num_samples=n, missing=missing)
    return stats
