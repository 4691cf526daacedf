"""Start-of-run chores shared by the entry points: process group, logging, seeds, saved args, loaders."""
from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from utils.distributed import DistInfo, init_distributed
from utils.logging import setup_logging
from utils.seeding import EpochSampler

logger = logging.getLogger(__name__)


def start_run(args: Any) -> tuple[DistInfo, Any | None]:
    """Initialise distribution, logging and seeds; save ``args.json``; open TensorBoard on rank 0.

    Returns the process's ``DistInfo`` and a tensorboardX writer (None without ``--log_dir`` or off rank 0).
    """
    info = init_distributed(args.device, args.dist_url, need_group=args.enable_deepspeed, openmpi=args.dist_on_itp)
    setup_logging(args.output_dir or None, info.rank)
    seed = args.seed + info.rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    writer = None
    if info.is_main:
        if args.output_dir:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(args.output_dir) / "args.json", "w") as f:
                json.dump(vars(args), f, indent=2, default=str)
        if args.log_dir:
            from tensorboardX import SummaryWriter

            os.makedirs(args.log_dir, exist_ok=True)
            writer = SummaryWriter(logdir=args.log_dir)
    logger.info("arguments: %s", json.dumps(vars(args), default=str))
    return info, writer


def make_loader(dataset: Dataset, args: Any, info: DistInfo, train: bool, batch_size: int,
                shard: bool, collate_fn: Callable | None = None) -> DataLoader:
    """Training loaders shuffle through ``utils.seeding.EpochSampler`` (``(epoch, index)`` keys, a start position
    for mid-epoch resume); evaluation loaders are sequential, or sharded without shuffling when ``shard`` (the
    sampler pads)."""
    if train:
        sampler: Any = EpochSampler(dataset, num_replicas=info.world_size, rank=info.rank, seed=args.seed)
    elif shard and info.distributed:
        sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=False)
    else:
        sampler = SequentialSampler(dataset)
    workers = args.num_workers
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=args.pin_mem and info.device.type == "cuda", drop_last=train,
                      collate_fn=collate_fn, persistent_workers=workers > 0)
