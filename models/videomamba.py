"""VideoMamba classification backbone (Ti/S/M) with the official state-dict layout, registered with timm.

Tokens: a Conv3d tubelet embedding, per-frame cls + spatial ``pos_embed``, ``temporal_pos_embedding`` per
frame; the sequence is [cls] + frame 0 patches + frame 1 patches + ... (spatial-first). Pre-norm residual
Mamba blocks keep the residual stream in fp32; the classifier reads the final-normed cls token.

The models follow timm's model API (``forward_features`` / ``forward_head`` / ``forward_intermediates``,
``set_grad_checkpointing``, ``group_matcher``, ``get_classifier`` / ``reset_classifier``, per-block ``feature_info`` and
``prune_intermediate_layers`` for ``features_only=True``) and are built with ``timm.create_model``;
``pretrained=True`` loads a released checkpoint by tag (``videomamba_small.k400_f8_res224``, ``models/releases.py``)
or a local file (``models/build.py``).
"""
from __future__ import annotations

import math
from typing import Any, Collection, Sequence

import torch
import torch.nn as nn
from timm.layers import DropPath, to_2tuple, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch.utils.checkpoint import checkpoint

from models.build import build_video_model
from models.features import block_feature_info
from models.mamba_mixer import BiMambaMixer
from models.rms_norm import RmsNormFp32, recomputed
from models.releases import release_cfgs

class PatchEmbed(nn.Module):
    """(B, C, T, H, W) -> (B, embed_dim, T / tubelet, H / patch, W / patch) with a Conv3d of stride = kernel."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, kernel_size: int = 1, in_chans: int = 3,
                 embed_dim: int = 192) -> None:
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.tubelet_size = kernel_size
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        kernel = (kernel_size, *self.patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Block(nn.Module):
    """Mamba's add -> norm -> mixer block: returns (mixer output, fp32 residual stream entering its norm).

    The norm is ``models.rms_norm.RmsNormFp32`` (Mamba's RMSNorm: computed in fp32, weight only) or a LayerNorm.
    """

    def __init__(self, dim: int, ssm_cfg: dict | None = None, norm_epsilon: float = 1e-5, rms_norm: bool = True,
                 residual_in_fp32: bool = True, drop_path: float = 0.0) -> None:
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = BiMambaMixer(dim, **(ssm_cfg or {}))
        self.norm = RmsNormFp32(dim, eps=norm_epsilon) if rms_norm else nn.LayerNorm(dim, eps=norm_epsilon)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor | None = None,
                use_checkpoint: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_states, residual (B, L, C); ``drop_path`` applies to the previous block's output."""
        residual = hidden_states if residual is None else residual + self.drop_path(hidden_states)
        if self.residual_in_fp32:
            residual = residual.float()
        normed = self.norm(residual.to(self.norm.weight.dtype))
        if use_checkpoint and normed.requires_grad:
            hidden_states = checkpoint(self.mixer, normed, use_reentrant=False)
        elif normed.requires_grad and not torch.compiler.is_compiling():
            # The mixer saves its input for its backward; keep the residual (kept anyway) and recompute the norm.
            with recomputed(normed, lambda: self.norm(residual.to(self.norm.weight.dtype))):
                hidden_states = self.mixer(normed)
        else:
            hidden_states = self.mixer(normed)
        return hidden_states, residual


class MambaVideoBackbone(nn.Module):
    """Shared trunk of the classifier and the pretraining student: token embedding and the block stack.

    Subclasses add the final norm (attribute named by ``final_norm_name``) and their heads; parameter names
    match the official checkpoints. The "output of block i" (what ``forward_intermediates`` returns) is the
    residual stream after it: the embedding plus the (drop-path'ed) mixer outputs of blocks 0..i.
    """

    final_norm_name = "norm_f"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        depth: int = 24,
        embed_dim: int = 192,
        channels: int = 3,
        drop_path_rate: float = 0.0,
        ssm_cfg: dict | None = None,
        norm_epsilon: float = 1e-5,
        rms_norm: bool = True,
        residual_in_fp32: bool = True,
        fused_add_norm: bool = True,
        kernel_size: int = 1,
        num_frames: int = 8,
        use_checkpoint: bool = False,
        checkpoint_num: int = 0,
        mamba_dt_init: bool = False,
    ) -> None:
        super().__init__()
        if num_frames % kernel_size:
            raise ValueError(f"num_frames={num_frames} is not divisible by kernel_size (tubelet)={kernel_size}")
        # fused_add_norm only selects a fused CUDA kernel in the official code; the math is the same unfused.
        del fused_add_norm
        self.depth = depth
        self.num_frames = num_frames
        # Blocks 0..checkpoint_num-1 run under activation checkpointing when use_checkpoint (official flags).
        self.use_checkpoint = use_checkpoint
        self.checkpoint_num = checkpoint_num
        # False: the official init (the blanket Linear init also covers dt_proj); True: keep Mamba's dt init.
        self.mamba_dt_init = mamba_dt_init
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.patch_embed = PatchEmbed(img_size, patch_size, kernel_size, channels, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, num_frames // kernel_size, embed_dim))
        self.pos_drop: nn.Module = nn.Identity()
        # Block i drops the output of block i-1 with rate dpr[i-1]; the final add uses drop_path_rate.
        dpr = [0.0] + torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.layers = nn.ModuleList([
            Block(embed_dim, ssm_cfg, norm_epsilon, rms_norm, residual_in_fp32, drop_path=dpr[i])
            for i in range(depth)
        ])
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.feature_info = block_feature_info(depth, embed_dim, patch_size, kernel_size)
        self._norm_cls = RmsNormFp32 if rms_norm else nn.LayerNorm
        self._norm_epsilon = norm_epsilon

    def make_norm(self) -> nn.Module:
        """A final norm of the configured kind (RMSNorm or LayerNorm) over embed_dim."""
        return self._norm_cls(self.embed_dim, eps=self._norm_epsilon)

    def init_weights(self) -> None:
        """Official initialisation, run by subclasses once all modules exist.

        Every Linear (the mixers' ``dt_proj`` / ``dt_proj_b``, the head and the decoders included):
        trunc_normal(.02) weight, zero bias; LayerNorm: 1 / 0; ``pos_embed`` trunc_normal(.02); ``out_proj``:
        kaiming_uniform(a=sqrt 5) / sqrt(depth) (Mamba's prenorm-residual rescale, one residual per layer). The rest
        keeps its construction init: ``cls_token`` / ``temporal_pos_embedding`` zero, RMSNorm weights 1, Conv1d /
        Conv3d PyTorch's default, ``A_log`` = log 1..N, ``D`` = 1. The official code thereby overwrites Mamba's dt
        init (dt_proj weight std .02, bias 0); ``mamba_dt_init`` keeps it instead (weights uniform in
        +-dt_rank^-0.5, bias softplus^-1 of a dt log-uniform in the mixers' [dt_min, dt_max], 1e-3 to 0.1).
        """
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                if self.mamba_dt_init and name.rsplit(".", 1)[-1] in ("dt_proj", "dt_proj_b"):
                    continue
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        trunc_normal_(self.pos_embed, std=0.02)
        for layer in self.layers:
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                layer.mixer.out_proj.weight.div_(math.sqrt(self.depth))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The official list: the embeddings only (the 2-D SSM ``A_log`` / ``A_b_log`` are decayed)."""
        return {"pos_embed", "cls_token", "temporal_pos_embedding"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter groups: embeddings, one group per block, then (unmatched, so timm's last group)
        everything after the blocks: final norm, head, decoders.

        These are ``engines.optim.layer_id``'s layers (0, 1..depth, depth + 1), so timm's layer-decay helpers
        give the official scales; ``coarse`` changes nothing (one block per group either way).
        """
        del coarse
        return {
            "stem": r"^cls_token|^pos_embed|^temporal_pos_embedding|^patch_embed",
            "blocks": r"^layers\.(\d+)",
        }

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint every block's mixer (``enable``) or none; the official ``use_checkpoint`` with
        ``checkpoint_num`` (first N blocks only) stays available as constructor arguments."""
        self.use_checkpoint = enable
        self.checkpoint_num = len(self.layers) if enable else 0

    def get_num_layers(self) -> int:
        return len(self.layers)

    @property
    def clip_size(self) -> tuple[int, int, int, int]:
        """(C, T, H, W): the clip the model was built for (``pretrained_cfg["input_size"]``)."""
        return (self.patch_embed.proj.in_channels, self.num_frames, *self.patch_embed.img_size)

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """(T', H', W'): frames / tubelet and the spatial patch grid the position tables were built for."""
        return (self.temporal_pos_embedding.shape[1], *self.patch_embed.grid_size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Video (B, C, T, H, W) -> tokens (B, 1 + T'*H'*W', embed_dim), spatial-first per frame."""
        x = self.patch_embed(x)
        B, C, T, H, W = x.shape
        if T != self.temporal_pos_embedding.shape[1] or H * W != self.pos_embed.shape[1] - 1:
            raise ValueError(
                f"input gives a {T}x{H}x{W} token grid but the model was built for "
                f"{self.temporal_pos_embedding.shape[1]}x{self.patch_embed.grid_size[0]}x"
                f"{self.patch_embed.grid_size[1]} (num_frames/kernel_size, img_size/patch_size)")
        x = x.permute(0, 2, 3, 4, 1).reshape(B, T, H * W, C)
        x = x + self.pos_embed[:, 1:].unsqueeze(1) + self.temporal_pos_embedding.unsqueeze(2)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)
        return torch.cat([cls, x.reshape(B, T * H * W, C)], dim=1)

    def _check_mask(self, mask: torch.Tensor, batch: int, tokens: int) -> None:
        if mask.dtype != torch.bool or tuple(mask.shape) != (batch, tokens):
            raise ValueError(f"mask must be bool of shape ({batch}, {tokens}), got {mask.dtype} {tuple(mask.shape)}")
        visible = (~mask).sum(1)
        if bool(mask[:, 0].any() | (visible != visible[0]).any()):
            raise ValueError("mask must keep the cls token (position 0) visible and leave the same number of "
                             f"visible tokens in every sample, got visible counts {visible.tolist()}")

    def prepare_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The sequence the blocks run on: ``pos_drop(embed(x))`` (B, 1 + L, C), or with a token ``mask``
        (bool (B, 1 + L), True = dropped, cls kept, equal count per sample) only the visible tokens in order."""
        tokens = self.pos_drop(self.embed(x))
        if mask is None:
            return tokens
        B, N, C = tokens.shape
        self._check_mask(mask, B, N)
        return tokens[~mask].reshape(B, -1, C)

    def _output_drop_path(self, idx: int) -> nn.Module:
        """The drop path applied to block ``idx``'s mixer output (it lives in the next block, or is the final one)."""
        return self.layers[idx + 1].drop_path if idx + 1 < len(self.layers) else self.drop_path

    def _run_blocks(self, tokens: torch.Tensor, take: Collection[int] = (), stop: int | None = None,
                    need_last: bool = True) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Run blocks 0..stop-1 (all by default) on tokens (B, L, C).

        Returns the residual stream after block stop-1 (None unless ``need_last``; computing it applies that
        block's output drop path) and, in block order, the stream after each block in ``take``.
        """
        stop = len(self.layers) if stop is None else stop
        hidden_states, residual = tokens, None
        taken: list[torch.Tensor] = []
        for idx in range(stop):
            ckpt = self.use_checkpoint and idx < self.checkpoint_num
            hidden_states, residual = self.layers[idx](hidden_states, residual, use_checkpoint=ckpt)
            if idx - 1 in take:
                taken.append(residual)  # the stream entering block idx is the output of block idx - 1
        last = None
        if need_last or stop - 1 in take:
            last = residual + self._output_drop_path(stop - 1)(hidden_states)
            if stop - 1 in take:
                taken.append(last)
        return last, taken

    def norm_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The final norm (``final_norm_name``) applied to a token sequence (B, L, C)."""
        norm = getattr(self, self.final_norm_name)
        weight = getattr(norm, "weight", None)
        return norm(x if weight is None else x.to(weight.dtype))

    def prune_heads(self) -> None:
        """Remove what the subclass adds after the final norm (classifier, decoders)."""
        raise NotImplementedError

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last of ``indices`` (and the final norm / the heads, ``prune_heads``);
        returns the kept indices (absolute), as timm's ``features_only`` wrapper expects."""
        take, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        if prune_norm:
            setattr(self, self.final_norm_name, nn.Identity())
        if prune_head:
            self.prune_heads()
        return take

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCTHW",
        intermediates_only: bool = False,
        mask: torch.Tensor | None = None,
    ) -> list[Any] | tuple[torch.Tensor, list[Any]]:
        """Block outputs (residual streams after blocks) of a video x (B, C, T, H, W), as timm's ViT.

        Args:
            indices: the last n blocks for an int, every block for None, else these block indices (negative
                from the end). Intermediates come in block order.
            return_prefix_tokens: each intermediate becomes a tuple (patch tokens, cls token (B, 1, C)).
            norm: apply the final norm to the intermediates.
            stop_early: do not run the blocks after the last requested one.
            output_fmt: "NCTHW" gives (B, C, T', H', W') maps, "NLC" (B, T'*H'*W', C) tokens (frame-major,
                spatial-first within a frame); the cls token is split off either way.
            intermediates_only: return only the list of intermediates.
            mask: optional token mask (see ``prepare_tokens``); only the visible tokens run through the blocks, so
                output_fmt must be "NLC" and L is the number of visible patch tokens.

        Returns:
            ``intermediates``, or ``(final, intermediates)`` where ``final`` (B, 1 + L, C) is the final-normed
            stream after the last block run (``forward_features(x)`` of the classifier when ``stop_early`` is False).
        """
        if output_fmt not in ("NCTHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCTHW' or 'NLC', got {output_fmt!r}")
        if mask is not None and output_fmt != "NLC":
            raise ValueError("with a token mask only the visible tokens remain, which form no grid: "
                             "use output_fmt='NLC'")
        take, max_index = feature_take_indices(len(self.layers), indices)
        tokens = self.prepare_tokens(x, mask)
        stop = max_index + 1 if stop_early else len(self.layers)
        last, streams = self._run_blocks(tokens, set(take), stop, need_last=not intermediates_only)
        if norm:
            streams = [self.norm_tokens(s) for s in streams]
        prefix = [s[:, :self.num_prefix_tokens] for s in streams]
        intermediates: list[Any] = [s[:, self.num_prefix_tokens:] for s in streams]
        if output_fmt == "NCTHW":
            B, (T, H, W) = x.shape[0], self.token_grid
            intermediates = [y.reshape(B, T, H, W, -1).permute(0, 4, 1, 2, 3).contiguous() for y in intermediates]
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix))
        if intermediates_only:
            return intermediates
        return self.norm_tokens(last), intermediates


class VideoMamba(MambaVideoBackbone):
    """VideoMamba classifier: x (B, 3, T, H, W) -> logits (B, num_classes).

    ``forward(x) == forward_head(forward_features(x))``. ``forward_features`` follows timm: the final-normed
    token sequence (B, 1 + T'H'W', C). The official ``forward_features`` returned the normed cls vector
    (B, C) instead: that is ``forward_head(forward_features(x), pre_logits=True)`` (in eval mode; in training
    it also has the head dropout applied, being exactly what the head sees).
    """

    def __init__(self, num_classes: int = 1000, drop_rate: float = 0.0, fc_drop_rate: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.pos_drop = nn.Dropout(drop_rate)
        self.head_drop = nn.Dropout(fc_drop_rate) if fc_drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.norm_f = self.make_norm()
        self.init_weights()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` (0 = identity).

        Pooling is always the cls token; ``global_pool`` is accepted for timm's signature and must be
        None or "token".
        """
        if global_pool not in (None, "token"):
            raise ValueError(f"VideoMamba pools the cls token only, got global_pool={global_pool!r}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def prune_heads(self) -> None:
        """``prune_intermediate_layers``'s head removal: an identity classifier."""
        self.reset_classifier(0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, T, H, W) -> final-normed tokens (B, 1 + T'*H'*W', embed_dim), cls first."""
        last, _ = self._run_blocks(self.prepare_tokens(x))
        return self.norm_tokens(last)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, 1 + L, C) -> logits (B, num_classes), or with ``pre_logits`` the (B, C) vector the head
        sees: the cls token after the head dropout."""
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# One tagged cfg per released checkpoint (models/releases.py); the ImageNet-1K one at 224 px is each size's default.
default_cfgs = generate_default_cfgs(release_cfgs(("videomamba_tiny", "videomamba_small", "videomamba_middle")))

MODEL_SIZES = {
    "tiny": {"patch_size": 16, "embed_dim": 192, "depth": 24},
    "small": {"patch_size": 16, "embed_dim": 384, "depth": 24},
    "middle": {"patch_size": 16, "embed_dim": 576, "depth": 32},
}


@register_model
def videomamba_tiny(pretrained: bool = False, **kwargs: Any) -> VideoMamba:
    return build_video_model(VideoMamba, "videomamba_tiny", pretrained, **{**MODEL_SIZES["tiny"], **kwargs})


@register_model
def videomamba_small(pretrained: bool = False, **kwargs: Any) -> VideoMamba:
    return build_video_model(VideoMamba, "videomamba_small", pretrained, **{**MODEL_SIZES["small"], **kwargs})


@register_model
def videomamba_middle(pretrained: bool = False, **kwargs: Any) -> VideoMamba:
    return build_video_model(VideoMamba, "videomamba_middle", pretrained, **{**MODEL_SIZES["middle"], **kwargs})
