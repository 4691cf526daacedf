"""Bidirectional Mamba mixer (the "v2" bimamba of Vim/VideoMamba) with the official parameter names.

The forward direction and the time-reversed backward direction share ``in_proj`` and ``out_proj`` and
have their own conv / projections / SSM parameters (suffix ``_b``); their outputs are summed.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from models.ops import causal_conv1d_fn, selective_scan_fn


class BiMambaMixer(nn.Module):
    """Sequence mixer (B, L, d_model) -> (B, L, d_model).

    Args follow ``mamba_ssm.modules.mamba_simple.Mamba``: d_inner = expand * d_model, state size d_state,
    dt_rank = ceil(d_model / 16) for "auto", depthwise causal conv of width d_conv.
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
    ) -> None:
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
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

    def _direction(self, x: torch.Tensor, z: torch.Tensor, suffix: str) -> torch.Tensor:
        """One scan direction: x, z (B, d_inner, L) -> gated SSM output (B, d_inner, L)."""
        conv = getattr(self, f"conv1d{suffix}")
        x_proj = getattr(self, f"x_proj{suffix}")
        dt_proj = getattr(self, f"dt_proj{suffix}")
        A_log = getattr(self, "A_log" if suffix == "" else "A_b_log")
        D = getattr(self, f"D{suffix}")

        x = causal_conv1d_fn(x, conv.weight.squeeze(1), conv.bias, activation="silu")
        x_dbl = x_proj(x.transpose(1, 2))  # (B, L, dt_rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ dt_proj.weight.t()).transpose(1, 2)  # (B, d_inner, L); bias goes to the scan
        A = -torch.exp(A_log.float())
        return selective_scan_fn(
            x, delta, A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(), D.float(), z=z,
            delta_bias=dt_proj.bias.float(), delta_softplus=True,
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states (B, L, d_model) -> (B, L, d_model): out_proj(forward scan + reversed backward scan)."""
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (B, 2*d_inner, L)
        x, z = xz.chunk(2, dim=1)
        y = self._direction(x, z, "")
        y_b = self._direction(x.flip(-1), z.flip(-1), "_b").flip(-1)
        return self.out_proj((y + y_b).transpose(1, 2))
