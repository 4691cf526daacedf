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

    With ``reduce`` (distributed evaluation) the sums of the fixed keys ``task.stat_keys`` are added over all
    ranks, so a rank that scored nothing (every video of its shard unreadable) still sends the same list. Without
    any valid item (``num_samples`` 0) the result holds only ``num_samples`` and ``missing``: no metric.
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
            stats = task.batch_stats(outputs[keep.to(outputs.device)], batch.label[keep])
            if not set(stats) <= set(task.stat_keys):
                raise ValueError(f"batch_stats returned {sorted(stats)}, not in task.stat_keys {task.stat_keys}")
            for k, v in stats.items():
                sums[k] += v
        progress.step(i, len(keep))
    names = sorted({*task.stat_keys, "n", "missing"})
    values = [sums[k] for k in names]
    if reduce:
        values = all_reduce_sum(values, runtime.device)
    totals = dict(zip(names, values))
    n = totals.pop("n")
    missing = totals.pop("missing")
    if missing:
        logger.warning("validation: %d videos could not be decoded and were excluded", int(missing))
    stats = {k: v / n for k, v in totals.items()} if n else {}
    stats.update(num_samples=n, missing=missing)
    return stats
