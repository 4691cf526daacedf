"""A VideoMamba classifier built from a trained checkpoint or a pretrained tag, for the inference tools (predict,
extract_features, export).

``--checkpoint`` is a file (the architecture, i.e. depth, width, patch, classes, tubelet, frames and resolution, is
read from the state dict, so any size of ``--model``'s family loads, except that a checkpoint of another registered
size, e.g. a middle checkpoint with ``--model videomamba_tiny``, is an error rather than a mislabelled result), an
``hf-hub:<org>/<repo>/<file>`` id (read the same way), or a pretrained tag such as
``videomamba_small.k400_f8_res224`` (its model and clip size are the tag's, so ``--model`` may be left out; the
rest is read from the file as for files). The frames and resolution may be overridden (the position tables are then
resampled by ``models.checkpoint.checkpoint_filter_fn``). The model is built through ``timm.create_model(...,
pretrained=True)`` with the state dict handed over, so the file is read once, weights-only unless
``--trust_checkpoint``.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import timm
import torch

from models.checkpoint import read_state_dict
from models.hub import check_weights_arg, is_pretrained_tag, pretrained_tag_cfg
from models.videomamba import MODEL_SIZES  # importing it registers the models with timm
from utils.safe_load import TRUST_FLAG, TRUST_HELP

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


def infer_shape(state_dict: Mapping[str, torch.Tensor], path: str,
                clip_size: tuple[int, ...] | None = None) -> CheckpointShape:
    """Depth, width, classes, tubelet, frames and resolution of a VideoMamba classifier state dict; the frames and
    resolution are ``clip_size`` (C, T, H, W) when given (a pretrained tag's: ImageNet ones have no temporal table)."""
    required = ("cls_token", "pos_embed", "patch_embed.proj.weight")
    if clip_size is None:
        required += ("temporal_pos_embedding",)
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
    if clip_size is None:
        frames, size = int(state_dict["temporal_pos_embedding"].shape[1]) * kernel, grid * int(patch.shape[-1])
    else:
        frames, size = clip_size[1], clip_size[-1]
    return CheckpointShape(embed_dim=int(state_dict["cls_token"].shape[-1]), depth=max(layers) + 1,
                           patch_size=int(patch.shape[-1]), num_classes=0 if head is None else int(head.shape[0]),
                           kernel_size=kernel, num_frames=frames, img_size=size)


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--checkpoint``, ``--model_key`` and ``--trust_checkpoint``, as every inference tool takes them."""
    parser.add_argument("--model", default=None,
                        help="registered name, e.g. videomamba_small (not needed with a pretrained tag)")
    parser.add_argument("--checkpoint", required=True,
                        help="trained classifier: a .pth / .safetensors file, a pretrained tag such as "
                             "videomamba_small.k400_f8_res224 (MODEL_ZOO.md) or hf-hub:<org>/<repo>/<file>")
    parser.add_argument("--model_key", default="model|module", help="'|'-separated keys holding the state dict")
    parser.add_argument(TRUST_FLAG, action="store_true", help=TRUST_HELP)


def check_checkpoint_args(args: argparse.Namespace) -> None:
    """Fail fast, downloading nothing: an unknown tag, a missing file, or no ``--model`` for a file."""
    check_weights_arg(args.checkpoint, "--checkpoint")
    if args.model is None and not is_pretrained_tag(args.checkpoint):
        raise CheckpointError(f"--model is needed with --checkpoint {args.checkpoint} (only a pretrained tag names "
                              f"its model); choose from {', '.join(CLASSIFIERS)}")


def weights_id(checkpoint: str | os.PathLike) -> str:
    """How to record where weights came from: a local file's absolute path, a tag / URL / hub id as given."""
    text = os.fspath(checkpoint)
    if is_pretrained_tag(text) or "://" in text or text.startswith("hf-hub:"):
        return text
    return str(Path(text).resolve())


def _tag_model(name: str | None, tag: str) -> tuple[str, tuple[int, ...]]:
    """The registered classifier and clip size (C, T, H, W) of a pretrained tag, checked against ``--model``."""
    cfg = pretrained_tag_cfg(tag, "--checkpoint")
    if cfg.architecture not in CLASSIFIERS:
        raise CheckpointError(f"--checkpoint {tag}: a {cfg.architecture} checkpoint, not a classifier")
    if name is not None and name != cfg.architecture:
        raise CheckpointError(f"--checkpoint {tag}: a {cfg.architecture} checkpoint, not --model {name}")
    return cfg.architecture, tuple(cfg.input_size)


def load_model(name: str | None, checkpoint: str | os.PathLike, num_frames: int | None = None,
               input_size: int | None = None, model_key: str = "model|module",
               trust_checkpoint: bool = False) -> tuple[torch.nn.Module, CheckpointShape]:
    """The registered model ``name`` shaped after ``checkpoint``, its weights loaded, in eval mode.

    ``checkpoint`` is a file or ``hf-hub:`` id (``name`` required), or a pretrained tag (``name`` may be None: the
    tag's model; the frames and resolution are the tag's clip size). ``num_frames`` / ``input_size`` default to the
    checkpoint's. Returns the model (``model.pretrained_cfg["architecture"]`` is its registered name) and the
    checkpoint's shape; raises ``CheckpointError`` when the weights do not fit ``name`` and ``FileNotFoundError`` /
    ``ValueError`` / ``utils.errors.UserError`` (from ``models.checkpoint`` / ``models.hub``) when they cannot be had.
    """
    path = os.fspath(checkpoint)
    tag = is_pretrained_tag(path)
    clip_size = None
    if tag:
        name, clip_size = _tag_model(name, path)
    elif name not in CLASSIFIERS:
        raise CheckpointError(f"--model {name}: not a VideoMamba classifier; choose from {', '.join(CLASSIFIERS)}")
    state_dict = read_state_dict(path, model_key, trust_checkpoint=trust_checkpoint, flag="--checkpoint")
    shape = infer_shape(state_dict, path, clip_size)
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
    model = timm.create_model(path if tag else name, pretrained=True, pretrained_cfg_overlay={"state_dict": state_dict},
                              num_frames=frames, img_size=size, kernel_size=shape.kernel_size,
                              num_classes=shape.num_classes, depth=shape.depth, embed_dim=shape.embed_dim,
                              patch_size=shape.patch_size)
    image = "temporal_pos_embedding" not in state_dict  # an ImageNet-1K tag: the temporal table starts at zero
    missing = [key for key in model.state_dict()
               if key not in state_dict and not (image and key == "temporal_pos_embedding")]
    if missing:
        raise CheckpointError(f"{path}: does not fit --model {name} (missing {', '.join(missing[:5])})")
    logger.info("%s: depth %d, width %d, %d classes, %d frames at %d px", name, shape.depth, shape.embed_dim,
                shape.num_classes, frames, size)
    return model.eval(), shape
