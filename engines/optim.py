"""Parameter groups with layer-wise lr decay and the optimiser built from the official flags.

The groups reproduce the official ``get_parameter_groups`` exactly (membership, order and hyper-parameters), so an
official ``checkpoint-latest.pth`` resumes with its optimiser state:

* Weight decay 0 for 1-D parameters, names ending in ``.bias`` and the model's ``no_weight_decay()`` names; every
  other parameter (the 2-D SSM ``A_log`` / ``A_b_log`` included) is decayed.
* ``--layer_decay`` < 1 splits the groups by layer id, ``lr_scale = layer_decay ** (depth + 1 - layer_id)``.
  ``--layer_decay_mode official`` (default): the official layer-id function, whose per-block branch is disabled
  for VideoMamba, gives id 0 to ``cls_token``, ``mask_token``, ``pos_embed`` and ``patch_embed.*`` and
  ``depth + 1`` (scale 1) to everything else. ``blocks``: true per-block decay, ``layers.{i}.*`` is i + 1 and
  ``temporal_pos_embedding`` is 0 as well.
* Groups appear in the order their first parameter has in the official model's ``named_parameters()``
  (``official_order``), which decides the layout of the saved optimiser state.
* Official quirk kept: on the plain PyTorch path ``--weight_decay 0`` puts every parameter in one group without
  layer decay (DeepSpeed always gets the groups).
The training loop multiplies the scheduled lr by each group's ``lr_scale``.
"""
from __future__ import annotations

import logging
from argparse import Namespace
from collections.abc import Iterable
from typing import Any

import torch
from timm.optim import create_optimizer_v2

from utils.config import OptimConfig, optim_config

logger = logging.getLogger(__name__)

LAYER_DECAY_MODES = ("official", "blocks")

_EMBEDDINGS = ("cls_token", "mask_token", "pos_embed")
# Module registration order of the official VisionMamba classifier / pretraining student and Mamba mixer.
_TOP_ORDER = ("cls_token", "pos_embed", "temporal_pos_embedding", "patch_embed", "head", "layers", "norm_f",
              "norm", "clip_decoder")
_BLOCK_ORDER = ("mixer", "norm")
_MIXER_ORDER = ("A_log", "D", "A_b_log", "D_b", "in_proj", "conv1d", "x_proj", "dt_proj", "conv1d_b", "x_proj_b",
                "dt_proj_b", "out_proj")


def layer_id(name: str, depth: int, mode: str = "official") -> int:
    """Layer id of a parameter name for a backbone with ``depth`` blocks (see module docstring)."""
    if mode not in LAYER_DECAY_MODES:
        raise ValueError(f"--layer_decay_mode must be one of {LAYER_DECAY_MODES}, got {mode!r}")
    if name in _EMBEDDINGS or name.startswith("patch_embed"):
        return 0
    if mode == "blocks":
        if name == "temporal_pos_embedding":
            return 0
        if name.startswith("layers."):
            return int(name.split(".")[1]) + 1
    return depth + 1


def _rank(part: str, order: tuple[str, ...]) -> int:
    return order.index(part) if part in order else len(order)


def _official_key(name: str) -> tuple[int, ...]:
    parts = name.split(".")
    top = _rank(parts[0], _TOP_ORDER)
    if parts[0] != "layers" or len(parts) < 3 or not parts[1].isdigit():
        return (top,)
    block = (int(parts[1]), _rank(parts[2], _BLOCK_ORDER))
    mixer = _rank(parts[3], _MIXER_ORDER) if parts[2] == "mixer" and len(parts) > 3 else 0
    return (top, *block, mixer)


def official_order(named_params: Iterable[tuple[str, torch.nn.Parameter]]) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters in the order of the official model's ``named_parameters()`` (``head`` before ``layers``).

    A stable sort on module ranks: names the official models do not have keep their relative order at the end of
    their level.
    """
    return sorted(named_params, key=lambda item: _official_key(item[0]))


def no_weight_decay(name: str, param: torch.Tensor, skip: set[str]) -> bool:
    """Official rule: 1-D tensors, ``.bias`` and names in the model's ``no_weight_decay()``."""
    return param.ndim == 1 or name.endswith(".bias") or name in skip


def param_groups(
    named_params: Iterable[tuple[str, torch.nn.Parameter]],
    weight_decay: float,
    depth: int,
    layer_decay: float = 1.0,
    skip: Iterable[str] = (),
    mode: str = "official",
) -> list[dict[str, Any]]:
    """Trainable parameters grouped like the official ``get_parameter_groups`` (see module docstring).

    Each group has ``params``, ``param_names``, ``group_name`` (``decay`` / ``no_decay``, prefixed by
    ``layer_{id}_`` when ``layer_decay`` < 1), ``weight_decay`` and ``lr_scale``.
    """
    skip = set(skip)
    split_layers = layer_decay < 1.0
    groups: dict[str, dict[str, Any]] = {}
    for name, param in official_order(named_params):
        if not param.requires_grad:
            continue
        exempt = no_weight_decay(name, param, skip)
        group_name = "no_decay" if exempt else "decay"
        scale = 1.0
        if split_layers:
            lid = layer_id(name, depth, mode)
            group_name = f"layer_{lid}_{group_name}"
            scale = layer_decay ** (depth + 1 - lid)
        if group_name not in groups:
            groups[group_name] = {"params": [], "param_names": [], "group_name": group_name,
                                  "weight_decay": 0.0 if exempt else weight_decay, "lr_scale": scale}
        groups[group_name]["params"].append(param)
        groups[group_name]["param_names"].append(name)
    return list(groups.values())


def model_depth(model: torch.nn.Module) -> int:
    """Number of blocks: ``get_num_layers()`` when the model has it, else ``len(model.layers)``, else 0."""
    if hasattr(model, "get_num_layers"):
        return int(model.get_num_layers())
    layers = getattr(model, "layers", None)
    return len(layers) if layers is not None else 0


def optimizer_groups(optim: OptimConfig, model: torch.nn.Module, deepspeed: bool) -> list[dict[str, Any]]:
    """The groups handed to the optimiser (``param_names`` / ``group_name`` dropped), logged once."""
    if optim.weight_decay == 0 and not deepspeed and optim.layer_decay_mode == "official":
        logger.info("--weight_decay 0: one parameter group without layer decay (as the official optimiser factory)")
        return [{"params": [p for _, p in official_order(model.named_parameters())], "weight_decay": 0.0}]
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    depth = model_depth(model)
    groups = param_groups(model.named_parameters(), optim.weight_decay, depth, optim.layer_decay, skip,
                          optim.layer_decay_mode)
    logger.info("parameter groups (depth %d, layer decay %s, mode %s, no weight decay for %s):", depth,
                optim.layer_decay, optim.layer_decay_mode, sorted(skip))
    for group in groups:
        logger.info("  %s: %d tensors, lr scale %.6g, weight decay %s", group["group_name"], len(group["params"]),
                    group["lr_scale"], group["weight_decay"])
    return [{k: v for k, v in g.items() if k not in ("param_names", "group_name")} for g in groups]


def create_optimizer(optim: OptimConfig, model: torch.nn.Module, deepspeed: bool) -> torch.optim.Optimizer:
    """Optimiser ``optim.opt`` (timm's factory) at ``optim.lr`` over ``optimizer_groups``, with ``opt_eps``,
    ``opt_betas`` and ``momentum``: timm hands each to the optimisers that take it (``momentum`` to sgd, nesterov,
    momentum, sgdp, rmsprop, rmsproptf, as the official factory does)."""
    groups = optimizer_groups(optim, model, deepspeed)
    kwargs: dict[str, Any] = {"eps": optim.opt_eps, "momentum": optim.momentum}
    if optim.opt_betas is not None:
        kwargs["betas"] = tuple(optim.opt_betas)
    optimizer = create_optimizer_v2(groups, opt=optim.opt, lr=optim.lr, weight_decay=0.0, **kwargs)
    logger.info("optimizer %s with %d parameter groups", optim.opt, len(groups))
    return optimizer


def build_optimizer(args: Namespace, model: torch.nn.Module, deepspeed: bool = False) -> torch.optim.Optimizer:
    """The official entry point: the optimiser of the parsed flags (``--opt``, ``--lr`` as given, ``--weight_decay``,
    ``--layer_decay(_mode)``, ``--opt_eps``, ``--opt_betas``, ``--momentum``); see ``create_optimizer``."""
    return create_optimizer(optim_config(args, lr_scale=1.0, warmup_from_zero=False), model, deepspeed)


def apply_schedule(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Set each group's lr to ``lr * lr_scale`` and, for decayed groups, its weight decay to ``weight_decay``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if group["weight_decay"] > 0:
            group["weight_decay"] = weight_decay
