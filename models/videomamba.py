"""VideoMamba classification backbone (Ti/S/M) with the official state-dict layout, registered with timm.

Tokens: a Conv3d tubelet embedding, per-frame cls + spatial ``pos_embed``, ``temporal_pos_embedding`` per
frame; the sequence is [cls] + frame 0 patches + frame 1 patches + ... (spatial-first). Pre-norm residual
Mamba blocks keep the residual stream in fp32; the classifier reads the final-normed cls token.
"""
from __future__ import annotations

import math
from typing import Any, Collection

import torch
import torch.nn as nn
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, to_2tuple, trunc_normal_
from timm.models import generate_default_cfgs, register_model, resolve_pretrained_cfg
from torch.utils.checkpoint import checkpoint

from models.checkpoint import load_finetune_checkpoint
from models.mamba_mixer import BiMambaMixer


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim (weight only, no bias), computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return out.to(x.dtype)


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
    """Mamba's add -> norm -> mixer block: returns (mixer output, fp32 residual stream entering its norm)."""

    def __init__(self, dim: int, ssm_cfg: dict | None = None, norm_epsilon: float = 1e-5, rms_norm: bool = True,
                 residual_in_fp32: bool = True, drop_path: float = 0.0) -> None:
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = BiMambaMixer(dim, **(ssm_cfg or {}))
        self.norm = RMSNorm(dim, eps=norm_epsilon) if rms_norm else nn.LayerNorm(dim, eps=norm_epsilon)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor | None = None,
                use_checkpoint: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_states, residual (B, L, C); ``drop_path`` applies to the previous block's output."""
        residual = hidden_states if residual is None else residual + self.drop_path(hidden_states)
        if self.residual_in_fp32:
            residual = residual.float()
        hidden_states = self.norm(residual.to(self.norm.weight.dtype))
        if use_checkpoint and hidden_states.requires_grad:
            hidden_states = checkpoint(self.mixer, hidden_states, use_reentrant=False)
        else:
            hidden_states = self.mixer(hidden_states)
        return hidden_states, residual


class MambaVideoBackbone(nn.Module):
    """Shared trunk of the classifier and the pretraining student: token embedding and the block stack.

    Subclasses add the final norm and their heads; parameter names match the official checkpoints.
    """

    def __init__(
        self,
        img_size: int = 224,
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
    ) -> None:
        super().__init__()
        if num_frames % kernel_size:
            raise ValueError(f"num_frames={num_frames} is not divisible by kernel_size (tubelet)={kernel_size}")
        # fused_add_norm only selects a fused CUDA kernel in the official code; the math is the same unfused.
        del fused_add_norm
        self.depth = depth
        self.num_frames = num_frames
        self.use_checkpoint = use_checkpoint
        self.checkpoint_num = checkpoint_num
        self.num_features = self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, kernel_size, channels, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, num_frames // kernel_size, embed_dim))
        # Block i drops the output of block i-1 with rate dpr[i-1]; the final add uses drop_path_rate.
        dpr = [0.0] + torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.layers = nn.ModuleList([
            Block(embed_dim, ssm_cfg, norm_epsilon, rms_norm, residual_in_fp32, drop_path=dpr[i])
            for i in range(depth)
        ])
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self._norm_cls = RMSNorm if rms_norm else nn.LayerNorm
        self._norm_epsilon = norm_epsilon

    def make_norm(self) -> nn.Module:
        """A final norm of the configured kind (RMSNorm or LayerNorm) over embed_dim."""
        return self._norm_cls(self.embed_dim, eps=self._norm_epsilon)

    def init_weights(self) -> None:
        """Official initialisation, run by subclasses once all modules exist.

        Linear: trunc_normal(.02) weights and zero biases, except the SSM dt projections (Mamba's dt init);
        LayerNorm: 1/0; pos_embed trunc_normal(.02); out_proj: kaiming_uniform(a=sqrt 5) / sqrt(depth)
        (Mamba's prenorm-residual rescale with one residual per layer). Patch embed keeps Conv3d's default.
        Unlike the official code, whose blanket Linear init also overwrote dt_proj, the dt projections keep
        Mamba's initialisation (log-uniform dt bias), as the SSM needs a sensible time-step range.
        """
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.rsplit(".", 1)[-1].startswith("dt_proj"):
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

    def get_num_layers(self) -> int:
        return len(self.layers)

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

    def run_blocks(self, hidden_states: torch.Tensor,
                   keep: Collection[int] = ()) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
        """Run the block stack on tokens (B, L, C).

        Returns the last block's output, the residual stream entering it (fp32) and, for each index i in
        ``keep``, the residual stream entering block i (the embedding plus the outputs of blocks 0..i-1).
        """
        residual = None
        kept: dict[int, torch.Tensor] = {}
        for idx, layer in enumerate(self.layers):
            ckpt = self.use_checkpoint and idx < self.checkpoint_num
            hidden_states, residual = layer(hidden_states, residual, use_checkpoint=ckpt)
            if idx in keep:
                kept[idx] = residual
        return hidden_states, residual, kept

    def final_residual(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Residual stream after the last block: residual + drop_path(last output)."""
        return residual + self.drop_path(hidden_states)


class VideoMamba(MambaVideoBackbone):
    """VideoMamba classifier: x (B, 3, T, H, W) -> logits (B, num_classes)."""

    def __init__(self, num_classes: int = 1000, drop_rate: float = 0.0, fc_drop_rate: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.pos_drop = nn.Dropout(drop_rate)
        self.head_drop = nn.Dropout(fc_drop_rate) if fc_drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.norm_f = self.make_norm()
        self.init_weights()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` (0 = identity)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, T, H, W) -> normalised cls feature (B, embed_dim)."""
        tokens = self.pos_drop(self.embed(x))
        hidden_states, residual, _ = self.run_blocks(tokens)
        residual = self.final_residual(hidden_states, residual)
        return self.norm_f(residual[:, 0].to(self.norm_f.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.forward_features(x)))


def default_video_cfg(**kwargs: Any) -> dict[str, Any]:
    """Default cfg: no downloadable weights (url/hf_hub_id empty), ImageNet mean/std, 8x224x224 clips."""
    return {
        "url": "", "hf_hub_id": "", "num_classes": 400, "input_size": (3, 8, 224, 224), "pool_size": None,
        "crop_pct": 1.0, "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "videomamba_tiny": default_video_cfg(),
    "videomamba_small": default_video_cfg(),
    "videomamba_middle": default_video_cfg(),
})

MODEL_SIZES = {
    "tiny": {"embed_dim": 192, "depth": 24},
    "small": {"embed_dim": 384, "depth": 24},
    "middle": {"embed_dim": 576, "depth": 32},
}


def build_registered(cls: type[nn.Module], variant: str, size: str, pretrained: bool,
                     **kwargs: Any) -> nn.Module:
    """Build ``cls`` for a registered variant; with ``pretrained``, load the local file given as
    ``pretrained_cfg_overlay=dict(file=...)`` through the finetune loader (nothing is downloaded)."""
    cfg = resolve_pretrained_cfg(variant, kwargs.pop("pretrained_cfg", None),
                                 kwargs.pop("pretrained_cfg_overlay", None))
    kwargs.pop("cache_dir", None)
    if pretrained and not cfg.file:
        raise ValueError(
            f"{variant}: no downloadable weights are configured; pass a local checkpoint with "
            f"pretrained_cfg_overlay=dict(file='/path/to/ckpt.pth') or build with pretrained=False and use "
            f"models.checkpoint.load_finetune_checkpoint")
    model = cls(**{"patch_size": 16, **MODEL_SIZES[size], **kwargs})
    model.pretrained_cfg = model.default_cfg = cfg.to_dict()
    if pretrained:
        load_finetune_checkpoint(model, cfg.file)
    return model


@register_model
def videomamba_tiny(pretrained: bool = False, **kwargs: Any) -> VideoMamba:
    return build_registered(VideoMamba, "videomamba_tiny", "tiny", pretrained, **kwargs)


@register_model
def videomamba_small(pretrained: bool = False, **kwargs: Any) -> VideoMamba:
    return build_registered(VideoMamba, "videomamba_small", "small", pretrained, **kwargs)


@register_model
def videomamba_middle(pretrained: bool = False, **kwargs: Any) -> VideoMamba:
    return build_registered(VideoMamba, "videomamba_middle", "middle", pretrained, **kwargs)
