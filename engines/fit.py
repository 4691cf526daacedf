"""The epoch loop shared by fine-tuning and pretraining, plus the set-up both entry points need.

``fit`` trains epochs, validates, saves ``checkpoint-{epoch}`` / ``-latest`` / ``-best`` (the official keys
``model``, ``optimizer``, ``epoch``, ``scaler``, ``args``, ``model_ema`` plus our ``config``, ``rng``, ``best``,
``step``) and appends JSON lines to ``log.txt`` (the official keys ``train_*``, ``val_*``, ``epoch``,
``n_parameters``).
With ``--save_ckpt_steps`` / ``--save_ckpt_minutes`` it also writes ``checkpoint-latest`` inside an epoch: ``epoch``
is then the last finished epoch (as the official resume expects) and ``epoch_step`` the optimiser steps done in
the next one, with ``train_sums`` (each rank's meter sums so far) and ``samples_per_step``. A run resumed from any
of these continues at the exact next sample and, every random draw being keyed by its position
(``utils.seeding``), ends with the weights an uninterrupted run would have.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from timm.utils import ModelEmaV2

from engines import checkpoint as ckpt
from engines.contracts import BadInputCount, Runtime, Task
from engines.optim import create_optimizer
from engines.runtime import DeepSpeedRuntime, TorchRuntime, amp_dtype, deepspeed_config
from engines.schedule import cosine_schedule
from engines.train import train_one_epoch
from utils.config import EmaConfig, OptimConfig, RuntimeConfig, changed_flags
from utils.distributed import DistInfo, get_rank
from utils.seeding import EpochSampler

logger = logging.getLogger(__name__)


def schedules(optim: OptimConfig, steps_per_epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-step lr (warm-up from ``optim.warmup_start``) and weight-decay schedules."""
    lr = cosine_schedule(optim.lr, optim.min_lr, optim.epochs, steps_per_epoch, optim.warmup_epochs,
                         optim.warmup_steps, optim.warmup_start)
    wd = cosine_schedule(optim.weight_decay, optim.weight_decay_end, optim.epochs, steps_per_epoch)
    return lr, wd


def build_runtime(optim: OptimConfig, run: RuntimeConfig, model: torch.nn.Module, info: DistInfo,
                  find_unused_parameters: bool = False) -> TorchRuntime | DeepSpeedRuntime:
    """Optimiser plus the DeepSpeed engine (``--enable_deepspeed``) or the plain PyTorch runtime, checkpointing
    into ``run.output_dir``."""
    if optim.lr_scale != 1.0:
        logger.info("lr scaled by %.4g (total batch %d): lr %.3g, min_lr %.3g, warmup_lr %.3g", optim.lr_scale,
                    samples_per_step(run), optim.lr, optim.min_lr, optim.warmup_lr)
    optimizer = create_optimizer(optim, model, deepspeed=run.enable_deepspeed)
    if run.enable_deepspeed:
        return DeepSpeedRuntime(model, optimizer, info.device, deepspeed_config(optim, run), run.output_dir,
                                run.trust_checkpoint)
    dtype = amp_dtype(info.device, run.no_amp, run.bf16)
    logger.info("plain PyTorch runtime, autocast dtype %s, grad scaler %s%s", dtype,
                "on" if run.loss_scaler else "off", ", DDP" if info.distributed else "")
    return TorchRuntime(model, optimizer, info.device, dtype, optim.clip_grad, info.distributed,
                        find_unused_parameters, run.output_dir, loss_scaling=run.loss_scaler,
                        trust_checkpoint=run.trust_checkpoint)


def build_ema(ema: EmaConfig | None, model: torch.nn.Module) -> ModelEmaV2 | None:
    """The EMA of ``model``'s weights (``--model_ema``), or None."""
    if ema is None:
        return None
    device = torch.device("cpu") if ema.model_ema_force_cpu else None
    logger.info("EMA of the weights with decay %s", ema.model_ema_decay)
    return ModelEmaV2(model, decay=ema.model_ema_decay, device=device)


@dataclass
class RunState:
    """What a resumed run continues from: epoch, optimiser steps already done in it and their meter sums."""

    start_epoch: int = 0
    best: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    start_step: int = 0
    train_sums: dict[str, tuple[float, float]] | None = None


def samples_per_step(run: RuntimeConfig) -> int:
    """Training samples per optimiser step over all ranks: batch_size × update_freq × world size."""
    return run.batch_size * run.update_freq * run.world_size


def warn_changed_flags(path: Path, saved: Any, flags: dict[str, Any], chosen_by: str) -> dict[str, tuple[Any, Any]]:
    """Warn when the checkpoint a run resumes was written with other flags (``utils.config.changed_flags``: the
    checkpoint's ``args`` against this run's ``flags``); ``chosen_by`` says why this checkpoint. Returns them."""
    changed = changed_flags(saved, flags)
    if changed:
        listed = ", ".join(f"--{name} {old!r} (now {new!r})" for name, (old, new) in changed.items())
        logger.warning("%s was written with other flags than this run's: %s. Resuming it %s", path, listed, chosen_by)
    return changed


def resume(run: RuntimeConfig, runtime: Runtime, ema: ModelEmaV2 | None,
           flags: dict[str, Any] | None = None) -> RunState:
    """Load ``--resume``, or with ``--auto_resume`` the newest complete checkpoint in ``--output_dir``.

    Official checkpoints resume too: their EMA is under ``model_ema`` (ours before issue 12: ``ema``). A mid-epoch
    checkpoint resumes at its step when the samples per step are unchanged; otherwise its epoch starts over.
    ``flags``: this run's ``args`` entry (``utils.config.checkpoint_args``); the flags that differ from the
    checkpoint's are named in a warning.
    """
    path = Path(run.resume) if run.resume else None
    if path is None and run.auto_resume and run.output_dir:
        path = ckpt.recover_and_find_latest(Path(run.output_dir))
    if path is None:
        return RunState(start_epoch=run.start_epoch)
    if flags is not None:
        why = ("as --resume asks" if run.resume else f"as the newest checkpoint in --output_dir {run.output_dir} (to "
               "start a new run instead, use another --output_dir or --no_auto_resume)")
        warn_changed_flags(path, ckpt.peek(path, run.trust_checkpoint).get("args"), flags, why)
    state = runtime.load(path)
    if "epoch" not in state:  # weights only, as the official auto_load_model accepts: no epoch, no optimiser state
        logger.warning("%s holds no epoch (weights only): loaded the weights, training starts at epoch %d", path,
                       run.start_epoch)
        return RunState(start_epoch=run.start_epoch)
    ema_state = state.get("model_ema", state.get("ema"))
    if ema is not None and ema_state is not None:
        ema.module.load_state_dict(ema_state)
    if state.get("rng") is not None:
        ckpt.set_rng_state(state["rng"])
    resumed = RunState(start_epoch=state["epoch"] + 1, best=state.get("best"),
                       start_step=state.get("epoch_step", 0))
    if resumed.start_step and state.get("samples_per_step") != samples_per_step(run):
        logger.warning("%s stopped %d steps into epoch %d with %s samples per step, this run has %d "
                       "(batch_size × update_freq × world size): epoch %d starts over", path, resumed.start_step,
                       resumed.start_epoch, state.get("samples_per_step"), samples_per_step(run),
                       resumed.start_epoch)
        resumed.start_step = 0
    per_rank = state.get("train_sums") or []
    if resumed.start_step and len(per_rank) == run.world_size:  # else the epoch's averages start at the resume
        resumed.train_sums = per_rank[get_rank()]
    logger.info("resumed from %s at epoch %d, step %d of it", path, resumed.start_epoch, resumed.start_step)
    return resumed


def _start_epoch(loader: Any, epoch: int, skip_micro_batches: int) -> None:
    """Point the training sampler at ``epoch``, past the micro-batches a resumed run already trained on."""
    sampler = getattr(loader, "sampler", None)
    if skip_micro_batches:
        if not isinstance(sampler, EpochSampler):
            raise RuntimeError("resuming inside an epoch needs a loader with utils.seeding.EpochSampler")
        sampler.set_epoch(epoch, start=skip_micro_batches * loader.batch_size)
    elif hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def _improved(value: float, best: float | None, higher_is_better: bool) -> bool:
    if best is None:
        return True
    return value > best if higher_is_better else value < best


def append_log(output_dir: str, record: dict[str, Any]) -> None:
    """One JSON line in ``output_dir/log.txt``."""
    if output_dir:
        with open(Path(output_dir) / "log.txt", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def fit(optim: OptimConfig, run: RuntimeConfig, runtime: Runtime, task: Task, train_loader: Any,
        steps_per_epoch: int, info: DistInfo, *, ema: ModelEmaV2 | None = None,
        validate: Callable[[], dict[str, float]] | None = None, log_writer: Any | None = None,
        state: RunState | None = None, saved_with: dict[str, Any] | None = None,
        bad_input: BadInputCount | None = None) -> RunState:
    """Train from ``state.start_epoch`` to ``optim.epochs``; returns the final state (best metric, history).

    ``saved_with``: entries every checkpoint carries (the entry scripts: the official ``args`` and the typed
    ``config``). ``bad_input``: the run-wide count of unreadable training files (the training set's tracker).
    An epoch whose validation scored no video (all unreadable) has no validation: a warning, no best update.
    """
    state = state or RunState()
    lr_schedule, wd_schedule = schedules(optim, steps_per_epoch)
    n_parameters = sum(p.numel() for p in runtime.module.parameters() if p.requires_grad)
    saver = ckpt.Checkpointer(run, optim.epochs, saved_with or {}, runtime, ema, info, steps_per_epoch,
                              samples_per_step(run))
    started = time.time()
    for epoch in range(state.start_epoch, optim.epochs):
        first = state.start_step if epoch == state.start_epoch else 0
        _start_epoch(train_loader, epoch, first * run.update_freq)
        train_stats = train_one_epoch(
            runtime, task, train_loader, epoch, lr_schedule, wd_schedule, epoch * steps_per_epoch, steps_per_epoch,
            run.update_freq, ema, log_writer, run.print_freq, seed=run.seed, first_step=first,
            sums=state.train_sums if first else None,
            after_step=lambda done, progress, e=epoch: saver.inside_epoch(e, done, progress.sums(), state.best),
            bad_input=bad_input)
        rng = ckpt.rng_state()
        val_stats = validate() if validate is not None else {}
        ckpt.set_rng_state(rng)
        improved = False
        if val_stats and task.best_key not in val_stats:
            logger.warning("epoch %d: no validation video could be decoded (%d missing), so this epoch has no "
                           "validation: checkpoint-best and the best %s are left as they were", epoch,
                           int(val_stats.get("missing", 0)), task.best_key)
        elif val_stats:
            value = val_stats[task.best_key]
            improved = _improved(value, state.best, task.higher_is_better)
            if improved:
                state.best = value
            logger.info("epoch %d validation: %s (best %s %.4f)", epoch,
                        {k: round(v, 4) for k, v in val_stats.items()}, task.best_key, state.best)
        saver.end_of_epoch(epoch, rng, state.best, improved)
        record = {**{f"train_{k}": v for k, v in train_stats.items()},
                  **{f"val_{k}": v for k, v in val_stats.items()}, "epoch": epoch, "n_parameters": n_parameters}
        state.history.append(record)
        if info.is_main:
            append_log(run.output_dir, record)
            if log_writer is not None:  # the official epoch-level scalars
                for k in ("acc1", "acc5", "loss"):
                    if k in val_stats:
                        log_writer.add_scalar(f"perf/val_{k}", val_stats[k], epoch)
                log_writer.flush()
    logger.info("training finished in %.1f s", time.time() - started)
    return state
