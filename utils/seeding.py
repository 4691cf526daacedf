"""Reproducible training randomness: every random draw is a pure function of where it happens.

Training draws random numbers in two places. Each is seeded from its position in the run, through numpy's
``SeedSequence`` of the integers listed, never from which process runs it or what that process ran before:

* a training sample: ``(--seed, SAMPLE, epoch, index)`` for its frame indices and bad-input replacements,
  ``(--seed, AUGMENT, epoch, index, repeat)`` for the transform of each ``--num_sample`` repeat (crop, flip,
  RandAugment, random erasing, colour jitter, masks). The training sampler (``EpochSampler``) yields
  ``(epoch, index)`` keys, so a DataLoader worker, persistent or not and however long it has lived, needs no shared
  state. The datasets run their transforms inside ``seeded_rngs``, which seeds Python's ``random``, ``np.random``
  and torch's CPU generator and restores them afterwards (with ``--num_workers 0`` the loop's generators are left
  as they were).
* a training micro-batch: ``seed_step`` seeds Python, numpy, torch's CPU and every CUDA generator from
  ``(--seed, STEP, epoch, micro-batch, rank)`` before its forward pass (mixup/cutmix, drop path, dropout).

The sampler's order depends only on ``(seed, epoch)`` (the permutation of torch's ``DistributedSampler``) and it
can start part-way into an epoch, so a run resumed from a mid-epoch checkpoint continues at the exact next sample.
A run killed anywhere and restarted from its last checkpoint therefore ends with bit-identical weights, given the
same flags, world size, thread counts and hardware (CUDA kernels that are nondeterministic stay so).
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

SAMPLE, AUGMENT, STEP = 0, 1, 2  # the streams: one per place that draws


def seed_sequence(seed: int, stream: int, *keys: int) -> np.random.SeedSequence:
    """The seed of one draw site: ``--seed`` (any int), a stream (``SAMPLE``/``AUGMENT``/``STEP``), keys >= 0."""
    return np.random.SeedSequence([seed % 2**64, stream, *keys])


def _seed_globals(sequence: np.random.SeedSequence, cuda: bool) -> None:
    """Seed Python's, numpy's and torch's generators from distinct words of ``sequence``: Python's ``random`` and
    numpy's legacy generator are both MT19937 seeded by ``init_by_array``, so the same words would make them draw
    the same numbers (a crop tied to the RandAugment op it is followed by)."""
    words = sequence.generate_state(10)  # 10 × uint32: 4 for Python, 4 for numpy, 2 for torch
    random.seed(int.from_bytes(words[:4].tobytes(), "little"))
    np.random.seed(words[4:8])
    torch_seed = int(words[8]) << 32 | int(words[9])
    if cuda:
        torch.manual_seed(torch_seed)  # CPU and every CUDA device
    else:
        torch.default_generator.manual_seed(torch_seed)


@contextmanager
def seeded_rngs(seed: int, stream: int, *keys: int) -> Iterator[None]:
    """Run the block with Python's ``random``, ``np.random`` and torch's CPU generator seeded from
    ``seed_sequence(seed, stream, *keys)``; their previous states are restored on exit."""
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    _seed_globals(seed_sequence(seed, stream, *keys), cuda=False)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


def seed_step(seed: int, epoch: int, micro_batch: int, rank: int) -> None:
    """Seed Python, numpy, torch CPU and CUDA generators for micro-batch ``micro_batch`` (0-based within the
    epoch) of ``rank``; not restored: every micro-batch seeds them afresh."""
    _seed_globals(seed_sequence(seed, STEP, epoch, micro_batch, rank), cuda=True)


def sample_key(key: Any) -> tuple[int, int]:
    """``(epoch, index)`` of a dataset key: an ``EpochSampler`` pair, or a plain index (epoch 0)."""
    if isinstance(key, (tuple, list)):
        epoch, index = key
        return int(epoch), int(index)
    return 0, int(key)


class EpochSampler(DistributedSampler):
    """Training sampler: ``DistributedSampler(shuffle=True, drop_last=True)`` order, yielding ``(epoch, index)``.

    ``set_epoch(epoch, start)`` selects the epoch's permutation (seeded by ``seed + epoch``) and skips this rank's
    first ``start`` samples, the ones a resumed run already trained on. ``len`` stays the whole epoch's count.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"sampler start {start} is outside [0, {self.num_samples}]")
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.start:]
        return iter([(self.epoch, index) for index in indices])
