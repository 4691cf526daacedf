"""utils.seeding: the training sampler's keys, order and start position; seeded and restored generators."""
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from utils.seeding import AUGMENT, STEP, EpochSampler, sample_key, seed_step, seeded_rngs


@pytest.mark.parametrize("world", [1, 3])
def test_epoch_sampler_is_distributed_sampler_order_with_epoch_keys_and_a_start(world):
    data = list(range(11))
    for rank in range(world):
        ours = EpochSampler(data, num_replicas=world, rank=rank, seed=5)
        theirs = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=5, drop_last=True)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            expected = list(theirs)
            assert list(ours) == [(epoch, i) for i in expected] and len(ours) == len(expected) == 11 // world
            ours.set_epoch(epoch, start=2)
            assert list(ours) == [(epoch, i) for i in expected[2:]] and len(ours) == 11 // world
    with pytest.raises(ValueError, match="start 4"):
        EpochSampler(data, num_replicas=4, rank=0, seed=0).set_epoch(0, start=4)  # 11 // 4 = 2 per rank
    assert sample_key((2, 7)) == (2, 7) and sample_key(7) == (0, 7) and sample_key(torch.tensor(7)) == (0, 7)


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seeded_rngs_is_a_function_of_its_keys_and_restores_the_generators():
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    expected_after = _draws()
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    with seeded_rngs(0, AUGMENT, 1, 2, 0):
        first = _draws()
    assert _draws() == expected_after  # the outer streams continue as if nothing happened
    with seeded_rngs(0, AUGMENT, 1, 2, 0):
        assert _draws() == first
    for keys in [(1, AUGMENT, 1, 2, 0), (0, AUGMENT, 1, 2, 1), (0, STEP, 1, 2, 0)]:
        with seeded_rngs(*keys):
            assert _draws() != first
    seed_step(-4, 2, 5, 1)  # negative --seed values are fine
    step = _draws()
    seed_step(-4, 2, 5, 1)
    assert _draws() == step
    seed_step(-4, 2, 5, 0)
    assert _draws() != step


def test_python_numpy_and_torch_draw_independent_streams():
    """The three generators seeded for one draw site do not share a stream: Python's ``random`` and numpy's legacy
    generator are the same algorithm (MT19937 seeded by init_by_array), so identical seeds would tie them."""
    for keys in [(0, AUGMENT, 1, 2, 0), (7, STEP, 3, 0, 1)]:
        with seeded_rngs(*keys):
            python = [random.random() for _ in range(64)]
            numpy = np.random.rand(64).tolist()
            torch_draws = torch.rand(64, dtype=torch.float64).tolist()
        assert len({*python} & {*numpy}) == 0 and len({*python} & {*torch_draws}) == 0
        assert abs(np.corrcoef(python, numpy)[0, 1]) < 0.5
