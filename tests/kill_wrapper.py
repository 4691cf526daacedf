"""Run an entry script in this process and SIGKILL the process at a chosen point (the resume tests' preemption).

    python tests/kill_wrapper.py SCRIPT [ARGS...]

``KILL_AT_MICRO_BATCH=N``: SIGKILL just before the backward pass of the N-th training micro-batch this process runs
(counted from 1). ``KILL_IN_SAVE=N``: SIGKILL inside the N-th ``torch.save`` (a checkpoint write) once half of its
bytes reached the file. Without either variable the script runs unchanged. Works under torchrun (each rank counts
its own micro-batches).
"""
import io
import os
import runpy
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from engines.runtime import DeepSpeedRuntime, TorchRuntime  # noqa: E402


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_at_micro_batch(n: int) -> None:
    calls = [0]
    for runtime in (TorchRuntime, DeepSpeedRuntime):
        def backward_step(self, *args, real=runtime.backward_step, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                _die()
            return real(self, *args, **kwargs)

        runtime.backward_step = backward_step


def _kill_in_save(n: int) -> None:
    real = torch.save
    calls = [0]

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] != n:
            return real(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        out = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f  # DeepSpeed passes a path
        out.write(data[: len(data) // 2])
        out.flush()
        os.fsync(out.fileno())
        _die()

    torch.save = save


if __name__ == "__main__":
    if os.environ.get("KILL_AT_MICRO_BATCH"):
        _kill_at_micro_batch(int(os.environ["KILL_AT_MICRO_BATCH"]))
    if os.environ.get("KILL_IN_SAVE"):
        _kill_in_save(int(os.environ["KILL_IN_SAVE"]))
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
