"""Per-step learning-rate and weight-decay schedules as plain arrays (one value per optimiser step)."""
from __future__ import annotations

import numpy as np


def cosine_schedule(
    base_value: float,
    final_value: float,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: int = 0,
    warmup_steps: int = -1,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """Linear warmup from ``start_warmup_value`` to ``base_value``, then a half cosine down to ``final_value``.

    Warmup lasts ``warmup_steps`` steps when > 0, else ``warmup_epochs * steps_per_epoch``. The warmup is
    ``linspace(start, base, warmup)`` (it ends exactly at ``base_value``); cosine step i of n is
    ``final + (base - final) * (1 + cos(pi * i / n)) / 2``. Returns ``epochs * steps_per_epoch`` float64 values.
    """
    total = epochs * steps_per_epoch
    if total <= 0:
        raise ValueError(f"schedule needs epochs * steps_per_epoch > 0, got {epochs} * {steps_per_epoch}")
    warmup = warmup_steps if warmup_steps > 0 else warmup_epochs * steps_per_epoch
    warmup = min(warmup, total)
    ramp = np.linspace(start_warmup_value, base_value, warmup) if warmup > 0 else np.zeros(0)
    n = total - warmup
    steps = np.arange(n)
    cosine = final_value + 0.5 * (base_value - final_value) * (1.0 + np.cos(np.pi * steps / max(n, 1)))
    return np.concatenate([ramp, cosine]).astype(np.float64)
