"""Typed configurations for engine tests, made the way the entry scripts make them: run_class_finetuning.py's parsed
defaults with some flags set, through ``utils.config.finetune_config``."""
from __future__ import annotations

from typing import Any

import run_class_finetuning
from utils.config import FinetuneConfig, OptimConfig, RuntimeConfig, finetune_config


def finetune(**flags: Any) -> FinetuneConfig:
    """``finetune_config`` of the default flags with ``flags`` (flag names) set; the lr is not scaled."""
    args = run_class_finetuning.get_args_parser().parse_args([])
    values = vars(args)
    unknown = set(flags) - set(values)
    if unknown:
        raise KeyError(f"not flags of run_class_finetuning.py: {sorted(unknown)}")
    values.update(no_lr_scale=True, **flags)
    return finetune_config(args)


def optim_and_runtime(**flags: Any) -> tuple[OptimConfig, RuntimeConfig]:
    config = finetune(**flags)
    return config.optim, config.runtime
