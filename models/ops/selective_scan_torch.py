"""Vectorised PyTorch kernel for the selective-scan recurrence (forward and analytic backward).

Same interface as the fused C++ extension (see `scan_autograd`), so one autograd Function drives
both. No autograd graph is built; it materialises a few (batch, d_inner, L, N) fp32 tensors, which
is fine for a fallback: the C++ kernel is the fast path.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .scan_args import discretise_delta


def linear_scan(a: Tensor, x: Tensor) -> Tensor:
    """h_t = a_t·h_{t-1} + x_t along dim 2 of (batch, d, L, N), with h_{-1} = 0.

    Sequential over L, vectorised over (batch, d, N): L small fused ops, no autograd graph.
    (Log-depth parallel scans move the whole (batch, d, L, N) tensor through memory several
    times and measured slower than this loop on CPU.)
    """
    h = torch.empty_like(x)
    state = torch.zeros_like(x[:, :, 0])
    for t in range(x.shape[2]):
        state = torch.addcmul(x[:, :, t], a[:, :, t], state)
        h[:, :, t] = state
    return h


def _expand(BCt: Tensor, dim: int) -> Tensor:
    """(batch, G, L, N) -> (batch, d_inner, L, N), channel d reading group d // (d_inner / G)."""
    batch, groups, length, n_state = BCt.shape
    return BCt.unsqueeze(2).expand(batch, groups, dim // groups, length, n_state).reshape(batch, dim, length, n_state)


def _group_sum(full: Tensor, groups: int) -> Tensor:
    """(batch, d_inner, L, N) -> (batch, G, L, N), summing the channels of each group."""
    batch, dim, length, n_state = full.shape
    return full.view(batch, groups, dim // groups, length, n_state).sum(2)


def _states(u: Tensor, dt: Tensor, A: Tensor, Bt: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Decays a = exp(dt·A), B expanded per channel, and states h; all (batch, d, L, N)."""
    a = torch.exp(dt[..., None] * A[:, None, :])
    Bx = _expand(Bt, u.shape[1])
    h = linear_scan(a, (dt * u)[..., None] * Bx)
    return a, Bx, h


def discretise(delta: Tensor, delta_bias: Optional[Tensor], softplus: bool) -> Tensor:
    """Δ = delta (+ delta_bias), softplus when asked, as fp32 contiguous (batch, d_inner, L)."""
    return discretise_delta(delta, delta_bias, softplus).contiguous()


def fwd(u: Tensor, dt: Tensor, A: Tensor, Bt: Tensor, Ct: Tensor) -> Tuple[Tensor, Tensor]:
    """y (batch, d_inner, L) and the last state (batch, d_inner, N)."""
    _, _, h = _states(u, dt, A, Bt)
    return (h * _expand(Ct, u.shape[1])).sum(-1), h[:, :, -1].clone()


def bwd(u: Tensor, dt: Tensor, A: Tensor, Bt: Tensor, Ct: Tensor, dy: Tensor) -> List[Tensor]:
    """[du, ddt, dA, dBt, dCt] of the recurrence given dy."""
    groups = Bt.shape[1]
    a, Bx, h = _states(u, dt, A, Bt)
    Cx = _expand(Ct, u.shape[1])
    dC = _group_sum(dy[..., None] * h, groups)
    # lam_t = dLoss/dh_t = dy_t·C_t + a_{t+1}·lam_{t+1}: the same recurrence, backwards in time.
    a_next = torch.cat([a[:, :, 1:], torch.zeros_like(a[:, :, :1])], dim=2)
    lam = linear_scan(a_next.flip(2), (dy[..., None] * Cx).flip(2)).flip(2)
    h_prev = torch.cat([torch.zeros_like(h[:, :, :1]), h[:, :, :-1]], dim=2)
    g_log_a = lam * h_prev * a  # dLoss/d(dt·A_n)
    lam_B = (lam * Bx).sum(-1)
    ddt = (g_log_a * A[:, None, :]).sum(-1) + lam_B * u
    dA = (g_log_a * dt[..., None]).sum((0, 2))
    dB = _group_sum(lam * (dt * u)[..., None], groups)
    return [lam_B * dt, ddt, dA, dB, dC]
