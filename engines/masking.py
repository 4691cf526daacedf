"""Token masks for masked distillation: the attention-guided mask, and the cls column the student's input takes.

Masks are bool (B, T'·H'·W') over the patch tokens, True = masked (the convention of ``utils.batch``);
``with_cls_column`` makes the student model's (official) input (B, 1 + T'·H'·W') from one.
"""
from __future__ import annotations

import torch


def attention_mask(attn: torch.Tensor, batch_size: int, mask_ratio: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample visible patches per frame with probability proportional to the teacher's cls attention.

    attn: (B·T, HW) non-negative cls→patch attention, frames of one sample consecutive.
    Each frame keeps ``HW − int(HW·mask_ratio)`` patches, drawn without replacement.
    Returns bool (B, T·HW), True = masked.
    """
    if attn.ndim != 2 or attn.shape[0] % batch_size:
        raise ValueError(f"attention must be (B*T, HW) with B={batch_size}, got {tuple(attn.shape)}")
    frames, hw = attn.shape
    keep = hw - int(hw * mask_ratio)
    if keep <= 0:
        raise ValueError(f"mask_ratio {mask_ratio} leaves no visible patch out of {hw}")
    probs = attn.detach().float().clamp_min(0) + 1e-12
    visible = torch.multinomial(probs, keep, replacement=False, generator=generator)
    mask = torch.ones(frames, hw, dtype=torch.bool, device=attn.device)
    mask.scatter_(1, visible, False)
    return mask.reshape(batch_size, -1)


def with_cls_column(mask: torch.Tensor) -> torch.Tensor:
    """Prepend a visible (False) cls column: (B, T'·H'·W') → (B, 1 + T'·H'·W'), the student model's mask."""
    cls = torch.zeros(mask.shape[0], 1, dtype=torch.bool, device=mask.device)
    return torch.cat([cls, mask.bool()], dim=1)
