"""What the loops call: ``Task`` / ``EvalTask`` (``engines.tasks``) and ``Runtime`` (``engines.runtime``).

``train_one_epoch`` and ``fit`` need a ``Task`` (and take a ``BadInputCount``); ``evaluate`` and ``multiview_test`` an
``EvalTask``; all of them a ``Runtime``. Batches are the types of ``utils.batch``.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Protocol

import torch

from utils.batch import EvalBatch, MaskedBatch, TrainBatch


class Task(Protocol):
    """Turns a training batch into a loss; ``best_key`` / ``higher_is_better`` rank validation results."""

    name: str
    best_key: str
    higher_is_better: bool

    def training_loss(self, model: torch.nn.Module, batch: TrainBatch | MaskedBatch, device: torch.device,
                      dtype: torch.dtype | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to minimise and extra per-batch values to log (averaged over the epoch)."""
        ...


class EvalTask(Task, Protocol):
    """A task that can also be evaluated: per-view outputs and summable statistics (the keys ``stat_keys``)."""

    stat_keys: tuple[str, ...]

    def predict(self, model: torch.nn.Module, batch: EvalBatch, device: torch.device,
                dtype: torch.dtype | None) -> torch.Tensor:
        """Outputs (B, C) in fp32: logits, or C = 1 regression values."""
        ...

    def batch_stats(self, outputs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Sums over the rows of ``outputs`` (``n`` included), to be added up and divided by ``n``."""
        ...


class BadInputCount(Protocol):
    """The run-wide count of unreadable training files (``datasets.video_dataset.BadInputTracker``)."""

    def add(self, bad: dict[str, str]) -> None:
        """Count the files of ``bad`` (path: reason); raise once more of the run's files are bad than allowed."""
        ...


class Runtime(Protocol):
    """An execution path (plain PyTorch or DeepSpeed): the model to run, precision, the optimiser step and the
    checkpoint layout on disk."""

    model: torch.nn.Module  # what forward passes run on (DDP wrapper / DeepSpeed engine)
    module: torch.nn.Module  # the bare model
    optimizer: torch.optim.Optimizer
    device: torch.device
    input_dtype: torch.dtype | None  # the dtype inputs are cast to (DeepSpeed fp16/bf16), None: as loaded

    @property
    def loss_scale(self) -> float: ...

    def autocast(self) -> contextlib.AbstractContextManager: ...

    def backward_step(self, loss: torch.Tensor, update: bool, accumulation: int) -> float | None:
        """Backward ``loss``; on ``update`` (the last of ``accumulation`` micro-batches) step the optimiser and
        return the gradient norm."""
        ...

    def checkpoint_path(self, tag: str) -> Path:
        """Where checkpoint ``tag`` (``checkpoint-latest``, ``checkpoint-best``, ...) is written in the output
        folder: a ``.pth`` file or a DeepSpeed folder."""
        ...

    def save(self, tag: str, client_state: dict[str, Any], is_main: bool) -> None:
        """Write checkpoint ``tag`` (weights, optimiser and ``client_state``) atomically; every rank calls it."""
        ...

    def load(self, path: Path, model_only: bool = False) -> dict[str, Any]:
        """Load a checkpoint (weights only with ``model_only``); returns its other entries."""
        ...
