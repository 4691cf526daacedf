"""Masked-pretraining student of VideoMamba (UMT-style CLIP alignment), official semantics and key names.

Only the visible tokens run through the blocks. The aligned features are residual streams taken inside
the stack; each is added to a fixed sinusoidal position table at its visible positions and mapped to the
CLIP space by its own decoder (Linear -> LayerNorm -> optional L2 normalisation).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from models.build import build_video_model, default_video_cfg
from models.releases import release_cfgs
from models.pos_embed import sinusoid_table
from models.videomamba import MODEL_SIZES, MambaVideoBackbone


class LinearDecoder(nn.Module):
    """(..., embed_dim) -> (..., output_dim): Linear, LayerNorm, then L2-normalise for clip_norm_type='l2'."""

    def __init__(self, output_dim: int, embed_dim: int, clip_norm_type: str = "l2") -> None:
        super().__init__()
        if clip_norm_type not in ("l2", "none"):
            raise ValueError(f"clip_norm_type must be 'l2' or 'none', got {clip_norm_type!r}")
        self.clip_norm_type = clip_norm_type
        self.head = nn.Linear(embed_dim, output_dim)
        self.norm = nn.LayerNorm(output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.head(x))
        if self.clip_norm_type == "l2":
            x = x / x.norm(dim=-1, keepdim=True)
        return x


class VideoMambaPretrain(MambaVideoBackbone):
    """Student: ``forward(x, mask)`` with x (B, 3, T, H, W) and mask bool (B, 1 + T'*H'*W') (True = masked,
    cls never masked, equal visible count per sample) -> (K, B, N_visible, clip_output_dim).

    With K = clip_return_layer and s = clip_student_return_interval (a float, as the official flag), the
    official return indices are depth-1-int(k*s) for k < K: index depth-1 yields the residual stream entering
    the last block's mixer (unnormalised); every other index r yields ``norm`` of the stream entering block
    r+1. Features are stacked from the shallowest to the deepest, decoder k taking feature k.
    ``forward_intermediates`` (with ``mask``) and ``norm_tokens`` use ``norm`` as the final norm.
    """

    final_norm_name = "norm"

    def __init__(
        self,
        clip_decoder_embed_dim: int | None = None,
        clip_output_dim: int = 512,
        clip_norm_type: str = "l2",
        clip_return_layer: int = 1,
        clip_student_return_interval: float = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        decoder_dim = self.embed_dim if clip_decoder_embed_dim is None else clip_decoder_embed_dim
        if decoder_dim != self.embed_dim:
            raise ValueError(f"clip_decoder_embed_dim={decoder_dim} must equal embed_dim={self.embed_dim}: "
                             "the decoders read the student's residual stream directly")
        shallowest = self.depth - 1 - int((clip_return_layer - 1) * clip_student_return_interval)
        if clip_return_layer < 1 or clip_student_return_interval < 1 or shallowest < 0:
            raise ValueError(f"clip_return_layer={clip_return_layer} with interval {clip_student_return_interval} "
                             f"does not fit in depth {self.depth}")
        self.return_index = [self.depth - 1 - int(i * clip_student_return_interval) for i in range(clip_return_layer)]
        self.norm = self.make_norm()
        self.clip_decoder = nn.ModuleList([
            LinearDecoder(clip_output_dim, decoder_dim, clip_norm_type) for _ in range(clip_return_layer)
        ])
        num_tokens = self.patch_embed.num_patches * self.temporal_pos_embedding.shape[1] + 1
        self.register_buffer("clip_pos_embed", sinusoid_table(num_tokens, decoder_dim), persistent=False)
        self.init_weights()

    def prune_heads(self) -> None:
        """``prune_intermediate_layers``'s head removal: no decoders (a ``features_only`` trunk)."""
        self.clip_decoder = nn.ModuleList()

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Aligned student features before the decoders: (K, B, N_visible, embed_dim).

        Read from ``forward_intermediates`` on the visible tokens: ``norm`` of the output of each return index
        but the last, then the raw output of block depth - 2 (the stream entering the last block).
        """
        last = len(self.layers) - 1
        inner = sorted(r for r in self.return_index if r != last)
        if last == 0:  # one block: the stream entering it is the (fp32) embedding itself
            tokens = self.prepare_tokens(x, mask)
            streams = {-1: tokens.float() if self.layers[0].residual_in_fp32 else tokens}
        else:
            indices = sorted({*inner, last - 1})
            outputs = self.forward_intermediates(x, indices=indices, return_prefix_tokens=True, output_fmt="NLC",
                                                 intermediates_only=True, mask=mask, stop_early=True)
            streams = {i: torch.cat([cls, patches], dim=1) for i, (patches, cls) in zip(indices, outputs)}
        features = [self.norm_tokens(streams[r]) for r in inner]
        features.append(streams[last - 1])
        return torch.stack(features)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, 3, T, H, W), mask (B, 1 + T'*H'*W') -> CLIP-aligned features (K, B, N_visible, clip_output_dim)."""
        features = self.forward_features(x, mask)
        K, B, _, C = features.shape
        pos = self.clip_pos_embed.to(features.dtype).expand(B, -1, -1)[~mask].reshape(B, -1, C)
        features = features + pos.unsqueeze(0)
        return torch.stack([decoder(features[k]) for k, decoder in enumerate(self.clip_decoder)])


# The released student (models/releases.py) is videomamba_middle_pretrain's default; Ti and S have none.
default_cfgs = generate_default_cfgs({
    **release_cfgs(("videomamba_middle_pretrain",)),
    **{f"videomamba_{size}_pretrain": default_video_cfg(num_classes=0, classifier=None) for size in ("tiny", "small")},
})


def _build_student(size: str, pretrained: bool, **kwargs: Any) -> VideoMambaPretrain:
    variant = f"videomamba_{size}_pretrain"
    if kwargs.get("num_classes", 0):
        raise ValueError(f"{variant} has no classifier; got num_classes={kwargs['num_classes']}")
    return build_video_model(VideoMambaPretrain, variant, pretrained, kwargs_filter=("num_classes",),
                             **{**MODEL_SIZES[size], **kwargs})


@register_model
def videomamba_tiny_pretrain(pretrained: bool = False, **kwargs: Any) -> VideoMambaPretrain:
    return _build_student("tiny", pretrained, **kwargs)


@register_model
def videomamba_small_pretrain(pretrained: bool = False, **kwargs: Any) -> VideoMambaPretrain:
    return _build_student("small", pretrained, **kwargs)


@register_model
def videomamba_middle_pretrain(pretrained: bool = False, **kwargs: Any) -> VideoMambaPretrain:
    return _build_student("middle", pretrained, **kwargs)
