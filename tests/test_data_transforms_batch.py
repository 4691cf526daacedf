"""Batch-level helpers: repeated-augmentation collate and video Mixup/CutMix."""
from dataclasses import replace

import pytest
import torch
from timm.data import Mixup

from datasets.collate import multiple_samples_collate
from datasets.mixup import VideoMixup, build_mixup_fn
from utils.config import AugmentConfig


def repeated_item(item: int, num_samples: int = 3) -> dict:
    video = torch.stack([torch.full((3, 2, 4, 4), float(10 * item + s)) for s in range(num_samples)])
    return {"video": video, "label": torch.full((num_samples,), item, dtype=torch.int64), "index": item}


def test_multiple_samples_collate_flattens_sample_major():
    batch = multiple_samples_collate([repeated_item(0), repeated_item(1)])
    assert batch["video"].shape == (6, 3, 2, 4, 4)
    assert batch["video"][:, 0, 0, 0, 0].tolist() == [0, 1, 2, 10, 11, 12]
    assert batch["label"].tolist() == [0, 0, 0, 1, 1, 1] and batch["label"].dtype == torch.int64
    assert batch["index"].tolist() == [0, 0, 0, 1, 1, 1]


def test_multiple_samples_collate_rejects_inconsistent_items():
    with pytest.raises(ValueError, match=r"\(S, C, T, H, W\)"):
        multiple_samples_collate([{"video": torch.zeros(3, 2, 4, 4), "label": 0}])
    with pytest.raises(ValueError, match="samples"):
        multiple_samples_collate([repeated_item(0, 2), repeated_item(1, 3)])
    bad = repeated_item(0)
    bad["label"] = torch.zeros(2)
    with pytest.raises(ValueError, match="'label'"):
        multiple_samples_collate([bad])


def test_video_cutmix_box_spans_all_frames_and_channels_only_in_space():
    torch.manual_seed(0)
    x = torch.stack([torch.zeros(3, 4, 16, 16), torch.ones(3, 4, 16, 16)])
    target = torch.tensor([0, 1])
    mix = VideoMixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=2)
    pasted_any = False
    for _ in range(10):
        mixed, soft = mix(x.clone(), target)
        assert mixed.shape == x.shape
        pasted = mixed[0]  # item 0 (zeros) receives a box of item 1 (ones)
        assert all(torch.equal(pasted[c, t], pasted[0, 0]) for c in range(3) for t in range(4))
        frac = pasted[0, 0].mean().item()
        assert soft[0].tolist() == pytest.approx([1 - frac, frac], abs=1e-6)
        pasted_any |= 0 < frac < 1
    assert pasted_any


def test_plain_timm_cutmix_would_cut_along_time():
    """Guard for the reason VideoMixup exists: timm slices dims 2-3 (T, H) of a 5-D batch."""
    torch.manual_seed(0)
    x = torch.stack([torch.zeros(3, 4, 16, 16), torch.ones(3, 4, 16, 16)])
    mix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=2)
    frames_differ = False
    for _ in range(10):
        mixed, _ = mix(x.clone(), torch.tensor([0, 1]))
        frames_differ |= not all(torch.equal(mixed[0, :, t], mixed[0, :, 0]) for t in range(4))
    assert frames_differ


def test_video_mixup_blends_and_builder():
    torch.manual_seed(0)
    off = AugmentConfig(input_size=8, short_side_size=8, aa=None, train_interpolation="bicubic",
                        train_crop_scale=(0.08, 1.0), reprob=0.0, remode="pixel", recount=1, test_num_crop=1, mixup=0.0,
                        cutmix=0.0, cutmix_minmax=None, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode="batch",
                        smoothing=0.0)
    assert build_mixup_fn(off, 5) is None
    mix = build_mixup_fn(replace(off, mixup=0.8), 5)
    assert isinstance(mix, VideoMixup)
    x = torch.stack([torch.zeros(3, 2, 8, 8), torch.ones(3, 2, 8, 8)])
    mixed, soft = mix(x, torch.tensor([1, 3]))
    lam = 1 - mixed[0].mean().item()
    assert torch.allclose(mixed[0], torch.full_like(mixed[0], 1 - lam), atol=1e-6)
    assert soft.shape == (2, 5) and soft[0, 1].item() == pytest.approx(lam, abs=1e-5)
    assert soft[0, 3].item() == pytest.approx(1 - lam, abs=1e-5)
    every = build_mixup_fn(replace(off, mixup=0.8, cutmix=0.5, cutmix_minmax=(0.2, 0.8), mixup_prob=0.7,
                                   mixup_switch_prob=0.3, mixup_mode="elem", smoothing=0.2), 5)
    assert (every.mixup_alpha, every.cutmix_minmax, every.mix_prob, every.switch_prob, every.mode,
            every.label_smoothing, every.num_classes) == (0.8, (0.2, 0.8), 0.7, 0.3, "elem", 0.2, 5)
    assert build_mixup_fn(replace(off, cutmix=0.5), 5).cutmix_alpha == 0.5  # every flag reaches timm, none default
