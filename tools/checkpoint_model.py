"""A VideoMamba classifier built from a trained checkpoint, for the inference tools (predict, extract_features,
export).

The architecture (depth, width, patch, classes, tubelet, frames, resolution) is read from the state dict, so any
size of ``--model``'s family loads, except that a checkpoint of another registered size (e.g. a middle checkpoint
with ``--model videomamba_tiny``) is an error rather than a mislabelled result. The frames and resolution may be
overridden (the position tables are then resampled by ``models.checkpoint.checkpoint_filter_fn``). The model is
built through ``timm.create_model(..., pretrained=True)`` with the state dict handed over in
``pretrained_cfg_overlay``, so the file is read once.
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Mapping

import timm
import torch

from models.checkpoint import read_state_dict
from models.videomamba import MODEL_SIZES  # importing it registers the models with timm

CLASSIFIERS = tuple(f"videomamba_{size}" for size in MODEL_SIZES)

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """The checkpoint file is not a VideoMamba classifier that fits the requested model."""


@dataclass(frozen=True)
class CheckpointShape:
    """Architecture facts read from a VideoMamba classification state dict (``num_classes`` 0: no head)."""

    embed_dim: int
    depth: int
    patch_size: int
    num_classes: int
    kernel_size: int
    num_frames: int
    img_size: int


def infer_shape(state_dict: Mapping[str, torch.Tensor], path: str) -> CheckpointShape:
    """Depth, width, classes, tubelet, frames and resolution of a VideoMamba classifier state dict."""
    required = ("cls_token", "pos_embed", "temporal_pos_embedding", "patch_embed.proj.weight")
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise CheckpointError(f"{path}: not a VideoMamba classification checkpoint (missing {', '.join(missing)})")
    layers = {int(m.group(1)) for key in state_dict if (m := re.match(r"layers\.(\d+)\.", key))}
    if not layers:
        raise CheckpointError(f"{path}: not a VideoMamba checkpoint (no layers.N.* tensors)")
    patch = state_dict["patch_embed.proj.weight"]
    kernel = int(patch.shape[2]) if patch.ndim == 5 else 1
    grid = math.isqrt(int(state_dict["pos_embed"].shape[1]) - 1)
    head = state_dict.get("head.weight")
    return CheckpointShape(embed_dim=int(state_dict["cls_token"].shape[-1]), depth=max(layers) + 1,
                           patch_size=int(patch.shape[-1]), num_classes=0 if head is None else int(head.shape[0]),
                           kernel_size=kernel,
                           num_frames=int(state_dict["temporal_pos_embedding"].shape[1]) * kernel,
                           img_size=grid * int(patch.shape[-1]))


def load_model(name: str, checkpoint: str | os.PathLike, num_frames: int | None = None,
               input_size: int | None = None,
               model_key: str = "model|module") -> tuple[torch.nn.Module, CheckpointShape]:
    """The registered model ``name`` shaped after ``checkpoint``, its weights loaded, in eval mode.

    ``num_frames`` / ``input_size`` default to the checkpoint's. Returns the model and the checkpoint's shape;
    raises ``CheckpointError`` when the file does not fit ``name`` and ``FileNotFoundError`` / ``ValueError`` (from
    ``models.checkpoint``) when it is missing or not a checkpoint.
    """
    if name not in CLASSIFIERS:
        raise CheckpointError(f"--model {name}: not a VideoMamba classifier; choose from {', '.join(CLASSIFIERS)}")
    path = os.fspath(checkpoint)
    state_dict = read_state_dict(path, model_key)
    shape = infer_shape(state_dict, path)
    standard = [f"videomamba_{size}" for size, cfg in MODEL_SIZES.items()
                if (cfg["embed_dim"], cfg["depth"]) == (shape.embed_dim, shape.depth)]
    if standard and name not in standard:
        raise CheckpointError(f"{path}: a {standard[0]} checkpoint (depth {shape.depth}, width {shape.embed_dim}), "
                              f"not --model {name}")
    frames = num_frames or shape.num_frames
    size = input_size or shape.img_size
    if frames % shape.kernel_size:
        raise CheckpointError(f"{path}: --num_frames {frames} is not a multiple of the checkpoint's tubelet "
                              f"size {shape.kernel_size}")
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": state_dict},
                              num_frames=frames, img_size=size, kernel_size=shape.kernel_size,
                              num_classes=shape.num_classes, depth=shape.depth, embed_dim=shape.embed_dim,
                              patch_size=shape.patch_size)
    missing = [key for key in model.state_dict() if key not in state_dict]
    if missing:
        raise CheckpointError(f"{path}: does not fit --model {name} (missing {', '.join(missing[:5])})")
    logger.info("%s: depth %d, width %d, %d classes, %d frames at %d px", name, shape.depth, shape.embed_dim,
                shape.num_classes, frames, size)
    return model.eval(), shape
