"""Bidirectional Mamba mixer (the "v2" bimamba of Vim/VideoMamba) with the official parameter names.

The forward direction and the time-reversed backward direction share ``in_proj`` and ``out_proj`` and
have their own conv / projections / SSM parameters (suffix ``_b``); their outputs are summed and gated.
The whole mixer, in_proj to out_proj, runs as one op, `models.ops.bimamba_inner_fn` (fused kernels on CPU and
CUDA, the composed standalone ops as reference and fallback).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from models.ops import Direction, InnerParams, bimamba_inner_fn, check_backend


class BiMambaMixer(nn.Module):
    """Sequence mixer (B, L, d_model) -> (B, L, d_model).

    Args follow ``mamba_ssm.modules.mamba_simple.Mamba``: d_inner = expand * d_model, state size d_state,
    dt_rank = ceil(d_model / 16) for "auto", depthwise causal conv of width d_conv. ``backend`` picks the kernels
    of this module (one of `models.ops.BACKENDS`); None follows the process default (`models.ops.set_backend`
    or $VIDEOMAMBA_SCAN_BACKEND), so "auto" unless set: the fused path on CPU and CUDA.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        self.backend = None if backend is None else check_backend(backend, "BiMambaMixer(backend=...)")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self._dt_init = (dt_init, dt_scale, dt_min, dt_max, dt_init_floor)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        for suffix in ("", "_b"):
            conv = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1,
                             bias=conv_bias)
            setattr(self, f"conv1d{suffix}", conv)
            setattr(self, f"x_proj{suffix}", nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False))
            setattr(self, f"dt_proj{suffix}", nn.Linear(self.dt_rank, self.d_inner, bias=True))
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.A_b_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D_b = nn.Parameter(torch.empty(self.d_inner))
        for p in (self.A_log, self.D, self.A_b_log, self.D_b):
            p._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's SSM initialisation of both directions.

        S4D-real A (A_log = log 1..N per channel), D = 1, dt_proj weight uniform in +-dt_rank^-0.5 * dt_scale
        (or constant), dt_proj bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max], floored.
        """
        dt_init, dt_scale, dt_min, dt_max, dt_floor = self._dt_init
        std = self.dt_rank ** -0.5 * dt_scale
        s4d = torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand(self.d_inner, -1)
        for suffix in ("", "_b"):
            dt_proj = getattr(self, f"dt_proj{suffix}")
            if dt_init == "random":
                nn.init.uniform_(dt_proj.weight, -std, std)
            else:
                nn.init.constant_(dt_proj.weight, std)
            log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            dt = torch.exp(log_dt).clamp(min=dt_floor)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.copy_(s4d)
        self.A_b_log.copy_(s4d)
        self.D.fill_(1.0)
        self.D_b.fill_(1.0)

    def _direction(self, suffix: str) -> Direction:
        """The parameters of direction ``suffix`` ("" or "_b"), A = -exp(A_log) in fp32 (fp64 for an fp64 model)."""
        A_log = self.A_log if suffix == "" else self.A_b_log
        conv, x_proj, dt_proj = (getattr(self, f"{name}{suffix}") for name in ("conv1d", "x_proj", "dt_proj"))
        A = -torch.exp(A_log.to(torch.promote_types(A_log.dtype, torch.float32)))
        return Direction(conv.weight.squeeze(1), conv.bias, x_proj.weight, dt_proj.weight, dt_proj.bias, A,
                         getattr(self, f"D{suffix}"))

    def inner_params(self) -> InnerParams:
        """The parameters of the inner op: the projections and both directions."""
        return InnerParams(self.in_proj.weight, self.in_proj.bias, self._direction(""), self._direction("_b"),
                           self.out_proj.weight, self.out_proj.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states (B, L, d_model) -> (B, L, d_model): out_proj((forward scan + reversed backward scan)
        · silu(z)). The official code gates each direction with silu(z) inside its scan and then sums; gating
        the sum once is the same function."""
        return bimamba_inner_fn(hidden_states, self.inner_params(), backend=self.backend)
