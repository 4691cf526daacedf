"""The parameters of one scan direction of the bidirectional mixer, as the fused inner path takes them."""
from typing import NamedTuple, Optional

from torch import Tensor


class Direction(NamedTuple):
    """One direction's parameters (d_inner channels, state size N, conv width W, rank R of Δ's projection)."""

    conv_weight: Tensor  # (d_inner, W)
    conv_bias: Optional[Tensor]  # (d_inner,)
    x_proj_weight: Tensor  # (R + 2N, d_inner)
    dt_proj_weight: Tensor  # (d_inner, R)
    dt_proj_bias: Tensor  # (d_inner,)
    A: Tensor  # (d_inner, N): -exp(A_log)
    D: Tensor  # (d_inner,)
