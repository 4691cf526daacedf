"""Running averages and periodic progress lines with rate and ETA (rank 0 logs them)."""
from __future__ import annotations

import datetime
import logging
import time
from collections import defaultdict

logger = logging.getLogger(__name__)


class Meter:
    """Running mean of a scalar weighted by sample count."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0.0
        self.last = 0.0

    def update(self, value: float, n: float = 1.0) -> None:
        self.last = value
        self.total += value * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.total / self.count if self.count else float("nan")


class Progress:
    """Collects meters and logs ``header [i/n] eta ... rate ... name: last (avg)`` every ``print_freq`` steps.

    ``first``: steps done before this process started (a resumed epoch); rate and ETA count from there.
    """

    def __init__(self, header: str, total: int, print_freq: int = 10, first: int = 0) -> None:
        self.header = header
        self.total = total
        self.print_freq = max(1, print_freq)
        self.meters: dict[str, Meter] = defaultdict(Meter)
        self.first = first
        self.start = time.time()

    def sums(self) -> dict[str, tuple[float, float]]:
        """``{name: (total, count)}`` of every meter, e.g. to carry an epoch's averages over a resume."""
        return {k: (m.total, m.count) for k, m in sorted(self.meters.items())}

    def add_sums(self, sums: dict[str, tuple[float, float]]) -> None:
        """Add ``sums`` (from ``sums()``) to the meters."""
        for name, (total, count) in sums.items():
            self.meters[name].total += total
            self.meters[name].count += count

    def update(self, n: float = 1.0, **values: float) -> None:
        for name, value in values.items():
            if value is not None:
                self.meters[name].update(float(value), n)

    def step(self, i: int, samples_per_step: int) -> None:
        """Call after step ``i`` (0-based); logs on the first, every ``print_freq``-th and the last step."""
        done = i + 1
        if not (i == self.first or done % self.print_freq == 0 or done == self.total):
            return
        elapsed = time.time() - self.start
        ran = max(done - self.first, 1)
        rate = ran * samples_per_step / max(elapsed, 1e-9)
        eta = elapsed / ran * (self.total - done)
        values = "  ".join(f"{k}: {m.last:.4g} ({m.avg:.4g})" for k, m in self.meters.items())
        logger.info("%s [%d/%d] eta %s  %.1f samples/s  %s", self.header, done, self.total,
                    datetime.timedelta(seconds=int(eta)), rate, values)
