"""Training checkpoints on disk: atomic writes, RNG states, and finding the newest complete one.

Plain checkpoints are single files ``checkpoint-{epoch}.pth`` / ``checkpoint-latest.pth`` / ``checkpoint-best.pth``
written to a temp file and renamed, so a file with that name is always complete. DeepSpeed checkpoints are
directories with the same names; a ``complete`` marker is written after DeepSpeed finishes.
(Loading *pretrained* weights for ``--finetune`` is ``models.checkpoint.load_finetune_checkpoint``, not this.)
"""
from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

_MARKER = "complete"


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temp file in the same folder, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("saved checkpoint %s", path)


def read(path: Path) -> dict[str, Any]:
    """Load a plain checkpoint file onto the CPU, with a clear error when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise RuntimeError(f"checkpoint {path} cannot be read: {err}") from err


def mark_complete(directory: Path) -> None:
    """Write the marker that says a DeepSpeed checkpoint directory is fully written."""
    (Path(directory) / _MARKER).write_text("ok\n")


def unmark_complete(directory: Path) -> None:
    (Path(directory) / _MARKER).unlink(missing_ok=True)


def is_complete(path: Path) -> bool:
    path = Path(path)
    return path.is_file() if path.suffix == ".pth" else (path / _MARKER).is_file()


def find_latest(output_dir: Path) -> Path | None:
    """Newest complete ``checkpoint-*`` (file or DeepSpeed folder, ``-best`` excluded) by modification time."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = [p for p in output_dir.glob("checkpoint-*") if p.stem != "checkpoint-best" and is_complete(p)]
    if not found:
        return None
    return max(found, key=lambda p: (p / _MARKER).stat().st_mtime_ns if p.is_dir() else p.stat().st_mtime_ns)


def best_checkpoint(output_dir: Path, deepspeed: bool = False) -> Path | None:
    """Complete ``checkpoint-best`` of ``output_dir`` (the official regression script's ``checkpoint-best_val``
    is accepted too), or None."""
    suffix = "" if deepspeed else ".pth"
    for name in ("checkpoint-best", "checkpoint-best_val"):
        path = Path(output_dir) / f"{name}{suffix}"
        if is_complete(path):
            return path
    return None


def checkpoint_to_evaluate(output_dir: str, resume: str, test_best: bool, deepspeed: bool = False,
                           search: bool = True) -> Path | None:
    """The weights ``--eval`` tests: with ``--test_best`` the ``checkpoint-best`` of ``output_dir`` (an error when
    there is none); else ``--resume``; else (unless ``search`` is off: ``--no_auto_resume``) the newest complete
    checkpoint of ``output_dir``, then its ``checkpoint-best``; None when there is none of these (the
    ``--finetune`` weights are tested)."""
    out = Path(output_dir) if output_dir else None
    if test_best:
        best = best_checkpoint(out, deepspeed) if out is not None else None
        if best is None:
            raise FileNotFoundError(f"--eval --test_best: no complete checkpoint-best in --output_dir "
                                    f"{output_dir or '(not set)'}")
        return best
    if resume:
        return Path(resume)
    if out is None or not search:
        return None
    return find_latest(out) or best_checkpoint(out, deepspeed)


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA when present) random states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
