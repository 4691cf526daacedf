"""Train one epoch: per-step lr/wd schedule, gradient accumulation, clipping, EMA, non-finite loss guard, and the
per-micro-batch seeding that makes every step's randomness a function of its position (``utils.seeding``)."""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable

import numpy as np
import torch

from engines.contracts import BadInputCount, Runtime, Task
from engines.optim import apply_schedule
from engines.progress import Progress
from utils.batch import MaskedBatch, TrainBatch
from utils.distributed import all_gather_objects, all_reduce_sum, get_rank, get_world_size
from utils.seeding import seed_step

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss becomes NaN or inf; no checkpoint is written for the failing epoch."""


def _check_step(value: float, bad: dict[str, str], bad_input: BadInputCount | None, epoch: int, step: int,
                device: torch.device) -> None:
    """Stop when the loss of any rank is not finite, or when ``bad_input`` (the run-wide count of unreadable files)
    says too many are: the files every rank's batch replaced (``bad``) are counted together. One collective per
    micro-batch, a second only when some rank met a bad file."""
    flags = [0.0 if math.isfinite(value) else 1.0, float(len(bad))]
    if get_world_size() > 1:
        flags = all_reduce_sum(flags, device)
    if flags[0]:
        raise NonFiniteLossError(
            f"loss is {value} at epoch {epoch}, step {step}: stopping. The last saved checkpoint is left intact; "
            "lower --lr, set --clip_grad or use --bf16 instead of fp16, then resume from it")
    if bad_input is not None and flags[1]:
        for found in all_gather_objects(bad):
            bad_input.add(found)


# The official TensorBoard heads: a scalar ``name`` is logged as ``{head}/{name}`` (the official
# ``TensorboardLogger.update(head=...)`` of its fine-tuning and pretraining loops); other task values go under "loss".
TENSORBOARD_HEADS = {"loss": "loss", "class_acc": "loss", "loss_pixel": "loss_pixel", "loss_clip": "loss_clip",
                     "loss_scale": "opt", "lr": "opt", "min_lr": "opt", "weight_decay": "opt", "grad_norm": "opt"}


def log_scalars(writer: Any, step: int, values: dict[str, float | None]) -> None:
    """``writer.add_scalar("{head}/{name}", value, step)`` for every value that is not None."""
    for name, value in values.items():
        if value is not None:
            writer.add_scalar(f"{TENSORBOARD_HEADS.get(name, 'loss')}/{name}", value, step)


def _decayed_weight_decay(optimizer: torch.optim.Optimizer) -> float | None:
    """The weight decay of the decayed groups (the official ``weight_decay`` log value), None without any."""
    values = [g["weight_decay"] for g in optimizer.param_groups if g["weight_decay"] > 0]
    return values[-1] if values else None


def train_one_epoch(
    runtime: Runtime,
    task: Task,
    loader: Iterable[TrainBatch | MaskedBatch],
    epoch: int,
    lr_schedule: np.ndarray,
    wd_schedule: np.ndarray,
    start_step: int,
    steps_per_epoch: int,
    update_freq: int = 1,
    ema: Any | None = None,
    log_writer: Any | None = None,
    print_freq: int = 10,
    *,
    seed: int = 0,
    first_step: int = 0,
    sums: dict[str, tuple[float, float]] | None = None,
    after_step: Callable[[int, Progress], None] | None = None,
    bad_input: BadInputCount | None = None,
) -> dict[str, float]:
    """Run optimiser updates ``first_step`` .. ``steps_per_epoch - 1`` of ``update_freq`` micro-batches each.

    Step ``start_step + k`` uses ``lr_schedule[start_step + k]`` (times each group's ``lr_scale``) and the
    weight decay ``wd_schedule[...]``. Micro-batch i of the epoch runs after ``seed_step(seed, epoch, i, rank)``.
    A resumed epoch (``first_step`` > 0) gets a ``loader`` that starts at micro-batch ``first_step * update_freq``
    and the meter ``sums`` of the steps already done. ``after_step(steps_done, progress)`` runs after every
    optimiser step but the epoch's last (mid-epoch checkpoints). ``bad_input`` counts the unreadable files the
    batches report (``batch.bad``) over the run and all ranks (``--max_bad_fraction``). ``log_writer``
    (TensorBoard) gets, as the official loops, every micro-batch's values under the official names
    (``TENSORBOARD_HEADS``) at step ``start_step * update_freq + i`` (``grad_norm`` on optimiser steps only).
    Returns the epoch's averages over all ranks: loss, the task's extra terms (class_acc, loss_clip, ...), lr (the
    largest group lr), min_lr, weight_decay, grad_norm and loss_scale.
    """
    model = runtime.model
    model.train(True)
    device = runtime.device
    rank = get_rank()
    micro_batches = steps_per_epoch * update_freq
    progress = Progress(f"epoch {epoch}", micro_batches, print_freq, first=first_step * update_freq)
    if sums:
        progress.add_sums(sums)
    for i, batch in enumerate(loader, start=first_step * update_freq):
        if i >= micro_batches:
            break
        seed_step(seed, epoch, i, rank)
        step = start_step + i // update_freq
        if i % update_freq == 0:
            apply_schedule(runtime.optimizer, float(lr_schedule[step]), float(wd_schedule[step]))
        with runtime.autocast():
            loss, extra = task.training_loss(model, batch, device, runtime.input_dtype)
        value = float(loss.detach())
        _check_step(value, batch.bad, bad_input, epoch, step, device)
        update = (i + 1) % update_freq == 0
        grad_norm = runtime.backward_step(loss, update, update_freq)
        if update and ema is not None:
            ema.update(runtime.module)
        lrs = [g["lr"] for g in runtime.optimizer.param_groups]
        opt_values = dict(loss_scale=runtime.loss_scale, lr=max(lrs), min_lr=min(lrs),
                          weight_decay=_decayed_weight_decay(runtime.optimizer), grad_norm=grad_norm)
        n = len(batch.video)
        progress.update(n=n, loss=value, **extra)
        if update:
            progress.update(**opt_values)
        if log_writer is not None:  # every micro-batch, at its global index (the official step)
            log_scalars(log_writer, start_step * update_freq + i, {"loss": value, **extra, **opt_values})
        progress.step(i, n * get_world_size())
        if update and after_step is not None and (i + 1) // update_freq < steps_per_epoch:
            after_step((i + 1) // update_freq, progress)
    if progress.meters["loss"].count == 0:
        raise RuntimeError(f"epoch {epoch} ran no step: the training set has fewer than "
                           f"batch_size * update_freq * world_size samples")
    meters = progress.meters
    names = sorted(meters)
    sums_all = all_reduce_sum([meters[k].total for k in names] + [meters[k].count for k in names], device)
    return {k: sums_all[j] / max(sums_all[len(names) + j], 1e-12) for j, k in enumerate(names)}
