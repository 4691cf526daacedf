"""Why a checkpoint's weights do not fit a model, told in the entry scripts' flags: the width, the number of blocks,
each tensor whose shape differs (checkpoint vs model) and the keys only one side has.

Resuming (``engines.checkpoint.check_fits``) and ``--finetune`` (``models.checkpoint``) both explain a mismatch
with it. Keys are those of the VideoMamba models: blocks ``layers.{i}.``, ``patch_embed.proj.weight`` of shape
(width, 3, tubelet, patch, patch), ``pos_embed``, ``temporal_pos_embedding``, ``head.*``.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

import torch

_BLOCK = re.compile(r"layers\.(\d+)\.")
WIDTH_FLAGS = "--model / --embed_dim"
DEPTH_FLAGS = "--model / --depth"
# The flags that set a tensor's shape when the widths agree: the first matching key prefix; others: --model.
SHAPE_FLAGS = (
    ("temporal_pos_embedding", "--num_frames / --tubelet_size"),
    ("pos_embed", "--input_size"),
    ("patch_embed.", "--tubelet_size"),
    ("head.", "--nb_classes"),
)


def num_blocks(keys: Iterable[str]) -> int:
    """How many blocks ``layers.{i}.`` the keys of a state dict cover: 1 + the highest index (0: none)."""
    found = [int(m.group(1)) for m in map(_BLOCK.match, keys) if m]
    return max(found) + 1 if found else 0


def width(state: Mapping[str, torch.Tensor]) -> int | None:
    """The embedding width of a VideoMamba state dict (its patch embedding's output channels); None without one."""
    weight = state.get("patch_embed.proj.weight")
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) else None


def _listed(keys: list[str], limit: int) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def mismatch(saved: Mapping[str, torch.Tensor], model: Mapping[str, torch.Tensor], limit: int = 3) -> str | None:
    """What keeps ``saved`` from loading strictly into a model whose state dict is ``model``, naming the flags that
    set each difference; None when every key and shape agrees."""
    theirs, ours = width(saved), width(model)
    if theirs is not None and ours is not None and theirs != ours:
        return f"the checkpoint is {theirs} wide, the model {ours} (set by {WIDTH_FLAGS})"
    parts = []
    depth_saved, depth_model = num_blocks(saved), num_blocks(model)
    if depth_saved != depth_model:
        parts.append(f"the checkpoint has {depth_saved} blocks, the model {depth_model} (set by {DEPTH_FLAGS})")
    shared_depth = min(depth_saved, depth_model)

    def explained(key: str) -> bool:  # a block only one side has: said above
        match = _BLOCK.match(key)
        return match is not None and int(match.group(1)) >= shared_depth

    by_flags: dict[str, list[str]] = {}
    for key, value in saved.items():
        if key in model and tuple(value.shape) != tuple(model[key].shape):
            flags = next((f for prefix, f in SHAPE_FLAGS if key.startswith(prefix)), "--model")
            by_flags.setdefault(flags, []).append(f"{key} {tuple(value.shape)} vs {tuple(model[key].shape)}")
    parts += [f"{_listed(shapes, limit)} (set by {flags})" for flags, shapes in by_flags.items()]
    only_saved = [k for k in saved if k not in model and not explained(k)]
    only_model = [k for k in model if k not in saved and not explained(k)]
    if only_saved:
        parts.append(f"only the checkpoint has {_listed(only_saved, limit)}")
    if only_model:
        parts.append(f"only the model has {_listed(only_model, limit)}")
    return "; ".join(parts) or None
