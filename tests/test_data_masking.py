"""Pretraining mask generators (the official --mask_type rules): exact masked counts, tube and row structure,
window size from the patch size, seeding."""
import numpy as np
import pytest

from datasets.masking import (RandomMaskingGenerator, RandomRowMaskingGenerator, TubeMaskingGenerator,
                              TubeRowMaskingGenerator, build_mask_generator, mask_window_size)


def make_generator(mask_type: str = "tube", mask_ratio: float = 0.8, num_frames: int = 8, tubelet_size: int = 1,
                   input_size: int = 224):
    """The generator the pretraining dataset gets for a student with 16-pixel patches."""
    return build_mask_generator(mask_type, mask_ratio, mask_window_size(num_frames, tubelet_size, input_size, 16))


def test_tube_mask_same_patches_every_frame_exact_count():
    np.random.seed(0)
    generator = make_generator(mask_type="tube", mask_ratio=0.8)
    assert isinstance(generator, TubeMaskingGenerator)
    for _ in range(5):
        mask = generator()
        assert mask.dtype == np.bool_ and mask.shape == (8 * 14 * 14,)
        frames = mask.reshape(8, 196)
        assert (frames.sum(axis=1) == int(0.8 * 196)).all()
        assert (frames == frames[0]).all()
    assert not np.array_equal(generator(), generator())


def test_random_mask_exact_count_over_the_whole_clip():
    np.random.seed(0)
    generator = make_generator(mask_type="random", mask_ratio=0.9, num_frames=16, tubelet_size=2)
    assert isinstance(generator, RandomMaskingGenerator)
    counts = set()
    for _ in range(20):
        mask = generator()
        assert mask.dtype == np.bool_ and mask.shape == (8 * 196,)
        assert mask.sum() == int(0.9 * 8 * 196)  # 1411, not 8 * int(0.9 * 196) = 1408
        frames = mask.reshape(8, 196)
        assert len({frame.tobytes() for frame in frames}) == 8
        counts.update(frames.sum(axis=1).tolist())
    assert len(counts) > 1  # the per-frame count varies: the draw is over the whole clip


def test_tube_row_masks_whole_rows_independently_per_frame():
    np.random.seed(0)
    generator = make_generator(mask_type="tube_row", mask_ratio=0.5, input_size=112)
    assert isinstance(generator, TubeRowMaskingGenerator)
    for _ in range(10):
        grid = generator().reshape(8, 7, 7)
        assert (grid == grid[:, :, :1]).all()  # whole rows
        assert (grid[:, :, 0].sum(axis=1) == int(0.5 * 7)).all()  # 3 rows in every frame
        assert len({frame.tobytes() for frame in grid[:, :, 0]}) > 1  # frames of one mask differ


def test_random_row_masks_rows_over_the_whole_clip():
    np.random.seed(0)
    generator = make_generator(mask_type="random_row", mask_ratio=0.5, input_size=112)
    assert isinstance(generator, RandomRowMaskingGenerator)
    per_frame = set()
    for _ in range(20):
        grid = generator().reshape(8, 7, 7)
        assert (grid == grid[:, :, :1]).all()
        assert grid[:, :, 0].sum() == 8 * int(0.5 * 7)  # 24 of the 56 rows of the clip
        per_frame.update(grid[:, :, 0].sum(axis=1).tolist())
    assert len(per_frame) > 1


def test_masks_cover_all_patches_uniformly_over_draws():
    np.random.seed(1)
    generator = RandomMaskingGenerator((2, 4, 4), 0.5)
    freq = np.mean([generator().reshape(2, 16) for _ in range(2000)], axis=0)
    assert np.allclose(freq, 0.5, atol=0.05)


def test_masks_are_deterministic_under_seed():
    for generator in (TubeMaskingGenerator((4, 7, 7), 0.75), RandomMaskingGenerator((4, 7, 7), 0.75),
                      TubeRowMaskingGenerator((4, 7, 7), 0.75), RandomRowMaskingGenerator((4, 7, 7), 0.75)):
        np.random.seed(3)
        first = generator()
        np.random.seed(3)
        assert np.array_equal(first, generator())


def test_window_size_attention_and_bad_arguments():
    assert mask_window_size(16, 2, 112, 16) == (8, 7, 7)
    assert mask_window_size(8, 1, 224, 16) == (8, 14, 14)
    assert mask_window_size(8, 1, 224, 14) == (8, 16, 16)  # the student's real patch size sets the grid
    assert make_generator(mask_type="attention") is None
    with pytest.raises(ValueError, match="mask_type"):
        make_generator(mask_type="block")
    with pytest.raises(ValueError, match="mask_ratio"):
        make_generator(mask_ratio=1.0)
    with pytest.raises(ValueError, match="tubelet_size"):
        mask_window_size(9, 2, 224, 16)
    with pytest.raises(ValueError, match="patch size"):
        mask_window_size(8, 1, 200, 16)
