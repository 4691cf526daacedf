"""``build_dataset`` as the engine calls it, on real h264 videos whose frames carry their own index: the frames
each item decodes, per-view tagging, trimmed windows, repeated augmentation and the bad-input policy."""
import importlib.util
import random
from argparse import Namespace

import numpy as np
import pytest
import torch
from PIL import Image

import datasets.transforms as transforms
import run_class_finetuning
import run_mask_pretrain
from datasets import build_dataset
from datasets import sampling as S
from datasets.build import build_pretraining_dataset
from datasets.collate import multiple_samples_collate
from datasets.masking import mask_window_size
from utils.config import pretrain_config
from datasets.video_dataset import BadInputError
from utils.batch import EvalBatch, MaskedBatch, TrainBatch
from utils.seeding import EpochSampler
from utils.errors import UsageError
from tools.make_synthetic_dataset import decode_frame_index, index_frames, write_video

BACKENDS = ("decord", "pyav") if importlib.util.find_spec("decord") else ("pyav",)
CROP_CODE = 1000.0  # the fake test transform adds crop · 1000 so the crop index can be read back


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Index videos (name: frames, fps) and SSV2-style frame folders."""
    root = tmp_path_factory.mktemp("media")
    for name, count, fps in (("v60", 60, 10), ("v5", 5, 10), ("v9", 9, 10), ("v40", 40, 5), ("v30", 30, 5)):
        write_video(root / f"{name}.mp4", index_frames(count, 32, 32), fps=fps, gop=8)
    for name, count in (("f30", 30), ("f5", 5)):
        (root / name).mkdir()
        for k, frame in enumerate(index_frames(count, 32, 32)):
            Image.fromarray(frame).save(root / name / f"img_{k + 1:05}.png")
    return root


def _raw(frames):
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float()


@pytest.fixture
def raw_transforms(monkeypatch):
    """Make the transform builders return the decoded frames untouched (test: plus crop · 1000)."""
    monkeypatch.setattr(transforms, "build_train_transform", lambda args, flip: _raw)
    monkeypatch.setattr(transforms, "build_val_transform", lambda args: _raw)
    monkeypatch.setattr(transforms, "build_test_transform", lambda args: lambda f, crop: _raw(f) + CROP_CODE * crop)
    monkeypatch.setattr(transforms, "build_pretrain_transform", lambda args: _raw)


def indices_of(video):
    """(frame indices, crop) read back from an item's (C,T,H,W) video."""
    crop = int(video.min().item() // CROP_CODE)
    frames = (video - CROP_CODE * crop).permute(1, 2, 3, 0).numpy()
    return decode_frame_index(frames), crop


def _parsed(parser, values: dict) -> Namespace:
    """The parser's defaults with ``values`` set (the ones the parser knows; the others are ignored)."""
    args = parser.parse_args([])
    flags = vars(args)
    flags.update({k: v for k, v in values.items() if k in flags})
    return args


def make_args(root, tmp_path, lines, **kw):
    """run_class_finetuning.py's parsed flags for lists of ``lines``; the pretraining flags go to ``pretraining``."""
    for name in ("train", "val", "test"):
        (tmp_path / f"{name}.csv").write_text("".join(f"{line}\n" for line in lines))
    base = dict(data_set="Kinetics_sparse", data_path=str(tmp_path), prefix=str(root), split=" ", nb_classes=4,
                num_frames=8, sampling_rate=4, input_size=32, short_side_size=32, test_num_segment=1,
                test_num_crop=1, num_sample=1, video_backend="pyav", trimmed=4, time_stride=1,
                filename_tmpl="img_{:05}.png", mask_type="tube", mask_ratio=0.75, tubelet_size=1, aa="none",
                max_retries=10, max_bad_fraction=0.1)
    base.update(kw)
    args = _parsed(run_class_finetuning.get_args_parser(), base)
    args.pretraining = base
    return args


def pretraining(values: dict):
    """The pretraining dataset of run_mask_pretrain.py's flags set to ``values``, masks over the token grid of a
    student with 16-pixel patches."""
    config = pretrain_config(_parsed(run_mask_pretrain.get_args_parser(), values))
    window = mask_window_size(config.data.num_frames, config.model.tubelet_size, config.model.input_size, 16)
    return build_pretraining_dataset(config.data, config.augment, mask_type=config.distill.mask_type,
                                     mask_ratio=config.distill.mask_ratio, mask_window=window,
                                     seed=config.runtime.seed)


def eval_views(ds):
    return [(it["video_id"], it["window"], it["segment"], *indices_of(it["video"]), it["valid"])
            for it in (ds[i] for i in range(len(ds)))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_test_views(media, tmp_path, raw_transforms, backend):
    args = make_args(media, tmp_path, ["v60.mp4 1", "v5.mp4 2", "v9.mp4 3"], video_backend=backend,
                     test_num_segment=3, test_num_crop=2)
    ds, nb = build_dataset(False, True, args)
    assert nb == 4 and len(ds) == 3 * 3 * 2
    expected = [(v, 0, j, S.sparse_eval_indices(n, 8, j, 3), k, True)
                for v, n in enumerate((60, 5, 9)) for j in range(3) for k in range(2)]
    assert eval_views(ds) == expected
    assert expected[0][3] == [1, 8, 16, 23, 31, 38, 45, 53]  # s = 59/8, shift int(s/4)
    assert [ds[i]["label"].item() for i in (0, 6, 12)] == [1, 2, 3]


@pytest.mark.parametrize("data_set", ["Kinetics_sparse", "mitv1_sparse"])  # the official build reads both alike
def test_sparse_validation_and_train(media, tmp_path, raw_transforms, data_set):
    args = make_args(media, tmp_path, ["v60.mp4 0", "v5.mp4 1"], test_num_segment=3, test_num_crop=3,
                     data_set=data_set)
    val, _ = build_dataset(False, False, args)
    assert eval_views(val) == [(0, 0, 0, [3, 10, 18, 25, 33, 40, 47, 55], 0, True),
                               (1, 0, 0, [0, 0, 1, 2, 2, 2, 3, 4], 0, True)]
    train, _ = build_dataset(True, False, args)
    seg = 59 / 8
    for epoch in range(20):  # each epoch draws anew
        item = train[(epoch, 0)]
        assert item["index"] == 0 and item["label"].dtype == torch.int64
        idx, _ = indices_of(item["video"])
        assert all(round(seg * i) <= k <= round(seg * (i + 1)) for i, k in enumerate(idx))


def test_dense_views(media, tmp_path, raw_transforms):
    args = make_args(media, tmp_path, ["v60.mp4 0", "v5.mp4 1"], data_set="Kinetics", test_num_segment=3)
    test, _ = build_dataset(False, True, args)
    assert [v[3] for v in eval_views(test)] == [
        [0, 4, 8, 12, 16, 20, 24, 28], [14, 18, 22, 26, 30, 34, 38, 42], [28, 32, 36, 40, 44, 48, 52, 56],
        [0, 4, 4, 4, 4, 4, 4, 4], [0, 4, 4, 4, 4, 4, 4, 4], [0, 4, 4, 4, 4, 4, 4, 4]]
    val, _ = build_dataset(False, False, args)
    assert [v[3] for v in eval_views(val)] == [[14, 18, 22, 26, 30, 34, 38, 42], [0, 4, 4, 4, 4, 4, 4, 4]]
    train, _ = build_dataset(True, False, args)
    for epoch in range(10):
        idx, _ = indices_of(train[(epoch, 0)]["video"])
        end = idx[-1] + 1
        assert 32 <= end < 60 and idx == [min(int(end - 32 + 32 * k / 7), end - 1) for k in range(8)]
    assert indices_of(train[1]["video"])[0] == [0] + [4] * 7  # V=5 ≤ n·r: linspace(0, 5, 1) = [0], then V − 1


def test_ssv2_from_videos(media, tmp_path, raw_transforms):
    args = make_args(media, tmp_path, ["v60.mp4 0", "v5.mp4 1"], data_set="SSV2", test_num_segment=2)
    test, _ = build_dataset(False, True, args)
    assert [v[3] for v in eval_views(test)] == [
        [0, 7, 15, 22, 30, 37, 45, 52], [3, 11, 18, 26, 33, 41, 48, 56],
        [0, 0, 1, 1, 2, 3, 3, 4], [0, 0, 1, 2, 2, 3, 4, 4]]
    val, _ = build_dataset(False, False, args)
    assert [v[3] for v in eval_views(val)] == [[3, 11, 18, 26, 33, 41, 48, 56], [0, 0, 1, 2, 2, 3, 4, 4]]
    train, _ = build_dataset(True, False, args)
    for epoch in range(10):
        assert all(7 * i <= k < 7 * i + 7 for i, k in enumerate(indices_of(train[(epoch, 0)]["video"])[0]))
    assert indices_of(train[1]["video"])[0] == [0, 0, 0, 0, 1, 2, 3, 4]


def test_ssv2_from_frame_folders(media, tmp_path, raw_transforms):
    args = make_args(media, tmp_path, ["f30 30 0", "f5 5 1"], data_set="SSV2", test_num_segment=2,
                     use_decord=False)
    val, _ = build_dataset(False, False, args)
    assert [v[3] for v in eval_views(val)] == [[1, 4, 7, 10, 13, 16, 19, 22], [0, 0, 0, 0, 1, 2, 3, 4]]
    test, _ = build_dataset(False, True, args)
    assert [v[3] for v in eval_views(test)] == [
        [0, 3, 7, 11, 15, 18, 22, 26], [1, 5, 9, 13, 16, 20, 24, 28],
        [0, 0, 1, 1, 2, 3, 3, 4], [0, 0, 1, 2, 2, 3, 4, 4]]
    train, _ = build_dataset(True, False, args)
    for epoch in range(5):
        assert all(3 * i <= k < 3 * i + 3 for i, k in enumerate(indices_of(train[(epoch, 0)]["video"])[0]))


def test_trimmed_windows_issue_example(media, tmp_path, raw_transforms):
    # 40 frames at 5 fps, listed duration 8 s; trimmed 4, stride 1 → [0,4] [1,5] [2,6] [3,7] [4,8] [5,8] [6,8]
    args = make_args(media, tmp_path, ["v40.mp4 2 8"], data_set="LVU", num_frames=4, test_num_segment=2)
    test, _ = build_dataset(False, True, args)
    windows = [(0, 4), (1, 5), (2, 6), (3, 7), (4, 8), (5, 8), (6, 8)]
    expected = []
    for w, (start, end) in enumerate(windows):
        a, b = min(start * 5, 39), min(end * 5, 39)
        expected += [(0, w, j, S.sparse_eval_indices(40, 4, j, 2, a, b), 0, True) for j in range(2)]
    assert eval_views(test) == expected
    assert expected[0][3] == [1, 6, 11, 16] and expected[-1][3] == [31, 33, 35, 38]
    train, _ = build_dataset(True, False, args)
    assert len(train) == 7
    for epoch in range(10):
        assert all(25 + round(3.5 * i) <= k <= min(25 + round(3.5 * (i + 1)), 39)
                   for i, k in enumerate(indices_of(train[(epoch, 5)]["video"])[0]))


def test_trimmed_boundary_and_regression(media, tmp_path, raw_transforms):
    # 30 frames at 5 fps, duration 6; trimmed 4, stride 2: [0,4] [2,6] and [4,6] (6 − 4 = trimmed/2, kept);
    # v5 (10 fps, listed 0.5 s) is shorter than trimmed: one window, frames 0..int(0.5·10) capped at 4
    args = make_args(media, tmp_path, ["v30.mp4 1.25 6", "v5.mp4 -0.5 0.5"], data_set="COIN", num_frames=4,
                     time_stride=2, nb_classes=1, task="regression")
    val, nb = build_dataset(False, False, args)
    assert nb == 1
    assert [(v[0], v[1], v[3]) for v in eval_views(val)] == [
        (0, 0, [2, 7, 12, 17]), (0, 1, [12, 17, 22, 26]), (0, 2, [21, 23, 25, 28]), (1, 0, [0, 1, 2, 3])]
    assert val[0]["label"].dtype == torch.float32 and val[0]["label"].item() == 1.25


def test_repeated_augmentation_decodes_once(media, tmp_path, raw_transforms):
    args = make_args(media, tmp_path, ["v60.mp4 3"], num_sample=3)
    train, _ = build_dataset(True, False, args)
    item = train[0]
    assert item["video"].shape == (3, 3, 8, 32, 32) and item["label"].tolist() == [3, 3, 3]
    assert torch.equal(item["video"][0], item["video"][2])  # one decode, the (identity) transform applied 3 times


def test_real_transforms_through_workers(media, tmp_path):
    args = make_args(media, tmp_path, ["v60.mp4 0", "v9.mp4 1", "v40.mp4 2", "v30.mp4 3"], num_sample=2,
                     aa="rand-m7-n4-mstd0.5-inc1", reprob=0.25, test_num_segment=2, test_num_crop=3)
    train, _ = build_dataset(True, False, args)
    loader = torch.utils.data.DataLoader(train, batch_size=2, num_workers=2, collate_fn=train.collate)
    batches = list(loader)
    assert all(isinstance(b, TrainBatch) for b in batches)
    assert [b.video.shape for b in batches] == [(4, 3, 8, 32, 32)] * 2
    assert torch.cat([b.label for b in batches]).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.cat([b.index for b in batches]).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    test, _ = build_dataset(False, True, args)
    batch = next(iter(torch.utils.data.DataLoader(test, batch_size=6, num_workers=1, collate_fn=test.collate)))
    assert isinstance(batch, EvalBatch) and batch.video.shape == (6, 3, 8, 32, 32) and batch.valid.all()
    assert batch.segment.tolist() == [0, 0, 0, 1, 1, 1] and batch.crop.tolist() == [0, 1, 2] * 2
    assert batch.video_id.tolist() == [0] * 6 and batch.window.tolist() == [0] * 6


def test_training_items_are_a_pure_function_of_seed_epoch_and_index(media, tmp_path):
    """Frames, RandAugment, crop, flip, erasing and both repeats of item (epoch, index) do not depend on the worker
    that draws it, on what it drew before, or on the global RNG; another epoch or --seed draws anew."""
    args = make_args(media, tmp_path, ["v60.mp4 0", "v9.mp4 1", "v40.mp4 2", "v30.mp4 3"], num_sample=2,
                     aa="rand-m7-n4-mstd0.5-inc1", reprob=0.5)
    train, _ = build_dataset(True, False, args)
    sampler = EpochSampler(train, num_replicas=1, rank=0, seed=0)
    loader = torch.utils.data.DataLoader(train, batch_size=1, sampler=sampler, num_workers=2,
                                         persistent_workers=True)
    seen = {}
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        for key, batch in zip(list(sampler), loader):  # workers alternate between items and live across epochs
            seen[key] = batch["video"][0]
    fresh, _ = build_dataset(True, False, args)
    for (epoch, index) in sorted(seen, reverse=True):  # one process, the opposite order, any global RNG state
        torch.manual_seed(epoch * 7 + index)
        before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
        assert torch.equal(fresh[(epoch, index)]["video"], seen[(epoch, index)]), (epoch, index)
        after = torch.get_rng_state(), random.getstate(), np.random.get_state()[1]
        assert torch.equal(before[0], after[0]) and before[1] == after[1] and (before[2] == after[2]).all()
    assert not torch.equal(seen[(0, 2)][0], seen[(0, 2)][1])  # the two repeats differ
    assert not torch.equal(seen[(0, 2)], seen[(1, 2)])  # so do two epochs
    args.seed = 1
    reseeded, _ = build_dataset(True, False, args)
    assert not torch.equal(reseeded[(0, 2)]["video"], seen[(0, 2)])


def test_bad_input_training_replaces_and_counts(media, tmp_path, raw_transforms, caplog):
    (tmp_path / "empty.mp4").write_bytes(b"")
    lines = [f"v60.mp4 {k % 4}" for k in range(10)] + [f"{tmp_path}/empty.mp4 1"]
    train, _ = build_dataset(True, False, make_args(media, tmp_path, lines))
    item = train[10]
    assert item["index"] != 10 and item["label"].item() == item["index"] % 4
    train[10]
    assert train.bad_files == {f"{tmp_path}/empty.mp4": "zero-byte file"}
    assert sum("empty.mp4" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_bad_input_training_limits(media, tmp_path, raw_transforms):
    lines = ["v60.mp4 0", "missing_a.mp4 1", "missing_b.mp4 2", "v9.mp4 3"]
    train, _ = build_dataset(True, False, make_args(media, tmp_path, lines))
    replaced, good = train[1], train[0]
    assert replaced["bad"] == {f"{media}/missing_a.mp4": "file not found"} and good["bad"] == {}
    batch = train.collate([good, replaced])
    assert batch.bad == replaced["bad"]  # what the training loop counts over the run (every worker and rank)
    with pytest.raises(BadInputError, match=r"1 of 4 files are unreadable, more than --max_bad_fraction 0.1 "
                                            r"(.|\n)*missing_a.mp4 \(file not found\)"):
        train.tracker.add(batch.bad)  # 1 bad of 4 is more than the default fraction 0.1
    all_bad = ["missing_a.mp4 1", "missing_b.mp4 2"]
    train, _ = build_dataset(True, False, make_args(media, tmp_path, all_bad, max_bad_fraction=1.0,
                                                    max_retries=3))
    with pytest.raises(BadInputError, match=r"after 3 replacements(.|\n)*missing_"):
        train[0]


def test_bad_input_test_reports_missing(media, tmp_path, raw_transforms):
    (tmp_path / "garbage.mp4").write_bytes(b"\x00\x01garbage" * 300)
    args = make_args(media, tmp_path, ["v9.mp4 0", f"{tmp_path}/garbage.mp4 1", "v5.mp4 2"], test_num_crop=2)
    test, _ = build_dataset(False, True, args)
    items = [test[i] for i in range(len(test))]
    assert [it["valid"] for it in items] == [True, True, False, False, True, True]
    assert [(it["video_id"], it["crop"]) for it in items] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert items[2]["video"].shape == items[0]["video"].shape and not items[2]["video"].any()
    assert list(test.bad_files) == [f"{tmp_path}/garbage.mp4"]


def test_list_errors_reach_the_caller(media, tmp_path, raw_transforms):
    args = make_args(media, tmp_path, ["v60.mp4 0", "v9.mp4"])
    with pytest.raises(ValueError, match=r"val.csv:2: expected 2 fields"):
        build_dataset(False, False, args)
    with pytest.raises(UsageError, match="unknown --data_set"):
        build_dataset(False, False, make_args(media, tmp_path, ["v60.mp4 0"], data_set="K400"))


def test_pretraining_dataset(media, tmp_path, raw_transforms):
    # the official launchers' setting: --num_segments 8 --num_frames 8 --sampling_rate 1
    args = make_args(media, tmp_path, ["v60.mp4 0", "v9.mp4 0"], sampling_rate=1, num_segments=8, mask_type="tube")
    ds = pretraining(args.pretraining)
    item = ds[0]
    assert item["mask"].dtype == torch.bool and item["mask"].shape == (8 * 2 * 2,)
    assert item["mask"].view(8, 4).float().std(0).max() == 0  # tube: the same patches in every frame
    assert all(7 * i <= k < 7 * i + 7 for i, k in enumerate(indices_of(item["video"])[0]))  # 60 // 8 = 7 per segment
    args.pretraining.update(mask_type="attention", data_path=str(tmp_path / "train.csv"), sampling_rate=4,
                            num_segments=1)
    ds = pretraining(args.pretraining)
    item = ds[0]
    assert set(item) == {"video", "bad"} and item["bad"] == {}  # no mask: the task draws it
    idx = indices_of(item["video"])[0]
    assert idx == [idx[0] + 4 * k for k in range(8)] and 0 <= idx[0] <= 60 - 32  # stride 4 from a random start
    # --num_sample 2: two clips of one decode, each with its own mask, flattened by the collate
    args.pretraining.update(mask_type="random", num_sample=2)
    ds = pretraining(args.pretraining)
    items = [ds[0], ds[1]]
    assert items[0]["video"].shape == (2, 3, 8, 32, 32) and items[0]["mask"].shape == (2, 8 * 2 * 2)
    assert torch.equal(items[0]["video"][0], items[0]["video"][1])  # the raw test transform: same decode
    assert not torch.equal(items[0]["mask"][0], items[0]["mask"][1])
    batch = multiple_samples_collate(items)
    assert batch["video"].shape == (4, 3, 8, 32, 32) and batch["mask"].shape == (4, 32)
    masked = ds.collate(items)
    assert isinstance(masked, MaskedBatch) and torch.equal(masked.mask, batch["mask"])
    assert torch.equal(masked.video, batch["video"])
    args.pretraining.update(num_segments=4)
    with pytest.raises(ValueError, match="--num_segments 4"):
        pretraining(args.pretraining)


def test_test_crops_of_one_segment_share_one_decode(media, tmp_path, raw_transforms, monkeypatch):
    args = make_args(media, tmp_path, ["v60.mp4 1", "v9.mp4 3"], test_num_segment=2, test_num_crop=3)
    ds, _ = build_dataset(False, True, args)
    decodes = []
    real = ds.load_frames
    monkeypatch.setattr(ds, "load_frames", lambda view, rng=None: decodes.append(view) or real(view, rng))
    views = eval_views(ds)
    assert len(views) == 2 * 2 * 3
    assert [(v.video_id, v.segment) for v in decodes] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    expected = [(v, 0, j, S.sparse_eval_indices(n, 8, j, 2), k, True)
                for v, n in enumerate((60, 9)) for j in range(2) for k in range(3)]
    assert views == expected


def test_bad_input_flags_of_both_entry_scripts_reach_the_datasets(media, tmp_path):
    make_args(media, tmp_path, ["v60.mp4 0", "v9.mp4 1"])
    flags = ["--data_path", str(tmp_path), "--prefix", str(media), "--max_bad_fraction", "0.5", "--max_retries", "3"]
    finetune = run_class_finetuning.get_args_parser().parse_args([*flags, "--data_set", "Kinetics_sparse",
                                                                   "--input_size", "32", "--aa", "none"])
    pretrain = run_mask_pretrain.get_args_parser().parse_args([*flags, "--input_size", "32"])
    for dataset in (build_dataset(True, False, finetune)[0], pretraining(vars(pretrain))):
        assert (dataset.tracker.max_bad_fraction, dataset.tracker.max_retries) == (0.5, 3)
    defaults = run_class_finetuning.get_args_parser().parse_args([])
    assert (defaults.max_bad_fraction, defaults.max_retries) == (0.1, 10)  # as DATASET.md and the error say
