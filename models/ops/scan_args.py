"""Argument checks shared by every selective-scan backend.

All backends accept the mamba_ssm layout: u, delta, z (batch, d_inner, L); A (d_inner, N); B, C (batch, N, L) or
(batch, G, N, L) with G groups dividing d_inner, or time-invariant (d_inner, N) (mamba_ssm's non-"variable" B, C);
D, delta_bias (d_inner,).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor


def check_scan_args(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Validate shapes and return B, C as (batch, G, N, L) with one group count G for both (views where possible).

    A time-invariant (d_inner, N) matrix becomes one group per channel (G = d_inner, broadcast over batch and L);
    the other of B, C then also gets one group per channel. `reduce_group_grad` maps gradients back.
    """
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, d_inner, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta shape {tuple(delta.shape)} != u shape {tuple(u.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z shape {tuple(z.shape)} != u shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (d_inner={dim}, N), got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported, A must be real")
    n_state = A.shape[1]
    groups = []
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 2 and tuple(t.shape) == (dim, n_state):
            t = t[None, :, :, None].expand(batch, dim, n_state, length)
        elif t.dim() == 3:
            t = t.unsqueeze(1)
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != n_state or t.shape[3] != length:
            raise ValueError(
                f"selective_scan: {name} must be (batch={batch}, N={n_state}, L={length}), (batch, G, N, L) or "
                f"time-invariant (d_inner={dim}, N={n_state}), got {tuple(t.shape)}"
            )
        if dim % t.shape[1] != 0:
            raise ValueError(f"selective_scan: {name} has {t.shape[1]} groups, which does not divide d_inner={dim}")
        groups.append(t)
    if groups[0].shape[1] != groups[1].shape[1]:
        if B.dim() != 2 and C.dim() != 2:
            raise ValueError(f"selective_scan: B has {groups[0].shape[1]} groups but C has {groups[1].shape[1]}")
        groups = [per_channel(t, dim) for t in groups]
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"selective_scan: {name} must be (d_inner={dim},), got {tuple(t.shape)}")
    return groups[0], groups[1]


def per_channel(BC: Tensor, dim: int) -> Tensor:
    """(batch, G, N, L) -> (batch, d_inner, N, L), channel d reading group d // (d_inner / G)."""
    batch, groups, n_state, length = BC.shape
    if groups == dim:
        return BC
    return BC.unsqueeze(2).expand(batch, groups, dim // groups, n_state, length).reshape(batch, dim, n_state, length)


def reduce_group_grad(grad: Tensor, like: Tensor) -> Tensor:
    """The gradient of B (or C) as given (``like``: (d_inner, N), (batch, N, L) or (batch, G, N, L)) from the
    gradient (batch, G', N, L) of its `check_scan_args` form."""
    if like.dim() == 2:
        return grad.sum((0, 3))
    groups = 1 if like.dim() == 3 else like.shape[1]
    batch, expanded, n_state, length = grad.shape
    grad = grad.view(batch, groups, expanded // groups, n_state, length).sum(2)
    return grad.squeeze(1) if like.dim() == 3 else grad


def discretise_delta(delta: Tensor, delta_bias: Optional[Tensor], delta_softplus: bool,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """Δ in `dtype`: delta (+ delta_bias per channel), then softplus when asked (torch threshold 20)."""
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = torch.nn.functional.softplus(delta)
    return delta

