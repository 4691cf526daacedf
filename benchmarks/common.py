"""Timing and peak-memory helpers shared by the benchmarks (their tables: ``utils.table``).

Peak memory on CPU is measured per configuration in a fresh child process: the parent reaps the child
with ``os.wait4`` and reads that child's own ``ru_maxrss`` (``getrusage(RUSAGE_CHILDREN)`` would give
the maximum over all children reaped so far, not the one just run).
"""
from __future__ import annotations

import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass
class Timing:
    """Wall-clock and process CPU seconds (all threads) of the timed repeats, warm-up excluded.

    CPU time is the steadier figure when other jobs share the cores; wall time is what a user waits.
    """

    times: list[float]
    cpu_times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_times)


def time_call(fn: Callable[[], object], repeats: int, warmup: int) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (perf_counter and process_time)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times, cpu_times = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - wall)
        cpu_times.append(time.process_time() - cpu)
    return Timing(times, cpu_times)


def _maxrss_to_bytes(maxrss: int) -> int:
    """``ru_maxrss`` is in KiB on Linux and in bytes on macOS."""
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def peak_rss_bytes() -> int:
    """High-water resident set size of this process so far."""
    return _maxrss_to_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def current_rss_bytes() -> int:
    """Resident set size of this process now (``/proc/self/statm``; the peak where /proc is absent)."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return peak_rss_bytes()


@dataclass
class ChildResult:
    """What one isolated child run produced: its stdout, exit status and peak RSS."""

    stdout: str
    returncode: int
    peak_rss_bytes: int


def run_isolated(cmd: Sequence[str], timeout_s: float | None = None, env: dict[str, str] | None = None) -> ChildResult:
    """Run ``cmd`` in a fresh process (stderr inherited), return its stdout and its own peak RSS.

    A child still running after ``timeout_s`` seconds is killed and reported with returncode -9.
    """
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, env=env, text=True)
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        if deadline is not None and time.monotonic() > deadline:
            logger.warning("child %s ran past %g s; killing it", " ".join(cmd), timeout_s)
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    reader.join()
    proc.stdout.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ChildResult("".join(chunks), proc.returncode, _maxrss_to_bytes(usage.ru_maxrss))


@contextlib.contextmanager
def busy_neighbour(active: bool = True) -> Iterator[None]:
    """While active, one competing process busy-loops on the machine (a DataLoader worker, another job)."""
    if not active:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def cpu_model_name() -> str:
    """CPU model as ``lscpu`` prints it (falls back to ``platform.processor()``)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def cpu_identity() -> str:
    """The CPU as the performance goals need it: model name, vendor family/model numbers and the vector ISA
    (AVX2, AVX-512, with BF16 / AMX), from /proc/cpuinfo where present."""
    fields: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if not line.strip():
                break
    flags = set(fields.get("flags", "").split())
    isa = ("AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2") + "".join(
        f" {name}" for flag, name in (("avx512_bf16", "+BF16"), ("amx_bf16", "+AMX")) if flag in flags)
    family = f"family {fields['cpu family']} model {fields['model']}, " if "cpu family" in fields else ""
    return f"{cpu_model_name()} ({family}{isa})"


def machine_description(threads: int) -> str:
    """One line naming the CPU (`cpu_identity`), the core count and the intra-op threads used."""
    return f"{cpu_identity()}, {os.cpu_count()} logical CPUs, {threads} torch threads, {platform.system()}"
