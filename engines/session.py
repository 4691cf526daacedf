"""Start-of-run chores shared by the entry points: process group, logging, seeds, saved flags, loaders."""
from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from utils.config import RuntimeConfig
from utils.distributed import DistInfo, init_distributed
from utils.errors import UsageError
from utils.logging import setup_logging
from utils.seeding import EpochSampler

logger = logging.getLogger(__name__)


def start_run(run: RuntimeConfig, flags: dict[str, Any], config: Any) -> tuple[DistInfo, Any | None]:
    """Initialise distribution, logging and seeds; save the parsed ``flags`` as ``args.json`` (``eval_args.json``
    under ``--eval``, which usually points at a training run's folder and must not replace its record); log them and
    the typed ``config`` (a dataclass); open TensorBoard on rank 0.

    Returns the process's ``DistInfo`` and a tensorboardX writer (None without ``--log_dir`` or off rank 0).
    """
    info = init_distributed(run.device, run.dist_url, need_group=run.enable_deepspeed, openmpi=run.dist_on_itp)
    setup_logging(run.output_dir or None, info.rank)
    seed = run.seed + info.rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    writer = None
    if info.is_main:
        if run.output_dir:
            Path(run.output_dir).mkdir(parents=True, exist_ok=True)
            name = "eval_args.json" if flags.get("eval") else "args.json"
            with open(Path(run.output_dir) / name, "w") as f:
                json.dump(flags, f, indent=2, default=str)
        if run.log_dir:
            from tensorboardX import SummaryWriter

            os.makedirs(run.log_dir, exist_ok=True)
            writer = SummaryWriter(logdir=run.log_dir)
    logger.info("arguments: %s", json.dumps(flags, default=str))
    logger.info("configuration: %s", json.dumps(asdict(config), default=str))
    return info, writer


def make_loader(dataset: Dataset, run: RuntimeConfig, info: DistInfo, train: bool, batch_size: int,
                shard: bool, collate_fn: Callable) -> DataLoader:
    """Training loaders shuffle through ``utils.seeding.EpochSampler`` (``(epoch, index)`` keys, a start position
    for mid-epoch resume); evaluation loaders are sequential, or sharded without shuffling when ``shard`` (the
    sampler pads). ``collate_fn`` makes the batch type (the datasets' ``collate``)."""
    if train:
        sampler: Any = EpochSampler(dataset, num_replicas=info.world_size, rank=info.rank, seed=run.seed)
    elif shard and info.distributed:
        sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=False)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=run.num_workers,
                      pin_memory=run.pin_mem and info.device.type == "cuda", drop_last=train,
                      collate_fn=collate_fn, persistent_workers=run.num_workers > 0)


def training_steps_per_epoch(loader: DataLoader, run: RuntimeConfig, info: DistInfo, data_path: str) -> int:
    """Optimiser steps per epoch of a training ``loader``; a ``UsageError`` when the data is less than one step."""
    steps = len(loader) // run.update_freq
    if steps == 0:
        raise UsageError(f"{data_path}: {len(loader.dataset)} training videos are fewer than one step of batch_size "
                         f"{run.batch_size} × update_freq {run.update_freq} × {info.world_size} ranks")
    return steps
