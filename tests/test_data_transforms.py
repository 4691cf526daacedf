"""Clip transforms: shapes, normalisation, exact crop offsets, clip-consistent augmentation, determinism."""
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.rand_augment import VideoRandAugment
from datasets.random_erasing import ClipRandomErasing
from datasets.transforms import (build_pretrain_transform, build_test_transform, build_train_transform,
                                 build_val_transform, jitter_range, sample_jittered_crop_box,
                                 sample_multiscale_crop_box, sample_resized_crop_box)
from utils.config import AugmentConfig, PretrainAugmentConfig, aa_policy

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_args(**overrides) -> AugmentConfig:
    base = dict(input_size=32, short_side_size=32, test_num_crop=3, aa=None, train_interpolation="bicubic",
                train_crop_scale=(0.08, 1.0), reprob=0.0, remode="pixel", recount=1, mixup=0.0, cutmix=0.0,
                cutmix_minmax=None, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode="batch", smoothing=0.0)
    base.update(overrides)
    return AugmentConfig(**base)


def pretrain_args(**overrides) -> PretrainAugmentConfig:
    return PretrainAugmentConfig(**{"input_size": 32, "flip": False, "color_jitter": 0.0, **overrides})


def coordinate_clip(t: int, h: int, w: int) -> np.ndarray:
    """R = x coordinate, G = y coordinate, B = frame index."""
    clip = np.zeros((t, h, w, 3), dtype=np.uint8)
    clip[..., 0] = np.arange(w)[None, None, :]
    clip[..., 1] = np.arange(h)[None, :, None]
    clip[..., 2] = np.arange(t)[:, None, None]
    return clip


def denormalize(out: torch.Tensor) -> np.ndarray:
    """(C, T, H, W) normalised → (C, T, H, W) values in the 0-255 range."""
    return (out.numpy() * STD[:, None, None, None] + MEAN[:, None, None, None]) * 255.0


def textured_clip(t: int = 4, h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return np.repeat(frame[None], t, axis=0)


@pytest.mark.parametrize("kind", ["train", "val", "test", "pretrain"])
def test_output_shape_dtype_and_range(kind):
    seed_all(0)
    args = make_args(aa="rand-m7-n4-mstd0.5-inc1", reprob=1.0)
    frames = np.random.default_rng(1).integers(0, 256, size=(4, 40, 56, 3), dtype=np.uint8)
    transforms = {
        "train": lambda f: build_train_transform(args, flip=True)(f),
        "val": build_val_transform(args),
        "test": lambda f: build_test_transform(args)(f, 2),
        "pretrain": build_pretrain_transform(pretrain_args(flip=True)),
    }
    out = transforms[kind](frames)
    assert out.shape == (3, 4, 32, 32) and out.dtype == torch.float32 and out.is_contiguous()
    # normalised uint8 content lies in [(0 - mean)/std, (1 - mean)/std] (erasing noise aside)
    if kind != "train":
        assert out.min() >= -2.2 and out.max() <= 2.7


def test_normalisation_of_constant_clip_is_exact():
    for value in (0, 128, 255):
        frames = np.full((2, 32, 48, 3), value, dtype=np.uint8)
        out = build_val_transform(make_args())(frames)
        expected = (value / 255.0 - MEAN) / STD
        for c in range(3):
            assert torch.allclose(out[c], torch.full_like(out[c], expected[c]), atol=1e-5)
    mean_clip = np.broadcast_to(np.round(MEAN * 255).astype(np.uint8), (2, 32, 48, 3)).copy()
    assert build_val_transform(make_args())(mean_clip).abs().max() < 0.01


@pytest.mark.parametrize("num_crops,expected_starts", [(1, [14]), (2, [0, 28]), (3, [0, 14, 28])])
def test_test_crop_offsets_wide_clip(num_crops, expected_starts):
    # short side already 32: no resize, so the R channel still holds x
    frames = coordinate_clip(2, 32, 60)
    transform = build_test_transform(make_args(test_num_crop=num_crops, short_side_size=32))
    for k, start in enumerate(expected_starts):
        out = denormalize(transform(frames, k))
        assert out.shape == (3, 2, 32, 32)
        np.testing.assert_allclose(out[0, :, 0, :], np.arange(start, start + 32)[None].repeat(2, 0), atol=1e-3)
        np.testing.assert_allclose(out[1, 0, :, 0], np.arange(32), atol=1e-3)
    with pytest.raises(ValueError, match="crop index"):
        transform(frames, num_crops)


def test_test_crop_offsets_tall_clip_and_resize_rule():
    # 120x64 (tall) → short side 32: width 32, height int(32 * 120 / 64) = 60; crops along the height
    frames = coordinate_clip(1, 120, 64)
    transform = build_test_transform(make_args(test_num_crop=3, short_side_size=32))
    for k, start in enumerate([0, 14, 28]):
        out = denormalize(transform(frames, k))
        assert out.shape == (3, 1, 32, 32)
        # bilinear 2x downscale of a ramp samples 2i + 0.5 (half-pixel centres, no antialias), then uint8 rounding
        np.testing.assert_allclose(out[1, 0, :, 0], 2 * np.arange(start, start + 32) + 0.5, atol=0.51)
        np.testing.assert_allclose(out[0, 0, 0, :], 2 * np.arange(32) + 0.5, atol=0.51)


def test_val_centre_crop_offset():
    frames = coordinate_clip(2, 32, 50)
    out = denormalize(build_val_transform(make_args(input_size=24, short_side_size=32))(frames))
    assert out.shape == (3, 2, 24, 24)
    np.testing.assert_allclose(out[0, 0, 0, :], np.arange(13, 37), atol=1e-3)  # round((50 - 24) / 2) = 13
    np.testing.assert_allclose(out[1, 0, :, 0], np.arange(4, 28), atol=1e-3)  # round((32 - 24) / 2) = 4
    np.testing.assert_allclose(out[2, :, 0, 0], [0, 1], atol=1e-3)
    with pytest.raises(ValueError, match="short_side_size"):
        build_val_transform(make_args(input_size=40, short_side_size=32))


def test_identical_frames_stay_identical_through_full_train_augmentation():
    """Every draw is shared by the frames except the random-erasing fill: ``rand`` / ``pixel`` noise is drawn per
    frame inside a box that is the same in every frame (the official cube erasing)."""
    frames = textured_clip()
    for remode in ("pixel", "rand", "const"):
        transform = build_train_transform(make_args(aa="rand-m9-n4-mstd0.5-inc1", reprob=1.0, remode=remode), True)
        clean = build_train_transform(make_args(aa="rand-m9-n4-mstd0.5-inc1", reprob=0.0), True)
        for seed in range(6):
            seed_all(seed)
            out = transform(frames)
            seed_all(seed)
            erased = (out != clean(frames)).any(dim=0)  # (T, H, W); erasing is the last draw
            assert erased.any() and all(torch.equal(erased[t], erased[0]) for t in range(out.shape[1]))
            for t in range(1, out.shape[1]):
                assert torch.equal(out[:, t][:, ~erased[0]], out[:, 0][:, ~erased[0]]), (remode, seed, t)
                assert torch.equal(out[:, t], out[:, 0]) is (remode == "const"), (remode, seed, t)
    # the const erasing box is visible (exact zeros on every channel) and identical across frames
    seed_all(3)
    out = build_train_transform(make_args(reprob=1.0, remode="const"), False)(textured_clip())
    erased = (out == 0).all(dim=0)
    assert erased.any() and torch.equal(erased[0], erased[-1])


def test_video_rand_augment_same_ops_on_every_frame_and_changes_content():
    frames = textured_clip(t=3)
    ra = VideoRandAugment("rand-m9-n2-mstd0.5-inc1", input_size=32)
    changed = 0
    for seed in range(8):
        seed_all(seed)
        out = ra(frames)
        assert out.dtype == np.uint8 and out.shape == frames.shape
        assert all(np.array_equal(out[t], out[0]) for t in range(1, 3))
        changed += not np.array_equal(out, frames)
    assert changed >= 4
    # different frames each get exactly the single-image op sequence drawn from the shared state
    moving = np.stack([textured_clip(t=1, seed=s)[0] for s in range(3)])
    seed_all(11)
    out = ra(moving)
    for t in range(3):
        seed_all(11)
        np.testing.assert_array_equal(out[t], ra(moving[t:t + 1])[0])
    with pytest.raises(ValueError, match="RandAugment"):
        VideoRandAugment("v0", 32)


def test_flip_disabled_keeps_orientation_and_enabled_flips_sometimes():
    frames = coordinate_clip(2, 48, 64)

    def increasing(out: torch.Tensor) -> bool:
        row = out[0, 0, 0]  # the R channel holds x: monotone along the row, rising unless flipped
        steps = row[1:] - row[:-1]
        assert (steps >= 0).all() or (steps <= 0).all()
        return bool(row[-1] > row[0])

    no_flip = build_train_transform(make_args(), flip=False)
    with_flip = build_train_transform(make_args(), flip=True)
    orientations = []
    for seed in range(24):
        seed_all(seed)
        assert increasing(no_flip(frames))
        seed_all(seed)
        orientations.append(increasing(with_flip(frames)))
    assert 4 <= sum(orientations) <= 20


def test_train_transform_is_deterministic_under_seed():
    frames = np.random.default_rng(2).integers(0, 256, size=(3, 40, 56, 3), dtype=np.uint8)
    transform = build_train_transform(make_args(aa="rand-m7-n4-mstd0.5-inc1", reprob=0.5), True)
    seed_all(5)
    first = transform(frames)
    seed_all(5)
    assert torch.equal(first, transform(frames))
    seed_all(6)
    assert not torch.equal(first, transform(frames))


def test_resized_crop_boxes_respect_scale_ratio_and_bounds():
    seed_all(0)
    assert jitter_range(224) == (256, 320) and jitter_range(112) == (128, 160)
    areas, aspects = [], []
    for _ in range(300):
        top, left, h, w = sample_resized_crop_box(240, 320)
        assert 0 <= top and top + h <= 240 and 0 <= left and left + w <= 320
        assert 0.08 * 0.95 <= h * w / (240 * 320) <= 1.0
        assert 0.75 * 0.95 <= w / h <= 4 / 3 * 1.05
        areas.append(h * w / (240 * 320))
        aspects.append(w / h)
        top, left, h, w = sample_jittered_crop_box(240, 320, (256, 320))
        assert 0 <= top and top + h <= 240 and 0 <= left and left + w <= 320 and h > 0 and w > 0
        assert 0.08 * 0.9 <= h * w / (240 * 320) <= 1.0
    assert min(areas) < 0.1 and max(areas) > 0.9  # the area is drawn over the whole scale range
    assert min(aspects) < 0.8 and max(aspects) > 1.25  # and the aspect over the whole ratio range
    # scale that can never fit → centred fallback with the aspect clamped into range
    assert sample_resized_crop_box(100, 400, scale=(2.0, 2.0)) == (0, 133, 100, 133)


def test_multiscale_crop_boxes_follow_the_official_grid():
    seed_all(0)
    height, width, size = 240, 320, 224
    sides = [224 if abs(int(240 * s) - 224) < 3 else int(240 * s) for s in (1, 0.875, 0.75, 0.66)]
    assert sides == [240, 210, 180, 158]
    allowed = {(sides[i], sides[j]) for i in range(4) for j in range(4) if abs(i - j) <= 1}
    seen = set()
    for _ in range(400):
        top, left, h, w = sample_multiscale_crop_box(height, width, size)
        assert (h, w) in allowed
        h_step, w_step = (height - h) // 4, (width - w) // 4
        assert top in {k * h_step for k in range(5)} and left in {k * w_step for k in range(5)}
        seen.add((h, w))
    assert seen == allowed


def test_pretrain_crop_matches_pil_reference_pipeline():
    """The official pretraining path crops and resizes PIL frames (bilinear); we agree within one grey level."""
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 60, 80, 3), dtype=np.uint8)
    transform = build_pretrain_transform(pretrain_args(input_size=32, flip=False))
    for seed in range(4):
        seed_all(seed)
        out = denormalize(transform(frames)).transpose(1, 2, 3, 0)
        seed_all(seed)
        top, left, h, w = sample_multiscale_crop_box(60, 80, 32)
        ref = np.stack([np.asarray(Image.fromarray(f).crop((left, top, left + w, top + h)).resize((32, 32),
                                                                                                  Image.BILINEAR))
                        for f in frames])
        assert np.abs(out - ref).max() <= 1.01


def test_pretrain_colour_jitter_is_drawn_per_frame_after_the_crop():
    """--color_jitter > 0: torchvision's ColorJitter(b, c, s) on every frame independently (official per-image)."""
    frames = textured_clip(t=4, h=40, w=56)  # four identical frames
    plain = build_pretrain_transform(pretrain_args(input_size=32, color_jitter=0.0))
    jittered = build_pretrain_transform(pretrain_args(input_size=32, color_jitter=0.4))
    seed_all(3)
    out_plain = plain(frames)
    assert all(torch.equal(out_plain[:, t], out_plain[:, 0]) for t in range(4))
    seed_all(3)
    out = jittered(frames)
    assert out.shape == out_plain.shape
    assert len({out[:, t].numpy().tobytes() for t in range(4)}) == 4  # each frame its own factors
    assert not torch.equal(out[:, 0], out_plain[:, 0])
    seed_all(3)
    assert torch.equal(jittered(frames), out)  # reproducible under the seeds
    with pytest.raises(ValueError, match="color_jitter"):
        build_pretrain_transform(pretrain_args(color_jitter=-0.1))


def test_random_erasing_one_box_for_all_frames_noise_drawn_per_frame():
    seed_all(1)
    clip = torch.full((3, 4, 20, 20), 7.0)
    ClipRandomErasing(1.0, mode="pixel", max_count=1)(clip)
    erased = clip != 7.0
    rows, cols = erased[0, 0].any(1).nonzero().flatten(), erased[0, 0].any(0).nonzero().flatten()
    box = torch.zeros(20, 20, dtype=torch.bool)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    assert box.any() and torch.equal(erased, box.expand(3, 4, 20, 20))  # one rectangle, the same in every frame
    noise = [clip[:, t][:, box] for t in range(4)]
    assert all(not torch.equal(noise[0], noise[t]) for t in range(1, 4))  # pixel noise drawn per frame
    seed_all(1)
    rand = ClipRandomErasing(1.0, mode="rand", max_count=1)(torch.full((3, 4, 20, 20), 7.0))
    colours = [rand[:, t][:, box] for t in range(4)]  # same draws: the same box; one colour per frame
    assert all(torch.equal(c, c[:, :1].expand_as(c)) for c in colours)
    assert len({tuple(c[:, 0].tolist()) for c in colours}) == 4
    untouched = torch.ones(3, 2, 8, 8)
    assert torch.equal(ClipRandomErasing(0.0)(untouched.clone()), untouched)
    with pytest.raises(ValueError, match="remode"):
        ClipRandomErasing(0.5, mode="noise")
    with pytest.raises(ValueError, match="reprob"):
        ClipRandomErasing(1.5)


def test_random_erasing_num_splits_leaves_the_first_frames_untouched():
    for seed in range(5):
        seed_all(seed)
        clip = torch.full((3, 9, 20, 20), 7.0)
        ClipRandomErasing(1.0, mode="const", max_count=3, num_splits=3)(clip)
        erased = clip != 7.0
        assert not erased[:, :3].any()  # frames 0 .. 9 // 3 - 1
        assert erased[:, 3].any() and all(torch.equal(erased[:, t], erased[:, 3]) for t in range(4, 9))


@pytest.mark.parametrize("mode", ["pixel", "rand", "const"])
@pytest.mark.parametrize("recount", [1, 3])
def test_random_erasing_makes_the_official_draws(mode, recount):
    """The official cube erasing (``RandomErasing(reprob, mode, max_count=recount, num_splits=recount)`` on the
    (T, C, H, W) clip), replayed draw by draw: probability, box count, then per box up to 100 (area, aspect) tries,
    top, left and a fill for each erased frame."""
    frames, size = 8, 24
    seed_all(3)  # 3 boxes with --recount 3
    clip = ClipRandomErasing(0.9, mode=mode, max_count=recount, num_splits=recount)(torch.zeros(3, frames, size, size))
    seed_all(3)
    expected = torch.zeros(3, frames, size, size)
    assert random.random() <= 0.9  # erased (this seed)
    count = 1 if recount == 1 else random.randint(1, recount)
    for _ in range(count):
        for _ in range(100):
            area = random.uniform(0.02, 1 / 3) * size * size / count
            aspect = math.exp(random.uniform(math.log(0.3), math.log(1 / 0.3)))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if w < size and h < size:
                top, left = random.randint(0, size - h), random.randint(0, size - w)
                for t in range(frames // recount if recount > 1 else 0, frames):
                    shape = (3, h, w) if mode == "pixel" else (3, 1, 1)
                    fill = torch.zeros(shape) if mode == "const" else torch.empty(shape).normal_()
                    expected[:, t, top:top + h, left:left + w] = fill
                break
    assert torch.equal(clip, expected)


def test_bad_frames_raise_clear_errors():
    transform = build_val_transform(make_args())
    with pytest.raises(ValueError, match=r"uint8 frames of shape \(T, H, W, 3\)"):
        transform(np.zeros((2, 32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        transform(np.zeros((32, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        transform(np.zeros((0, 32, 32, 3), dtype=np.uint8))


def test_aa_off_spellings_disable_rand_augment():
    for off in (None, "", "None", "none"):
        assert aa_policy(off) is None and build_train_transform(make_args(aa=aa_policy(off)), True).rand_augment is None
    assert math.isclose(build_train_transform(make_args(reprob=0.25), True).erasing.probability, 0.25)


def test_train_crop_scale_flag_bounds_the_crop_area(monkeypatch):
    seen = []
    import datasets.transforms as transforms

    real = transforms.sample_jittered_crop_box

    def spy(height, width, jitter, scale):
        box = real(height, width, jitter, scale)
        seen.append((scale, box[2] * box[3] / (height * width)))
        return box

    monkeypatch.setattr(transforms, "sample_jittered_crop_box", spy)
    seed_all(0)
    transform = build_train_transform(make_args(train_crop_scale=(0.5, 1.0)), flip=False)
    for _ in range(50):
        transform(textured_clip())
    assert all(scale == (0.5, 1.0) for scale, _ in seen)
    assert min(area for _, area in seen) >= 0.5 * 0.9
    with pytest.raises(ValueError, match="train_crop_scale"):
        build_train_transform(make_args(train_crop_scale=(0.0, 1.0)), flip=False)
