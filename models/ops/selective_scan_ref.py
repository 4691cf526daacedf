"""Sequential reference selective scan: one time step at a time, autograd through the loop.

Slow (L Python steps, autograd graph of L nodes) but obviously right; tests compare every
other backend against it.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan_args import check_scan_args, discretise_delta


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """h_t = exp(Δ_t·A)·h_{t-1} + Δ_t·B_t·u_t;  y_t = C_t·h_t + D·u_t;  out = y·silu(z).

    Shapes as mamba_ssm (see `scan_args`). Computes in fp32 (fp64 for fp64 u, so that fp64 tests of other
    paths have an fp64 reference) and returns u's dtype; the last state (batch, d_inner, N) is in that dtype.
    """
    B, C = check_scan_args(u, delta, A, B, C, D, z, delta_bias)  # (batch, G, N, L)
    dtype_in = u.dtype
    compute = torch.float64 if dtype_in == torch.float64 else torch.float32
    batch, dim, _ = u.shape
    per_group = dim // B.shape[1]
    dt = discretise_delta(delta, delta_bias, delta_softplus, compute)  # (batch, d_inner, L)
    uf = u.to(compute)
    Af = A.to(compute)
    # Per-step slices via unbind: its backward is one stack, not one full-size scatter per step.
    steps = zip(dt.unbind(-1), uf.unbind(-1), B.to(compute).unbind(-1), C.to(compute).unbind(-1))
    h = uf.new_zeros(batch, dim, Af.shape[1])
    ys = []
    for dt_t, u_t, B_t, C_t in steps:  # (batch, d_inner) x2, (batch, G, N) x2
        B_t = B_t.repeat_interleave(per_group, dim=1)  # channel d reads group d // per_group
        C_t = C_t.repeat_interleave(per_group, dim=1)
        h = torch.exp(dt_t[..., None] * Af) * h + (dt_t * u_t)[..., None] * B_t
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + uf * D.to(compute)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out
