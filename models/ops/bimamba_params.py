"""The parameters of the bidirectional mixer's inner path, as the fused op takes them."""
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

from torch import Tensor


class Direction(NamedTuple):
    """One scan direction's parameters (d_inner channels, state size N, conv width W, rank R of Δ's projection)."""

    conv_weight: Tensor  # (d_inner, W)
    conv_bias: Optional[Tensor]  # (d_inner,)
    x_proj_weight: Tensor  # (R + 2N, d_inner)
    dt_proj_weight: Tensor  # (d_inner, R)
    dt_proj_bias: Tensor  # (d_inner,)
    A: Tensor  # (d_inner, N): -exp(A_log)
    D: Tensor  # (d_inner,)


class InnerParams(NamedTuple):
    """Everything the inner path uses besides its input: the two projections and both directions."""

    in_proj_weight: Tensor  # (2·d_inner, d_model)
    in_proj_bias: Optional[Tensor]  # (2·d_inner,)
    forward: Direction
    backward: Direction
    out_proj_weight: Tensor  # (d_model, d_inner)
    out_proj_bias: Optional[Tensor]  # (d_model,)

    def flat(self) -> Tuple[Optional[Tensor], ...]:
        """The 18 tensors (or None) in the fused op's argument order."""
        return (self.in_proj_weight, self.in_proj_bias, *self.forward, *self.backward, self.out_proj_weight,
                self.out_proj_bias)

    @classmethod
    def from_flat(cls, flat: Sequence[Optional[Tensor]]) -> "InnerParams":
        size = len(Direction._fields)
        if len(flat) != FLAT_SIZE:
            raise ValueError(f"expected {FLAT_SIZE} parameters, got {len(flat)}")
        return cls(flat[0], flat[1], Direction(*flat[2:2 + size]), Direction(*flat[2 + size:2 + 2 * size]),
                   flat[-2], flat[-1])


FLAT_SIZE = 4 + 2 * len(Direction._fields)


def map_params(fn: Callable[..., Tensor], params: InnerParams, *others: InnerParams) -> InnerParams:
    """InnerParams of fn(t, *the matching entries of others) for every parameter t that is not None."""
    columns = zip(params.flat(), *(o.flat() for o in others))
    return InnerParams.from_flat([None if t is None else fn(t, *rest) for t, *rest in columns])


def map_gemm_operands(fn: Callable[[Tensor], Tensor], params: InnerParams) -> InnerParams:
    """`params` with fn applied to the projection weights and biases (in_proj, x_proj, dt_proj weight, out_proj:
    the GEMM operands, which mixed precision casts); the conv weights, A, D and the Δ bias as they are."""
    def apply(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else fn(t)

    def direction(d: Direction) -> Direction:
        return d._replace(x_proj_weight=apply(d.x_proj_weight), dt_proj_weight=apply(d.dt_proj_weight))

    return params._replace(in_proj_weight=apply(params.in_proj_weight), in_proj_bias=apply(params.in_proj_bias),
                           forward=direction(params.forward), backward=direction(params.backward),
                           out_proj_weight=apply(params.out_proj_weight), out_proj_bias=apply(params.out_proj_bias))
