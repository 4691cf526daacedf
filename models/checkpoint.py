"""Loading official-format VideoMamba checkpoints for fine-tuning (``--finetune``).

``checkpoint_filter_fn`` is pure: it adapts a state dict to a model's shapes (head dropping, 2D->3D patch
embedding inflation, bicubic spatial / linear temporal position-table resampling) and returns a new dict.
``read_state_dict`` reads a checkpoint (a file, a URL, a pretrained tag or an ``hf-hub:`` id: ``models.hub``),
weights-only unless trusted (``utils.safe_load``), and finds and un-prefixes its state dict;
``load_finetune_checkpoint`` (the ``--finetune`` path) and ``timm.create_model(..., pretrained=True)``
(``models/build.py``) both read checkpoints with it and adapt them with ``checkpoint_filter_fn``.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
from safetensors.torch import load_file

from models.hub import fetch_checkpoint
from models.pos_embed import resample_abs_pos_embed, resample_temporal_pos_embed
from utils.errors import BadFileError, MissingPathError
from utils.safe_load import load_torch_file
from utils.state_dicts import DEPTH_FLAGS, WIDTH_FLAGS, num_blocks, width

_logger = logging.getLogger(__name__)

STRIPPED_PREFIXES = ("backbone.", "encoder.", "module.")
INFLATE_MODES = ("center", "avg")
K710_CLASSES = 710  # Kinetics-710: the official K400/600/700 union checkpoints


def read_label_map(path: str | os.PathLike) -> list[int]:
    """A ``--label_map`` JSON file: a list of head rows (ints) of the checkpoint, one per target class."""
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BadFileError(f"--label_map {path}: cannot read a JSON list of class indices ({err})") from err
    if not isinstance(rows, list) or not rows or not all(isinstance(r, int) and r >= 0 for r in rows):
        raise BadFileError(f"--label_map {path}: expected a non-empty JSON list of non-negative ints")
    return rows


def select_head_rows(state_dict: Mapping[str, torch.Tensor], num_classes: int,
                     label_map: Sequence[int] | None = None, source: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """Keep the classifier rows that match the target classes (a new dict; the input is untouched).

    With ``label_map``, rows ``label_map`` (one per target class). Otherwise the official rule for Kinetics-710
    checkpoints: 710 → 400 classes keeps the first 400 rows; 710 → 600 / 700 needs a label map (``--label_map``)
    and is an error without one (``BadFileError`` naming ``source``). Any other head is returned as is.
    """
    out = dict(state_dict)
    weight = out.get("head.weight")
    if weight is None or weight.ndim != 2:
        return out
    rows = weight.shape[0]
    if label_map is not None:
        top = max(label_map, default=-1)
        if len(label_map) != num_classes or top >= rows:
            raise BadFileError(f"--label_map has {len(label_map)} entries up to {top}, but the model has "
                               f"{num_classes} classes and the head of {source} {rows} rows")
        index = torch.as_tensor(list(label_map), dtype=torch.long)
    elif rows == K710_CLASSES and num_classes == 400:
        index = torch.arange(400)
    elif rows == K710_CLASSES and num_classes in (600, 700):
        raise BadFileError(f"{source} has a {K710_CLASSES}-class head; fine-tuning to {num_classes} classes "
                           f"needs --label_map (the official k710/label_mixto{num_classes}.json)")
    else:
        return out
    _logger.info("keeping %d of the %d head rows of the checkpoint%s", len(index), rows,
                 " (label map)" if label_map is not None else " (the first 400: Kinetics-710 -> 400)")
    for key in ("head.weight", "head.bias"):
        if key in out:
            out[key] = out[key][index]
    return out


def inflate_patch_weight(weight: torch.Tensor, time_dim: int, mode: str = "center") -> torch.Tensor:
    """Turn a patch-embedding kernel (C, 3, [t,] p, p) into a Conv3d kernel (C, 3, time_dim, p, p).

    A 3D source is first summed over time (its response to a static clip). "center" puts the 2D kernel in
    frame time_dim // 2 with zeros elsewhere (the official default); "avg" repeats it divided by time_dim.
    Both give the 2D response on a static clip.
    """
    if mode not in INFLATE_MODES:
        raise ValueError(f"inflate must be one of {INFLATE_MODES}, got {mode!r}")
    if weight.ndim == 5:
        weight = weight.sum(dim=2)
    if weight.ndim != 4:
        raise ValueError(f"expected a 4-D or 5-D patch kernel, got shape {tuple(weight.shape)}")
    if mode == "avg":
        return weight.unsqueeze(2).repeat(1, 1, time_dim, 1, 1) / time_dim
    out = weight.new_zeros(weight.shape[0], weight.shape[1], time_dim, *weight.shape[2:])
    out[:, :, time_dim // 2] = weight
    return out


def _adapt_tensor(key: str, value: torch.Tensor, target: torch.Tensor, model: nn.Module,
                  orig_t_size: int | None, inflate: str, source: str) -> torch.Tensor:
    """Reshape one checkpoint tensor to the model's shape, or raise naming the key and both shapes."""
    if key == "patch_embed.proj.weight" and target.ndim == 5 and value.ndim in (4, 5) \
            and value.shape[:2] == target.shape[:2] and value.shape[-2:] == target.shape[-2:]:
        _logger.info("inflating %s %s -> %s (%s)", key, tuple(value.shape), tuple(target.shape), inflate)
        return inflate_patch_weight(value, target.shape[2], inflate)
    if key == "pos_embed" and value.ndim == 3 and value.shape[-1] == target.shape[-1]:
        grid = tuple(model.patch_embed.grid_size)
        _logger.info("resampling %s %s -> %s (bicubic)", key, tuple(value.shape), tuple(target.shape))
        return resample_abs_pos_embed(value, grid, num_prefix_tokens=1)
    if key == "temporal_pos_embedding" and value.ndim == 3 and value.shape[-1] == target.shape[-1]:
        tubelet = model.patch_embed.tubelet_size
        if orig_t_size is not None and value.shape[1] not in (orig_t_size, orig_t_size // tubelet):
            _logger.warning("orig_t_size=%d does not match the checkpoint's temporal table of %d steps; "
                            "using the checkpoint's", orig_t_size, value.shape[1])
        _logger.info("resampling %s %s -> %s (linear)", key, tuple(value.shape), tuple(target.shape))
        return resample_temporal_pos_embed(value, target.shape[1])
    raise BadFileError(f"{source}: tensor {key!r} has shape {tuple(value.shape)} but the model expects "
                       f"{tuple(target.shape)}, and there is no rule to convert it (check --model, --depth, "
                       f"--embed_dim and --tubelet_size)")


def checkpoint_filter_fn(
    state_dict: Mapping[str, torch.Tensor],
    model: nn.Module,
    *,
    delete_head: bool = False,
    orig_t_size: int | None = None,
    inflate: str = "center",
    label_map: Sequence[int] | None = None,
    source: str = "the checkpoint",
) -> dict[str, torch.Tensor]:
    """Return a new state dict adapted to ``model``; the input dict and its tensors are left untouched.

    Unless ``delete_head``, the classifier rows are first selected by ``select_head_rows`` (``label_map``, or the
    official Kinetics-710 → 400 rule). The classifier ``head.*`` is dropped on ``delete_head`` or when its shape
    still differs from the model's;
    tensors whose shapes differ are converted (patch inflation, position-table resampling) or rejected with a
    ``BadFileError`` naming ``source`` (the file).
    Keys the model lacks are kept, so that ``load_state_dict`` reports them as unexpected.
    """
    if inflate not in INFLATE_MODES:
        raise ValueError(f"inflate must be one of {INFLATE_MODES}, got {inflate!r}")
    own = model.state_dict()
    if not delete_head and "head.weight" in own:
        state_dict = select_head_rows(state_dict, own["head.weight"].shape[0], label_map, source)
    head_mismatch = any(k in own and own[k].shape != state_dict[k].shape
                        for k in ("head.weight", "head.bias") if k in state_dict)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("head.") and (delete_head or head_mismatch):
            _logger.info("dropping %s %s from the checkpoint", key, tuple(value.shape))
            continue
        if key in own and value.shape != own[key].shape:
            value = _adapt_tensor(key, value, own[key], model, orig_t_size, inflate, source)
        out[key] = value
    return out


def read_checkpoint(path: str | os.PathLike, trust_checkpoint: bool = False) -> Any:
    """Load a checkpoint object on CPU: safetensors, or a ``torch.save`` file weights-only
    (``utils.safe_load.load_torch_file``: one needing a full unpickle only with ``trust_checkpoint``)."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise BadFileError(f"{path} is not a readable safetensors checkpoint: {err}") from err
    return load_torch_file(path, trust_checkpoint)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def extract_state_dict(obj: Any, model_key: str, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensor dict under the first of the '|'-separated ``model_key`` names, else ``obj`` itself."""
    if not isinstance(obj, Mapping):
        raise BadFileError(f"{path} is not a checkpoint: it holds a {type(obj).__name__}, not a dict")
    for key in model_key.split("|"):
        if key in obj and _is_state_dict(obj[key]):
            _logger.info("using the state dict under %r of %s", key, path)
            return dict(obj[key])
    if _is_state_dict(obj):
        return dict(obj)
    raise BadFileError(f"{path} is not a checkpoint: no tensor dict under {model_key!r} "
                     f"and top-level keys {sorted(map(str, obj))[:10]} are not all tensors")


def strip_prefixes(state_dict: Mapping[str, torch.Tensor], model_prefix: str = "") -> dict[str, torch.Tensor]:
    """Remove ``model_prefix`` and then the wrapper prefixes backbone./encoder./module. from keys, however nested
    (``module.backbone.layers.0...`` -> ``layers.0...``)."""
    out = {}
    for key, value in state_dict.items():
        if model_prefix and key.startswith(model_prefix):
            key = key[len(model_prefix):]
        stripped = True
        while stripped:
            stripped = False
            for prefix in STRIPPED_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def read_state_dict(path: str | os.PathLike, model_key: str = "model|module", model_prefix: str = "",
                    trust_checkpoint: bool = False, flag: str = "") -> dict[str, torch.Tensor]:
    """The un-prefixed state dict of a checkpoint (``read_checkpoint``, ``extract_state_dict``, ``strip_prefixes``);
    ``path`` may be a URL, a pretrained tag or an ``hf-hub:`` id (``models.hub.fetch_checkpoint``; ``flag`` names
    the command-line flag in its errors)."""
    local = fetch_checkpoint(path, flag)
    obj = read_checkpoint(local, trust_checkpoint)
    return strip_prefixes(extract_state_dict(obj, model_key, local), model_prefix)


def load_finetune_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    model_key: str = "model|module",
    model_prefix: str = "",
    delete_head: bool = False,
    orig_t_size: int | None = None,
    inflate: str = "center",
    label_map: Sequence[int] | None = None,
    trust_checkpoint: bool = False,
    flag: str = "",
) -> dict[str, Any]:
    """Load a (possibly image-pretrained or differently sized) checkpoint into ``model`` non-strictly.

    ``path`` may be a URL, a pretrained tag or an ``hf-hub:`` id (``read_state_dict``). Returns and logs a report:
    {"path", "missing_keys", "unexpected_keys"}.
    """
    state_dict = read_state_dict(path, model_key, model_prefix, trust_checkpoint, flag)
    theirs, ours = width(state_dict), width(model.state_dict())
    if theirs is not None and ours is not None and theirs != ours:
        raise BadFileError(f"{path}: the checkpoint is {theirs} wide, the model {ours}, so none of its blocks fits "
                           f"(set by {WIDTH_FLAGS})")
    state_dict = checkpoint_filter_fn(state_dict, model, delete_head=delete_head, orig_t_size=orig_t_size,
                                      inflate=inflate, label_map=label_map, source=os.fspath(path))
    result = model.load_state_dict(state_dict, strict=False)
    report = {"path": str(path), "missing_keys": list(result.missing_keys),
              "unexpected_keys": list(result.unexpected_keys)}
    _logger.info("loaded %d tensors from %s", len(state_dict) - len(report["unexpected_keys"]), path)
    missing, unexpected = report["missing_keys"], report["unexpected_keys"]
    depth_saved, depth_model = num_blocks(state_dict), num_blocks(model.state_dict())
    if depth_saved != depth_model:
        shared, last = min(depth_saved, depth_model), max(depth_saved, depth_model) - 1
        one = shared == last
        blocks = f"block {last}" if one else f"blocks {shared}..{last}"
        _logger.warning("%s has %d blocks, the model %d (set by %s): %s", path, depth_saved, depth_model, DEPTH_FLAGS,
                        f"{blocks} of the checkpoint {'is' if one else 'are'} not loaded" if depth_saved > depth_model
                        else f"the model's {blocks} {'keeps its' if one else 'keep their'} initialisation")
        missing, unexpected = (_below_depth(keys, shared) for keys in (missing, unexpected))
    if missing:
        _logger.info("missing keys (left as initialised): %s", ", ".join(missing))
    if unexpected:
        _logger.info("unexpected keys (ignored): %s", ", ".join(unexpected))
    return report


def _below_depth(keys: list[str], depth: int) -> list[str]:
    """``keys`` without those of blocks ``layers.{i}.`` with i >= ``depth`` (reported as a depth mismatch)."""
    return [k for k in keys if num_blocks([k]) <= depth]
