"""CLIP visual encoder used as the frozen teacher of masked pretraining.

The encoder is OpenAI's CLIP ViT applied frame by frame: a Conv3d patch embedding with kernel
(kernel_size, p, p), a cls token and learned positions per frame, pre-norm transformer blocks with
QuickGELU, and a linear projection. Parameter names are OpenAI's (``conv1.weight``,
``transformer.resblocks.{i}.attn.in_proj_weight``, ``proj``...), so the visual state dict of an
OpenAI checkpoint loads directly; ``tools/convert_clip.py`` writes such a file from OpenAI,
open_clip or Hugging Face checkpoints.

The teachers are timm models (``clip_b16``, ``clip_l14``, ``clip_l14_336``): ``timm.create_model("clip_b16",
pretrained=True)`` loads ``pretrained_cfg_overlay=dict(file=...)`` when given, else ``$VIDEOMAMBA_CLIP_DIR``'s file;
calling the functions directly also takes the weights' path as ``pretrained``.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
from timm.data.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.models import (
    PretrainedCfg,
    build_model_with_cfg,
    generate_default_cfgs,
    register_model,
    resolve_pretrained_cfg,
)

from utils.errors import BadFileError, MissingPathError

from .checkpoint import inflate_patch_weight
from .pos_embed import resample_abs_pos_embed

logger = logging.getLogger(__name__)

CLIP_DIR_ENV = "VIDEOMAMBA_CLIP_DIR"

# Architecture name -> constructor sizes and the canonical file name of its converted weights.
CLIP_ARCHS: dict[str, dict[str, Any]] = {
    "ViT-B/16": dict(input_resolution=224, patch_size=16, width=768, layers=12, heads=12, output_dim=512),
    "ViT-L/14": dict(input_resolution=224, patch_size=14, width=1024, layers=24, heads=16, output_dim=768),
    "ViT-L/14-336": dict(input_resolution=336, patch_size=14, width=1024, layers=24, heads=16, output_dim=768),
}
# Registered timm model name -> architecture.
CLIP_VARIANTS: dict[str, str] = {"clip_b16": "ViT-B/16", "clip_l14": "ViT-L/14", "clip_l14_336": "ViT-L/14-336"}
CLIP_FILE_NAMES: dict[str, str] = {
    "ViT-B/16": "vit_b16.pth",
    "ViT-L/14": "vit_l14.pth",
    "ViT-L/14-336": "vit_l14_336.pth",
}


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back to the input dtype, as in CLIP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the GELU approximation CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); x is (batch, tokens, width)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(4 * width, width)),
        ]))
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the block output and, with need_weights, the head-averaged attention (batch, tokens, tokens)."""
        h = self.ln_1(x)
        h, attn = self.attn(h, h, h, need_weights=need_weights, average_attn_weights=True)
        x = x + h
        x = x + self.mlp(self.ln_2(x))
        return x, attn


class Transformer(nn.Module):
    """Stack of blocks that keeps the hidden states of the blocks listed in ``return_index``."""

    def __init__(self, width: int, layers: int, heads: int, return_index: list[int]) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))
        self.return_index = return_index

    def forward(self, x: torch.Tensor, return_attn: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (batch, tokens, width) -> (K, batch, tokens, width) in block order, and the last block's attention."""
        kept, attn = [], None
        last = len(self.resblocks) - 1
        for idx, block in enumerate(self.resblocks):
            x, weights = block(x, need_weights=return_attn and idx == last)
            if weights is not None:
                attn = weights
            if idx in self.return_index:
                kept.append(x)
        return torch.stack(kept), attn


def teacher_return_index(layers: int, clip_return_layer: int, clip_return_interval: float) -> list[int]:
    """Blocks whose outputs the teacher returns: layers - 1 - int(i * interval) for i < K, in block order."""
    index = sorted({layers - int(i * clip_return_interval) - 1 for i in range(clip_return_layer)})
    if len(index) != clip_return_layer or index[0] < 0:
        raise ValueError(
            f"clip_return_layer={clip_return_layer} with clip_return_interval={clip_return_interval} does not pick "
            f"{clip_return_layer} distinct blocks out of {layers}"
        )
    return index


class CLIPTeacher(nn.Module):
    """CLIP ViT visual encoder run on every frame of a video.

    ``forward(x)`` takes x (B, 3, T, H, W) and returns features (K, B, N, output_dim) from the last K
    selected blocks, with N = 1 + T'·HW when ``clip_return_cls`` (each frame's cls token averaged over time,
    then all patch tokens frame-major, no ``ln_post``) and N = T'·HW otherwise (patch tokens after ``ln_post``);
    T' = T / kernel_size. Features are projected by ``proj`` and L2-normalised for ``clip_norm_type='l2'``.
    With ``return_attn`` it returns ``(features, attn)``, attn (B·T', HW) being the last block's
    head-averaged attention from the cls token to each patch.
    """

    def __init__(
        self,
        input_resolution: int = 224,
        patch_size: int = 16,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        output_dim: int = 512,
        clip_norm_type: str = "l2",
        kernel_size: int = 1,
        return_attn: bool = False,
        clip_return_layer: int = 1,
        clip_return_interval: float = 1,
        clip_return_cls: bool = False,
    ) -> None:
        super().__init__()
        if clip_norm_type not in ("l2", "none"):
            raise ValueError(f"clip_norm_type must be 'l2' or 'none', got {clip_norm_type!r}")
        if input_resolution % patch_size:
            raise ValueError(f"input_resolution {input_resolution} is not a multiple of patch_size {patch_size}")
        self.input_resolution = input_resolution
        self.patch_size = patch_size
        self.kernel_size = kernel_size
        self.output_dim = output_dim
        self.clip_norm_type = clip_norm_type
        self.return_attn = return_attn
        self.clip_return_cls = clip_return_cls
        grid = input_resolution // patch_size
        scale = width ** -0.5
        self.conv1 = nn.Conv3d(3, width, (kernel_size, patch_size, patch_size),
                               stride=(kernel_size, patch_size, patch_size), bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        return_index = teacher_return_index(layers, clip_return_layer, clip_return_interval)
        self.transformer = Transformer(width, layers, heads, return_index)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        logger.info("CLIP teacher: width %d, %d blocks, returns blocks %s, norm %s, return_cls %s, return_attn %s",
                    width, layers, return_index, clip_norm_type, clip_return_cls, return_attn)

    def freeze(self) -> "CLIPTeacher":
        """Put the teacher in eval mode with every parameter frozen; returns self."""
        self.eval()
        self.requires_grad_(False)
        return self

    def _positions(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position table (1 + grid_h·grid_w, width), bicubically resampled when the input grid differs."""
        table = self.positional_embedding
        if table.shape[0] == grid_h * grid_w + 1:
            return table
        return resample_abs_pos_embed(table.unsqueeze(0), (grid_h, grid_w)).squeeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 5:
            raise ValueError(f"CLIPTeacher expects a video (B, 3, T, H, W), got shape {tuple(x.shape)}")
        x = self.conv1(x)  # (B, width, T', H', W')
        B, C, T, H, W = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(B * T, H * W, C)
        cls = self.class_embedding.to(x.dtype).expand(B * T, 1, C)
        x = torch.cat([cls, x], dim=1) + self._positions(H, W).to(x.dtype)
        x = self.ln_pre(x)
        x, attn = self.transformer(x, return_attn=self.return_attn)  # (K, B·T', 1 + HW, width)
        K = x.shape[0]
        if self.clip_return_cls:
            cls_tokens = x[:, :, :1].reshape(K, B, T, 1, C).mean(dim=2)
            x = torch.cat([cls_tokens, x[:, :, 1:].reshape(K, B, T * H * W, C)], dim=2)
        else:
            x = self.ln_post(x[:, :, 1:]).reshape(K, B, T * H * W, C)
        x = x @ self.proj
        if self.clip_norm_type == "l2":
            x = x / x.norm(dim=-1, keepdim=True)
        if self.return_attn:
            return x, attn[:, 0, 1:]
        return x


def clip_checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: CLIPTeacher, center: bool = True,
                              source: str = "state dict") -> dict[str, torch.Tensor]:
    """Return OpenAI-named visual weights adapted to ``model`` (a new dict; the input is left untouched).

    A 2D ``conv1.weight`` or one with another temporal size is inflated to the model's kernel_size
    (``models.checkpoint.inflate_patch_weight``, "center" or "avg"), and ``positional_embedding`` is bicubically
    resampled to the model's input resolution. Anything else that does not match exactly is a ValueError
    naming ``source``, as the teacher is always loaded strictly.
    """
    sd = dict(state_dict)
    own = model.state_dict()
    conv, want_conv = sd.get("conv1.weight"), own["conv1.weight"]
    if conv is not None and conv.shape != want_conv.shape and conv.ndim in (4, 5) \
            and conv.shape[:2] == want_conv.shape[:2] and conv.shape[-2:] == want_conv.shape[-2:]:
        sd["conv1.weight"] = inflate_patch_weight(conv, model.kernel_size, "center" if center else "avg")
    pos = sd.get("positional_embedding")
    want = own["positional_embedding"].shape
    if pos is not None and pos.ndim == 2 and pos.shape[1] == want[1] and pos.shape[0] != want[0]:
        grid = model.input_resolution // model.patch_size
        logger.info("resampling CLIP positional_embedding from %d to %d tokens", pos.shape[0], want[0])
        sd["positional_embedding"] = resample_abs_pos_embed(pos.unsqueeze(0), (grid, grid)).squeeze(0)
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise BadFileError(
            f"{source} does not match this CLIP teacher: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatches {wrong[:5]}. Convert the weights for the right architecture with "
            "`python tools/convert_clip.py --src ... --arch ... --out ...`"
        )
    return sd


def load_clip_state_dict(model: CLIPTeacher, state_dict: Mapping[str, torch.Tensor], center: bool = True,
                         source: str = "state dict") -> None:
    """Load OpenAI-named visual weights strictly, adapted by ``clip_checkpoint_filter_fn``."""
    model.load_state_dict(clip_checkpoint_filter_fn(state_dict, model, center=center, source=source), strict=True)


def _convert_hint(arch: str) -> str:
    return (f"convert the CLIP weights first: `python tools/convert_clip.py --src <OpenAI .pt | open_clip .bin | "
            f"Hugging Face folder> --arch {arch} --out <file>`")


def default_clip_weights(arch: str) -> Path:
    """``$VIDEOMAMBA_CLIP_DIR/<canonical name>`` of ``arch``: where ``--clip_teacher_path`` falls back to (the one
    place that reads the variable); ``MissingPathError`` telling both ways when it is not set."""
    clip_dir = os.environ.get(CLIP_DIR_ENV)
    if not clip_dir:
        raise MissingPathError(
            f"no CLIP {arch} weights given: pass a path (--clip_teacher_path) or set {CLIP_DIR_ENV} to the folder "
            f"holding {CLIP_FILE_NAMES[arch]}; {_convert_hint(arch)}"
        )
    return Path(clip_dir) / CLIP_FILE_NAMES[arch]


def resolve_clip_weights(arch: str, pretrained: str | os.PathLike | bool) -> Path:
    """Path of the converted weights: ``pretrained`` itself, or ``$VIDEOMAMBA_CLIP_DIR/<canonical name>`` when True/"auto".

    Raises ``MissingPathError`` (a FileNotFoundError) telling how to produce the file when it does not exist.
    """
    if pretrained is True or pretrained == "auto":
        path = default_clip_weights(arch)
    else:
        path = Path(pretrained)
    if not path.is_file():
        raise MissingPathError(f"CLIP {arch} teacher weights not found at {path}; {_convert_hint(arch)}")
    return path


def read_clip_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a converted teacher state dict (tensors only) from ``path``, with a clear error for other files."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BadFileError(
            f"{path} is not a converted CLIP teacher state dict ({type(exc).__name__}: {exc}); produce one with "
            "`python tools/convert_clip.py --src ... --arch ... --out ...`"
        ) from exc
    if not isinstance(sd, Mapping) or "conv1.weight" not in sd:
        raise BadFileError(
            f"{path} is not a converted CLIP teacher state dict (no 'conv1.weight'); produce one with "
            "`python tools/convert_clip.py --src ... --arch ... --out ...`"
        )
    return dict(sd)


def _clip_cfg(resolution: int) -> dict[str, Any]:
    """Default cfg of a teacher: no downloadable weights, OpenAI CLIP mean/std, frames of resolution² (any count)."""
    return {
        "url": "", "hf_hub_id": "", "num_classes": 0, "input_size": (3, resolution, resolution), "pool_size": None,
        "crop_pct": 1.0, "interpolation": "bicubic", "mean": OPENAI_CLIP_MEAN, "std": OPENAI_CLIP_STD,
        "first_conv": "conv1", "classifier": None,
    }


default_cfgs = generate_default_cfgs({
    variant: _clip_cfg(CLIP_ARCHS[arch]["input_resolution"]) for variant, arch in CLIP_VARIANTS.items()
})


def _teacher_weights(arch: str, variant: str, pretrained: str | os.PathLike | bool,
                     cfg: PretrainedCfg) -> tuple[dict[str, torch.Tensor], Path | None]:
    """The converted state dict to load and its file: a path given as ``pretrained``, else the cfg's in-memory
    ``state_dict`` (no file) or ``file`` (``pretrained_cfg_overlay``), else ``$VIDEOMAMBA_CLIP_DIR``'s file."""
    if pretrained is True or pretrained == "auto":
        if cfg.state_dict is not None:
            return dict(cfg.state_dict), None
        path = resolve_clip_weights(arch, cfg.file or True)
    else:
        path = resolve_clip_weights(arch, pretrained)
    logger.info("loading CLIP %s teacher weights from %s", arch, path)
    return read_clip_weights(path), path


def build_clip_teacher(arch: str, pretrained: str | os.PathLike | bool | None = None, center: bool = True,
                       frozen: bool = True, **kwargs: Any) -> CLIPTeacher:
    """Build the named CLIP architecture with timm's builder, load converted weights when ``pretrained``, freeze it.

    ``pretrained``: a path to converted weights, or True / "auto" for the file of
    ``pretrained_cfg_overlay=dict(file=...)`` when given, else ``$VIDEOMAMBA_CLIP_DIR/<canonical name>``.
    kwargs are CLIPTeacher's (clip_norm_type, input_resolution, kernel_size, return_attn, clip_return_layer,
    clip_return_interval, clip_return_cls), overriding the architecture's sizes, plus timm's ``pretrained_cfg``,
    ``pretrained_cfg_overlay`` and ``cache_dir``. Weights load strictly through ``clip_checkpoint_filter_fn``.
    """
    if arch not in CLIP_ARCHS:
        raise ValueError(f"unknown CLIP architecture {arch!r}; choose one of {sorted(CLIP_ARCHS)}")
    variant = next(v for v, a in CLIP_VARIANTS.items() if a == arch)
    if kwargs.get("features_only"):
        raise ValueError(f"{variant} is a frozen CLIP teacher and has no features_only mode: its forward already "
                         f"returns the features of its last clip_return_layer blocks, (K, B, N, output_dim)")
    cfg_arg = kwargs.pop("pretrained_cfg", None)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    filter_fn = None
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, cfg_arg, overlay)
        overlay["state_dict"], path = _teacher_weights(arch, variant, pretrained, cfg)
        if path is not None:
            overlay["file"] = str(path)
        source = str(path) if path is not None else f"{variant} pretrained_cfg state_dict"
        filter_fn = partial(clip_checkpoint_filter_fn, center=center, source=source)
    model = build_model_with_cfg(
        CLIPTeacher, variant, bool(pretrained), pretrained_cfg=cfg_arg, pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=filter_fn, kwargs_filter=("num_classes", "in_chans"), **{**CLIP_ARCHS[arch], **kwargs})
    size = (3, model.input_resolution, model.input_resolution)  # the resolution its position table was built for
    model.pretrained_cfg = model.default_cfg = {**{k: v for k, v in model.pretrained_cfg.items() if k != "state_dict"},
                                                "input_size": size}
    return model.freeze() if frozen else model


@register_model
def clip_b16(pretrained: str | os.PathLike | bool | None = None, **kwargs: Any) -> CLIPTeacher:
    """CLIP ViT-B/16 teacher (width 768, 12 blocks, output 512); see ``build_clip_teacher``."""
    return build_clip_teacher("ViT-B/16", pretrained, **kwargs)


@register_model
def clip_l14(pretrained: str | os.PathLike | bool | None = None, **kwargs: Any) -> CLIPTeacher:
    """CLIP ViT-L/14 teacher (width 1024, 24 blocks, output 768); see ``build_clip_teacher``."""
    return build_clip_teacher("ViT-L/14", pretrained, **kwargs)


@register_model
def clip_l14_336(pretrained: str | os.PathLike | bool | None = None, **kwargs: Any) -> CLIPTeacher:
    """CLIP ViT-L/14 teacher at 336 px; see ``build_clip_teacher``."""
    return build_clip_teacher("ViT-L/14-336", pretrained, **kwargs)
