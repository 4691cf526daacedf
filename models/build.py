"""Building the VideoMamba classifiers and students through ``timm.models.build_model_with_cfg``.

``pretrained=True`` loads the weights the resolved cfg names: ``pretrained_cfg_overlay=dict(state_dict=...)``, else
a local ``file`` (``pretrained_cfg_overlay=dict(file=PATH)``), else the tag's release on the Hugging Face hub
(``hf_hub_id`` / ``hf_hub_filename``, ``models/releases.py``), downloaded through huggingface_hub's cache
(``models.hub``); nothing is downloaded otherwise. Files are read weights-only (``trust_checkpoint=True`` allows a
full unpickle) by ``models.checkpoint.read_state_dict`` (official checkpoints: the state dict under
``model``/``module``, ``module.``/``backbone.``/``encoder.`` prefixes) and adapted by ``checkpoint_filter_fn``
(2D->3D patch kernels, spatial/temporal position tables, a head of another size is dropped), then loaded
non-strictly, as ``--finetune`` does.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import timm
import torch
import torch.nn as nn
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import PretrainedCfg, build_model_with_cfg, resolve_pretrained_cfg

from models.checkpoint import checkpoint_filter_fn, extract_state_dict, read_state_dict, strip_prefixes
from models.features import DEFAULT_OUT_INDICES, VideoFeatureGetterNet
from models.hub import download_tag, pretrained_tag_cfg
from utils.errors import UsageError


def check_model_name(name: str, family: str, flag: str = "--model") -> None:
    """``UsageError`` listing the choices unless ``name`` is registered by ``models/<family>.py`` (``videomamba``,
    ``videomamba_pretrain``, ``clip_teacher``)."""
    names = timm.list_models(module=family)
    if name not in names:
        raise UsageError(f"{flag} {name!r} is not a registered model; choose one of: {', '.join(names)}")


def default_video_cfg(**kwargs: Any) -> dict[str, Any]:
    """A cfg with the official data settings (ImageNet mean/std, as every official data pipeline) and, unless
    ``kwargs`` say otherwise, no downloadable weights (url/hf_hub_id empty) and 8x224x224 clips.

    ``input_size`` is (C, T, H, W); ``num_classes`` is the default head size (1000, as the constructor's).
    """
    return {
        "url": "", "hf_hub_id": "", "num_classes": 1000, "input_size": (3, 8, 224, 224), "pool_size": None,
        "crop_pct": 1.0, "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head", **kwargs,
    }


def pretrained_state_dict(cfg: PretrainedCfg, variant: str, trust_checkpoint: bool = False,
                          cache_dir: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The un-prefixed state dict a resolved cfg points at: its in-memory ``state_dict``, its local ``file``, or its
    hub release (``hf_hub_id`` / ``hf_hub_filename``, into huggingface_hub's cache or ``cache_dir``)."""
    name = f"{variant}.{cfg.tag}" if cfg.tag else variant
    if cfg.state_dict is not None:
        return strip_prefixes(extract_state_dict(cfg.state_dict, "model|module", f"{name} pretrained_cfg state_dict"))
    if cfg.file:
        return read_state_dict(os.fspath(cfg.file), trust_checkpoint=trust_checkpoint)
    if cfg.hf_hub_id and cfg.hf_hub_filename:
        return read_state_dict(download_tag(cfg, name, cache_dir), trust_checkpoint=trust_checkpoint)
    raise ValueError(
        f"{name}: no downloadable weights are configured; pick a pretrained tag (timm.list_pretrained"
        f"('videomamba*')), pass a local checkpoint with pretrained_cfg_overlay=dict(file='/path/to/ckpt.pth') or "
        f"build with pretrained=False and use models.checkpoint.load_finetune_checkpoint")


def _channels(kwargs: dict[str, Any]) -> None:
    """Map timm's ``in_chans`` onto the official constructor's ``channels`` (in place)."""
    if "in_chans" in kwargs:
        in_chans = kwargs.pop("in_chans")
        if kwargs.setdefault("channels", in_chans) != in_chans:
            raise ValueError(f"in_chans={in_chans} and channels={kwargs['channels']} disagree")


def build_video_model(cls: type[nn.Module], variant: str, pretrained: bool = False,
                      kwargs_filter: tuple[str, ...] = (), **kwargs: Any) -> nn.Module:
    """Build ``cls`` for a registered variant with timm's builder; ``kwargs`` are the constructor's plus timm's
    ``pretrained_cfg`` (a tag, from ``timm.create_model("arch.tag")``) / ``pretrained_cfg_overlay`` / ``cache_dir``
    and ``trust_checkpoint`` (allow a checkpoint that needs a full unpickle, see ``utils.safe_load``).

    ``num_frames`` and ``img_size`` default to the cfg's ``input_size`` (C, T, H, W). timm's builder only knows image
    sizes, so it is handed the frame size (C, H, W); ``model.pretrained_cfg['input_size']`` is then set to the clip
    size the model was built for (what ``timm.data.resolve_model_data_config`` reports; the registered cfg keeps
    the weights' own). The head is the filter's business (kept when its shape matches, else dropped): the cfg
    handed to timm records the model's own ``num_classes`` so that timm does not drop it by count.
    ``features_only=True`` returns a ``VideoFeatureGetterNet`` giving the maps of the blocks in ``out_indices``
    (default: the last 3).
    """
    cfg_arg = kwargs.pop("pretrained_cfg", None)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    trust_checkpoint = kwargs.pop("trust_checkpoint", False)
    cache_dir = kwargs.pop("cache_dir", None)
    if isinstance(cfg_arg, str) and cfg_arg:
        pretrained_tag_cfg(f"{variant}.{cfg_arg}")  # an unknown tag: one line naming the closest ones
    cfg = resolve_pretrained_cfg(variant, cfg_arg, overlay)
    clip_size = tuple(cfg.input_size)
    _channels(kwargs)
    kwargs.setdefault("num_frames", clip_size[1])
    overlay["input_size"] = (clip_size[0], *clip_size[-2:])
    if pretrained:
        overlay["state_dict"] = pretrained_state_dict(cfg, variant, trust_checkpoint, cache_dir)
        overlay["num_classes"] = kwargs.get("num_classes", cfg.num_classes)
    feature_cfg = dict(out_indices=kwargs.pop("out_indices", DEFAULT_OUT_INDICES), feature_cls=VideoFeatureGetterNet)
    model = build_model_with_cfg(
        cls, variant, pretrained, pretrained_cfg=cfg_arg, pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=checkpoint_filter_fn, pretrained_strict=False, feature_cfg=feature_cfg,
        kwargs_filter=("in_chans", *kwargs_filter), **kwargs)
    backbone = model.model if isinstance(model, VideoFeatureGetterNet) else model
    for module in {model, backbone}:
        module.pretrained_cfg = module.default_cfg = _public_cfg(module.pretrained_cfg, input_size=backbone.clip_size)
    return model


def _public_cfg(cfg: Mapping[str, Any], **updates: Any) -> dict[str, Any]:
    """The cfg kept on the model: without the in-memory state dict (which would pin a copy of the weights)."""
    out = {k: v for k, v in cfg.items() if k != "state_dict"}
    out.update(updates)
    return out
