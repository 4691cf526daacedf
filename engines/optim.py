"""Parameter groups with layer-wise lr decay and the optimiser built from the official flags.

Layer ids: embeddings (``cls_token``, ``pos_embed``, ``temporal_pos_embedding``, ``patch_embed.*``) are 0,
``layers.{i}.*`` is i + 1, everything else (final norm, head, CLIP decoders) is depth + 1. A group's
``lr_scale`` is ``layer_decay ** (depth + 1 - layer_id)``; the training loop multiplies the scheduled lr by it.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from timm.optim import create_optimizer_v2

logger = logging.getLogger(__name__)

_EMBEDDING_NAMES = ("cls_token", "pos_embed", "temporal_pos_embedding")


def layer_id(name: str, depth: int) -> int:
    """Layer id of a parameter name for a backbone with ``depth`` blocks (see module docstring)."""
    if name in _EMBEDDING_NAMES or name.startswith("patch_embed."):
        return 0
    if name.startswith("layers."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def _no_decay(name: str, param: torch.Tensor, skip: set[str]) -> bool:
    return param.ndim <= 1 or name.endswith(".bias") or name in skip or getattr(param, "_no_weight_decay", False)


def param_groups(
    named_params: Iterable[tuple[str, torch.nn.Parameter]],
    weight_decay: float,
    depth: int,
    layer_decay: float = 1.0,
    skip: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Group trainable parameters by (layer id, decay or not); each group has ``lr_scale`` and ``weight_decay``.

    1-D parameters, biases, names in ``skip`` (the model's ``no_weight_decay()``) and parameters flagged
    ``_no_weight_decay`` get weight decay 0.
    """
    skip = set(skip)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in named_params:
        if not param.requires_grad:
            continue
        lid = layer_id(name, depth)
        no_decay = _no_decay(name, param, skip)
        key = (lid, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "param_names": [],
                "layer_id": lid,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (depth + 1 - lid),
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]


def model_depth(model: torch.nn.Module) -> int:
    """Number of blocks: ``get_num_layers()`` when the model has it, else ``len(model.layers)``, else 0."""
    if hasattr(model, "get_num_layers"):
        return int(model.get_num_layers())
    layers = getattr(model, "layers", None)
    return len(layers) if layers is not None else 0


def build_optimizer(args: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Optimiser from ``--opt``, ``--lr``, ``--weight_decay``, ``--layer_decay``, ``--opt_eps``, ``--opt_betas``, ``--momentum``."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    depth = model_depth(model)
    groups = param_groups(model.named_parameters(), args.weight_decay, depth, getattr(args, "layer_decay", 1.0), skip)
    for group in groups:
        group.pop("param_names")
    kwargs: dict[str, Any] = {"eps": args.opt_eps}
    if args.opt_betas is not None:
        kwargs["betas"] = tuple(args.opt_betas)
    if args.opt.lower().endswith("sgd") or args.opt.lower() == "momentum":
        kwargs = {"momentum": args.momentum}
    optimizer = create_optimizer_v2(groups, opt=args.opt, lr=args.lr, weight_decay=0.0, **kwargs)
    logger.info("optimizer %s with %d parameter groups, depth %d, layer decay %s",
                args.opt, len(groups), depth, getattr(args, "layer_decay", 1.0))
    return optimizer


def apply_schedule(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Set each group's lr to ``lr * lr_scale`` and, for decayed groups, its weight decay to ``weight_decay``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if group["weight_decay"] > 0:
            group["weight_decay"] = weight_decay
