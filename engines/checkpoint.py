"""Training checkpoints on disk: when and what to write, atomic writes, RNG states, finding the newest complete one.

Plain checkpoints are single files ``checkpoint-{epoch}.pth`` / ``checkpoint-latest.pth`` / ``checkpoint-best.pth``
written to a temp file and renamed, so a file with that name is always complete (a killed write leaves only a
``.checkpoint-*.tmp`` file, removed by the next run). DeepSpeed checkpoints are directories with the same names:
DeepSpeed writes ours into a hidden staging folder ``.{tag}.saving``, which gets a ``complete`` marker and then
replaces ``{tag}`` by two renames (``install_folder``); a kill at any point leaves the previous or the new folder
complete, and ``recover_partial_saves`` finishes or discards what a killed run left. A folder without the marker
was written by the official code (or another DeepSpeed program) and counts as complete when it holds DeepSpeed's
model-states file.
(Loading *pretrained* weights for ``--finetune`` is ``models.checkpoint.load_finetune_checkpoint``, not this.)
"""
from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from engines.contracts import Runtime
from utils.config import RuntimeConfig
from utils.distributed import DistInfo, all_gather_objects, all_reduce_sum, barrier, get_rank
from utils.errors import BadFileError, MissingPathError, UsageError
from utils.safe_load import UntrustedCheckpointError, load_torch_file
from utils.state_dicts import mismatch

logger = logging.getLogger(__name__)

_MARKER = "complete"
DEEPSPEED_MODEL_STATES = "mp_rank_00_model_states.pt"  # written by DeepSpeed for every checkpoint
BEST_TAGS = ("checkpoint-best", "checkpoint-best_val")  # ours and the official regression script's


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


def staging_folder(output_dir: Path, tag: str) -> Path:
    """Where DeepSpeed writes checkpoint ``tag`` before ``install_folder`` puts it in place."""
    return Path(output_dir) / f".{tag}.saving"


def _old_folder(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def install_folder(staging: Path, target: Path) -> None:
    """Mark the fully written ``staging`` folder complete and make it ``target``: the old ``target`` is renamed
    away, ``staging`` renamed in, then the old one deleted."""
    (staging / _MARKER).write_text("ok\n")
    old = _old_folder(target)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def recover_partial_saves(output_dir: Path) -> None:
    """Clean up after a run killed while saving: delete plain-checkpoint temp files (``.checkpoint-*.tmp``) and
    unfinished DeepSpeed staging folders; a staging folder already marked complete whose target is missing (killed
    between the two renames of ``install_folder``) is put in place."""
    output_dir = Path(output_dir)
    for tmp in output_dir.glob(".checkpoint-*.tmp"):
        logger.info("removing %s, left by an interrupted checkpoint write", tmp)
        tmp.unlink(missing_ok=True)
    for staging in output_dir.glob(".checkpoint-*.saving"):
        target = output_dir / staging.name[1:-len(".saving")]
        if (staging / _MARKER).is_file() and not target.exists():
            logger.info("installing %s as %s (the run was killed while replacing it)", staging, target)
            os.replace(staging, target)
        else:
            logger.info("removing %s, left by an interrupted checkpoint write", staging)
            shutil.rmtree(staging, ignore_errors=True)
    for old in output_dir.glob(".checkpoint-*.old"):
        shutil.rmtree(old, ignore_errors=True)


def read(path: Path, trust_checkpoint: bool = False, mmap: bool = False) -> dict[str, Any]:
    """Load a plain checkpoint file onto the CPU, weights-only (``utils.safe_load``: ours always are; official ones
    with an ``argparse.Namespace`` too; anything else needs ``trust_checkpoint``), with a one-line user error when it
    is missing, unreadable or untrusted. ``mmap``: tensors stay on disk until used (a cheap look at the other
    entries: ``peek``)."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"checkpoint {path} does not exist")
    state = load_torch_file(path, trust_checkpoint, mmap=mmap)
    if not isinstance(state, dict):
        raise BadFileError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    return state


def peek(path: Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """The entries of a checkpoint (a file, or a DeepSpeed folder's model states) with its tensors memory-mapped,
    not read: cheap however big the file. Read as `read` reads it."""
    path = Path(path)
    file = path / DEEPSPEED_MODEL_STATES if path.is_dir() else path
    try:
        return read(file, trust_checkpoint, mmap=True)
    except UntrustedCheckpointError:
        raise
    except BadFileError:  # a file of the legacy (non-zip) format cannot be memory-mapped
        return read(file, trust_checkpoint)


def check_fits(path: Path, weights: Mapping[str, torch.Tensor], module: torch.nn.Module) -> None:
    """``BadFileError`` naming ``path`` when ``weights`` do not load strictly into ``module``: which tensors differ
    (shapes: checkpoint vs model) and which flags set them (``utils.state_dicts.mismatch``)."""
    problem = mismatch(weights, module.state_dict())
    if problem:
        raise BadFileError(f"{path} does not fit the model (shapes: checkpoint vs model): {problem}. Use the flags "
                           "of the run that wrote it (its args.json), or another --output_dir")


def is_official_deepspeed(path: Path) -> bool:
    """A DeepSpeed folder without our marker (written by the official code) that holds the model states."""
    path = Path(path)
    return path.is_dir() and not (path / _MARKER).exists() and (path / DEEPSPEED_MODEL_STATES).is_file()


def is_complete(path: Path) -> bool:
    """A plain checkpoint file; one of our DeepSpeed folders (marked complete); or an official DeepSpeed folder
    (``is_official_deepspeed``)."""
    path = Path(path)
    if path.suffix == ".pth":
        return path.is_file()
    return (path / _MARKER).is_file() or is_official_deepspeed(path)


def position(path: Path) -> tuple[int, int]:
    """Where the run stood when it wrote checkpoint ``path``: (last finished epoch, optimiser steps into the next).
    ``checkpoint-{N}``: (N, 0), from the name; any other (``checkpoint-latest``): its stored ``epoch`` and
    ``epoch_step``, read cheaply (``peek``); (-1, 0) when it has no epoch or cannot be read (with a warning)."""
    tag = Path(path).name.removeprefix("checkpoint-").removesuffix(".pth")
    if tag.isdigit():
        return int(tag), 0
    try:
        state = peek(path)
    except BadFileError as err:
        logger.warning("%s; it counts as the oldest checkpoint", err)
        return -1, 0
    epoch = state.get("epoch")
    return (int(epoch), int(state.get("epoch_step") or 0)) if isinstance(epoch, int) else (-1, 0)


def recover_and_find_latest(output_dir: Path) -> Path | None:
    """`find_latest` after rank 0 has run `recover_partial_saves`, so a checkpoint a killed save left staged is
    found; every rank calls it."""
    if get_rank() == 0 and Path(output_dir).is_dir():
        recover_partial_saves(Path(output_dir))
    barrier()
    return find_latest(output_dir)


def find_latest(output_dir: Path) -> Path | None:
    """The newest complete ``checkpoint-*`` (file or DeepSpeed folder; ``-best`` and ``-best_val`` excluded) by
    the training position it holds (``position``), not by file times, which a copy or a touch changes; on a tie,
    ``checkpoint-latest``."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = [p for p in output_dir.glob("checkpoint-*") if p.stem not in BEST_TAGS and is_complete(p)]
    if not found:
        return None
    newest = max(found, key=lambda p: (*position(p), p.stem == "checkpoint-latest"))
    if is_official_deepspeed(newest):
        logger.warning("%s has no completion marker (written by the official code?); using it", newest)
    return newest


def best_checkpoint(checkpoint_path: Callable[[str], Path]) -> Path | None:
    """The complete ``checkpoint-best`` (the official regression script's ``checkpoint-best_val`` is accepted too)
    at ``checkpoint_path(tag)`` (``Runtime.checkpoint_path``: a file or a DeepSpeed folder), or None."""
    for tag in BEST_TAGS:
        path = checkpoint_path(tag)
        if is_complete(path):
            return path
    return None


def checkpoint_to_evaluate(output_dir: str, checkpoint_path: Callable[[str], Path], resume: str, test_best: bool,
                           search: bool) -> Path | None:
    """The weights ``--eval`` tests: with ``--test_best`` the ``checkpoint-best`` of ``output_dir`` (an error when
    there is none); else ``--resume``; else the newest complete checkpoint of ``output_dir``, then its
    ``checkpoint-best``; None when there is none of these (the ``--finetune`` weights are tested). ``search`` off
    (``--no_auto_resume``) reads nothing in ``output_dir``, ``--test_best`` included: every launcher passes
    ``--test_best``, and ``--eval --no_auto_resume`` on a launcher tests ``MODEL_PATH`` (or ``--resume``).
    ``checkpoint_path``: the runtime's layout of the output folder."""
    if test_best and search:
        best = best_checkpoint(checkpoint_path) if output_dir else None
        if best is None:
            raise MissingPathError(f"--eval --test_best: no complete checkpoint-best in --output_dir "
                                   f"{output_dir or '(not set)'}")
        return best
    if resume:
        return Path(resume)
    if not output_dir or not search:
        return None
    return recover_and_find_latest(Path(output_dir)) or best_checkpoint(checkpoint_path)


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA when present) random states, as plain values and tensors so that a checkpoint
    loads weights-only: numpy's MT19937 state as a dict with its key as an int64 tensor."""
    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    numpy_state = {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "gauss": float(gauss)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore ``rng_state()`` (or the numpy tuple of checkpoints written before it was a dict)."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["kind"], numpy_state["key"].numpy().astype(np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["gauss"])
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class SaveClock:
    """When to write a mid-epoch ``checkpoint-latest``: every ``steps`` optimiser steps of the run, and/or once
    ``minutes`` have passed since the last checkpoint (rank 0's clock decides for every rank)."""

    def __init__(self, steps: int, minutes: float, device: torch.device) -> None:
        if steps < 0 or minutes < 0:
            raise UsageError(f"--save_ckpt_steps {steps} and --save_ckpt_minutes {minutes} must be >= 0")
        self.steps, self.minutes, self.device = steps, minutes, device
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        """Whether to save after global optimiser step ``step`` (a collective when ``minutes`` is set)."""
        if self.steps > 0 and step % self.steps == 0:
            return True
        if self.minutes <= 0:
            return False
        late = float(get_rank() == 0 and time.monotonic() - self.last >= 60 * self.minutes)
        return all_reduce_sum([late], self.device)[0] > 0

    def saved(self) -> None:
        self.last = time.monotonic()


class Checkpointer:
    """Writes a run's checkpoints through ``runtime.save`` (nothing without ``--output_dir`` or with
    ``--no_save_ckpt``): after every epoch ``checkpoint-latest`` (plus ``checkpoint-{epoch}`` every
    ``--save_ckpt_freq`` epochs and at the last, ``checkpoint-best`` when validation improved), and inside an epoch
    ``checkpoint-latest`` whenever the ``SaveClock`` of ``--save_ckpt_steps`` / ``--save_ckpt_minutes`` says so.
    ``saved_with`` goes into every checkpoint (the official ``args``, our typed ``config``)."""

    def __init__(self, run: RuntimeConfig, epochs: int, saved_with: dict[str, Any], runtime: Runtime,
                 ema: Any | None, info: DistInfo, steps_per_epoch: int, samples_per_step: int) -> None:
        self.enabled = bool(run.output_dir) and run.save_ckpt
        self.run, self.epochs, self.saved_with = run, epochs, saved_with
        self.runtime, self.ema, self.info = runtime, ema, info
        self.steps_per_epoch, self.samples_per_step = steps_per_epoch, samples_per_step
        self.clock = SaveClock(run.save_ckpt_steps, run.save_ckpt_minutes, info.device)
        if self.enabled and info.is_main:
            recover_partial_saves(Path(run.output_dir))

    def _save(self, tags: list[str], epoch: int, step: int, rng: dict[str, Any], best: float | None,
              **extra: Any) -> None:
        client = {"epoch": epoch, "step": step, **self.saved_with, "rng": rng, "best": best,
                  "model_ema": self.ema.module.state_dict() if self.ema is not None else None, **extra}
        for tag in tags:
            self.runtime.save(tag, client, self.info.is_main)
        barrier()
        self.clock.saved()

    def inside_epoch(self, epoch: int, steps_done: int, sums: dict[str, tuple[float, float]],
                     best: float | None) -> None:
        """After ``steps_done`` optimiser steps of ``epoch`` (every rank calls it): ``checkpoint-latest`` when due,
        with ``epoch`` - 1 as the finished epoch and every rank's meter ``sums`` (a list indexed by rank)."""
        step = epoch * self.steps_per_epoch + steps_done
        if not self.enabled or not self.clock.due(step):
            return
        self._save(["checkpoint-latest"], epoch - 1, step, rng_state(), best, epoch_step=steps_done,
                   samples_per_step=self.samples_per_step, train_sums=all_gather_objects(sums))

    def end_of_epoch(self, epoch: int, rng: dict[str, Any], best: float | None, improved: bool) -> None:
        """After ``epoch`` and its validation; ``rng`` the states captured before validation."""
        if not self.enabled:
            return
        tags = ["checkpoint-latest"]
        if (epoch + 1) % self.run.save_ckpt_freq == 0 or epoch + 1 == self.epochs:
            tags.insert(0, f"checkpoint-{epoch}")
        if improved:
            tags.append("checkpoint-best")
        self._save(tags, epoch, (epoch + 1) * self.steps_per_epoch, rng, best)
