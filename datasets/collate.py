"""Collate: the datasets' items (dicts) into the batch types of ``utils.batch``, the one contract with ``engines/``.

With repeated augmentation (``--num_sample S > 1``: one decode, S augmented clips per item) the items' S samples
are flattened into the batch first (``multiple_samples_collate``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import default_collate

from utils.batch import EvalBatch, MaskedBatch, TrainBatch


def _stack(items: list[dict[str, Any]], num_sample: int) -> dict[str, Any]:
    """The items' tensors stacked, and ``"bad"``: every item's unreadable files (path: reason) in one dict."""
    if num_sample < 1:
        raise ValueError(f"num_sample must be >= 1, got {num_sample}")
    bad = {path: reason for item in items for path, reason in item.get("bad", {}).items()}
    items = [{k: v for k, v in item.items() if k != "bad"} for item in items]
    out = multiple_samples_collate(items) if num_sample > 1 else default_collate(items)
    return {**out, "bad": bad}


def collate_train(items: list[dict[str, Any]], num_sample: int) -> TrainBatch:
    """Training items ``{"video", "label", "index"[, "bad"]}`` (each holding ``num_sample`` clips when > 1) →
    ``TrainBatch``."""
    out = _stack(items, num_sample)
    return TrainBatch(video=out["video"], label=out["label"], index=out["index"], bad=out["bad"])


def collate_eval(items: list[dict[str, Any]]) -> EvalBatch:
    """Validation/test view items ``{"video", "label", "video_id", "window", "segment", "crop", "valid"}`` →
    ``EvalBatch``."""
    out = default_collate(items)
    return EvalBatch(video=out["video"], label=out["label"], video_id=out["video_id"], window=out["window"],
                     segment=out["segment"], crop=out["crop"], valid=out["valid"])


def collate_masked(items: list[dict[str, Any]], num_sample: int) -> MaskedBatch:
    """Pretraining items ``{"video"[, "mask"][, "bad"]}`` → ``MaskedBatch`` (mask None when the items have none)."""
    out = _stack(items, num_sample)
    return MaskedBatch(video=out["video"], mask=out.get("mask"), bad=out["bad"])


def multiple_samples_collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Flatten B items holding S samples each into one batch of B·S, sample-major (item 0's S samples first).

    Each item's ``"video"`` is (S, C, T, H, W). Other values with a leading dimension of S (``"label"`` (S,), ...)
    are concatenated the same way; scalars (``"index"`` as an int, ...) are repeated S times.
    → ``{"video": (B·S, C, T, H, W), "label": (B·S,), ...}``.
    """
    if not batch:
        raise ValueError("multiple_samples_collate: empty batch")
    num_samples = None
    for item in batch:
        video = item["video"]
        if video.dim() != 5:
            raise ValueError(f"multiple_samples_collate: 'video' must be (S, C, T, H, W), got {tuple(video.shape)}")
        if num_samples is None:
            num_samples = video.shape[0]
        elif video.shape[0] != num_samples:
            raise ValueError(f"multiple_samples_collate: items hold {num_samples} and {video.shape[0]} samples")
    out: dict[str, Any] = {}
    for key in batch[0]:
        per_item = [_split_samples(item[key], num_samples, key) for item in batch]
        out[key] = default_collate([sample for samples in per_item for sample in samples])
    return out


def _split_samples(value: Any, num_samples: int, key: str) -> list[Any]:
    """The S per-sample values of one item: rows of a leading-S tensor/sequence, else ``value`` repeated."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        if value.shape[0] != num_samples:
            raise ValueError(f"multiple_samples_collate: {key!r} has leading size {value.shape[0]}, "
                             f"expected {num_samples} samples")
        return list(value.unbind(0))
    if isinstance(value, (list, tuple)):
        if len(value) != num_samples:
            raise ValueError(f"multiple_samples_collate: {key!r} has {len(value)} entries, expected {num_samples}")
        return list(value)
    return [value] * num_samples
