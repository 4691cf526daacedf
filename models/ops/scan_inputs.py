"""Random selective-scan inputs with realistic ranges, for tests and benchmarks."""
from typing import Dict, Optional

import torch
from torch import Tensor


def random_scan_inputs(batch: int, dim: int, length: int, n_state: int = 16, groups: Optional[int] = None,
                       with_z: bool = True, with_D: bool = True, with_delta_bias: bool = True,
                       dtype: torch.dtype = torch.float32, seed: int = 0) -> Dict[str, Optional[Tensor]]:
    """Keyword arguments for `selective_scan_fn` (u, delta, A, B, C, D, z, delta_bias).

    Ranges keep the recurrence stable with or without softplus: A = -exp(·) < 0, delta and
    delta_bias positive (delta in [1e-3, 0.2], bias in [0, 0.1]). groups=None gives B, C as (batch, N, L); an int gives (batch, G, N, L).
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen)

    bc_shape = (batch, n_state, length) if groups is None else (batch, groups, n_state, length)
    inputs = {
        "u": randn(batch, dim, length),
        "delta": torch.rand(batch, dim, length, generator=gen) * 0.2 + 1e-3,
        "A": -torch.exp(randn(dim, n_state) * 0.5 + 0.5),
        "B": randn(*bc_shape),
        "C": randn(*bc_shape),
        "D": randn(dim) if with_D else None,
        "z": randn(batch, dim, length) if with_z else None,
        "delta_bias": torch.rand(dim, generator=gen) * 0.1 if with_delta_bias else None,
    }
    return {k: None if v is None else v.to(dtype) for k, v in inputs.items()}
