"""Running the entry scripts as a user does, in subprocesses (one process, or two under torchrun), for the
resume, error and evaluation tests. Every run goes through ``tests/kill_wrapper.py``, which can SIGKILL it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WRAPPER = REPO / "tests" / "kill_wrapper.py"
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "VIDEOMAMBA_CLIP_DIR")


def environment(**extra: str) -> dict[str, str]:
    """One thread per process and the PyTorch scan (no C++ build), nothing inherited from a launcher."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    env.update(OMP_NUM_THREADS="1", VIDEOMAMBA_SCAN_BACKEND="torch", **extra)
    return env


def command(script: str, argv: list[str], nproc: int = 1) -> list[str]:
    """``python tests/kill_wrapper.py SCRIPT ARGV``, under ``torchrun --standalone`` when ``nproc`` > 1."""
    runner = [sys.executable]
    if nproc > 1:
        runner += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return [*runner, str(WRAPPER), script, *argv]


def start(script: str, argv: list[str], log: Path, nproc: int = 1, kill_at: int | None = None,
          kill_in_save: int | None = None) -> subprocess.Popen:
    """Start a run with stdout and stderr in ``log`` (a file, so that the DataLoader workers a SIGKILL orphans
    hold no pipe open). ``kill_at``: SIGKILL before that micro-batch; ``kill_in_save``: in that checkpoint write."""
    env = environment()
    if kill_at is not None:
        env["KILL_AT_MICRO_BATCH"] = str(kill_at)
    if kill_in_save is not None:
        env["KILL_IN_SAVE"] = str(kill_in_save)
    with open(log, "w") as out:
        return subprocess.Popen(command(script, argv, nproc), stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=REPO)


def run(script: str, argv: list[str], log: Path, nproc: int = 1, kill_at: int | None = None,
        kill_in_save: int | None = None, timeout: float = 300) -> int:
    """``start`` and wait; returns the exit status (-9 when the process SIGKILLed itself)."""
    return start(script, argv, log, nproc, kill_at, kill_in_save).wait(timeout=timeout)
