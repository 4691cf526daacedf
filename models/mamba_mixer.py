"""Bidirectional Mamba mixer (the "v2" bimamba of Vim/VideoMamba) with the official parameter names.

The forward direction and the time-reversed backward direction share ``in_proj`` and ``out_proj`` and
have their own conv / projections / SSM parameters (suffix ``_b``); their outputs are summed and gated.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.ops import causal_conv1d_fn, selective_scan_fn

# Largest channel chunk (batch · channels · L elements) the lean inference path scans at once: 1 MB in fp32.
LEAN_CHUNK_ELEMENTS = 1 << 18


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

    def _direction_params(self, suffix: str) -> tuple[nn.Conv1d, nn.Linear, nn.Linear, torch.Tensor, torch.Tensor]:
        """conv1d, x_proj, dt_proj, A = -exp(A_log) (fp32) and D of the direction ``suffix`` ("" or "_b")."""
        A_log = self.A_log if suffix == "" else self.A_b_log
        return (getattr(self, f"conv1d{suffix}"), getattr(self, f"x_proj{suffix}"), getattr(self, f"dt_proj{suffix}"),
                -torch.exp(A_log.float()), getattr(self, f"D{suffix}"))

    def _split_projection(self, x_dbl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x_proj output (B, L, dt_rank + 2N) -> dt as contiguous (B, dt_rank, L) (the Δ projection's operand;
        a strided one made MKL keep per-thread buffers) and B, C as (B, N, L) views of time-major memory,
        which the CPU scans read without a copy (the CUDA glue makes them unit-stride along L itself)."""
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        return dt.transpose(1, 2).contiguous(), B.contiguous().transpose(1, 2), C.contiguous().transpose(1, 2)

    def _direction(self, x: torch.Tensor, suffix: str) -> torch.Tensor:
        """One scan direction: x (B, d_inner, L) -> ungated SSM output (B, d_inner, L)."""
        conv, x_proj, dt_proj, A, D = self._direction_params(suffix)
        x = causal_conv1d_fn(x, conv.weight.squeeze(1), conv.bias, activation="silu")
        dt, B, C = self._split_projection(x_proj(x.transpose(1, 2)))
        # delta = dt_proj without its bias (the scan adds it), computed straight into (B, d_inner, L) layout.
        return selective_scan_fn(x, torch.matmul(dt_proj.weight, dt), A, B, C, D.float(),
                                 delta_bias=dt_proj.bias.float(), delta_softplus=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states (B, L, d_model) -> (B, L, d_model).

        out_proj((forward scan + reversed backward scan) · silu(z)). The official code gates each direction
        with silu(z) inside its scan and then sums; gating the sum once is the same function and keeps
        neither a flipped copy of z nor a second gated output alive. Without autograd on CPU, the lean
        path below computes the same function with a much smaller memory peak.
        """
        if not torch.is_grad_enabled() and hidden_states.device.type != "cuda":
            return self._forward_lean(hidden_states)
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (B, 2*d_inner, L)
        x, z = xz.chunk(2, dim=1)
        y = self._direction(x, "") + self._direction(x.flip(-1), "_b").flip(-1)
        return self.out_proj((y * F.silu(z)).transpose(1, 2))

    def _forward_lean(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Inference: both directions add into one output buffer, which is then gated in place.

        The backward direction runs its conv backwards in time on the unflipped input and flips only its small
        projections and one channel chunk at a time; the scans run over channel chunks of at most
        ``LEAN_CHUNK_ELEMENTS`` elements, so Δ and the scan's temporaries stay small; in_proj runs in two halves
        (x first, z after the scans). No tensor larger than (B, d_inner, L) is allocated.
        """
        # in_proj in two halves: x now, z only once the scans are done.
        w_x, w_z = self.in_proj.weight.chunk(2, dim=0)
        b_x, b_z = (None, None) if self.in_proj.bias is None else self.in_proj.bias.chunk(2)
        x = F.linear(hidden_states, w_x, b_x).transpose(1, 2)  # (B, d_inner, L)
        y = x.new_zeros(x.shape)
        for suffix, reverse in (("", False), ("_b", True)):
            conv, x_proj, dt_proj, A, D = self._direction_params(suffix)
            u = causal_conv1d_fn(x, conv.weight.squeeze(1), conv.bias, activation="silu", reverse=reverse)
            x_dbl = x_proj(u.transpose(1, 2))
            dt, B, C = self._split_projection(x_dbl.flip(1) if reverse else x_dbl)  # shared by every chunk
            step = max(1, LEAN_CHUNK_ELEMENTS // (u.shape[0] * u.shape[2]))
            for c in range(0, self.d_inner, step):
                rows = slice(c, c + step)
                y_c = selective_scan_fn(
                    u[:, rows].flip(-1) if reverse else u[:, rows],
                    torch.matmul(dt_proj.weight[rows], dt), A[rows], B, C, D[rows].float(),
                    delta_bias=dt_proj.bias[rows].float(), delta_softplus=True,
                )
                y[:, rows] += y_c.flip(-1) if reverse else y_c
            del u
        del x
        # Gate in (B, L, d_inner) layout: silu(z) is computed contiguous and takes y's product in place.
        gated = F.silu(F.linear(hidden_states, w_z, b_z), inplace=True).mul_(y.transpose(1, 2))
        del y
        return self.out_proj(gated)
