"""The batches ``datasets/`` produce (``datasets.collate``) and ``engines/`` consume.

Plain containers of CPU tensors: they cross DataLoader worker processes (pickled) and ``pin_memory`` pins every
tensor (``pin_memory()`` below, which the DataLoader calls). B is the batch size after repeated augmentation
(``--num_sample`` S: B = items × S, an item's S clips consecutive).

Masks follow one convention end to end: bool (B, T'·H'·W') over the patch tokens, frame-major
(index t·H'W' + h·W' + w), True = masked; there is no cls column. The student model's input adds it
(``engines.masking.with_cls_column``, called in one place: ``engines.tasks.DistillationTask``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch


class _Pinnable:
    def pin_memory(self) -> Any:
        """A copy with every tensor in page-locked memory (called by the DataLoader with ``pin_memory=True``)."""
        tensors = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        return replace(self, **{k: v.pin_memory() for k, v in tensors.items() if isinstance(v, torch.Tensor)})


@dataclass
class TrainBatch(_Pinnable):
    """Fine-tuning batch.

    video: float (B, C, T, H, W), normalised. label: (B,) int64 class ids, or float32 targets for regression.
    index: (B,) int64, the list entry each clip was read from (another than asked when a bad video was replaced).
    bad: the unreadable files met while reading the batch (path: reason), for the run-wide count of
    ``--max_bad_fraction`` in the main process.
    """

    video: torch.Tensor
    label: torch.Tensor
    index: torch.Tensor
    bad: dict[str, str] = field(default_factory=dict)


@dataclass
class EvalBatch(_Pinnable):
    """Validation or test views, one per row: ``(video_id, window, segment, crop)`` names the view.

    video: float (B, C, T, H, W) (zeros where ``valid`` is False: the video could not be decoded).
    label: (B,) as ``TrainBatch.label``. video_id, window, segment, crop: (B,) int64. valid: (B,) bool.
    """

    video: torch.Tensor
    label: torch.Tensor
    video_id: torch.Tensor
    window: torch.Tensor
    segment: torch.Tensor
    crop: torch.Tensor
    valid: torch.Tensor


@dataclass
class MaskedBatch(_Pinnable):
    """Masked-pretraining batch. video: float (B, C, T, H, W). mask: bool (B, T'·H'·W') (the convention above),
    or None for ``--mask_type attention``, whose mask the task draws from the teacher's attention. bad: as
    ``TrainBatch.bad``."""

    video: torch.Tensor
    mask: torch.Tensor | None
    bad: dict[str, str] = field(default_factory=dict)
