"""Exact frame indices of every sampling rule (issues 4 and 8), as literal lists worked out by hand."""
import numpy as np
import pytest

from datasets import sampling as S


def rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------ sparse
def test_sparse_eval_views_v30_n8():
    # s = 29/8 = 3.625; round(s·i) = 0 4 7 11 14 18 22 25 (14.5 rounds half to even); shift int(s/(J+1)·(j+1))
    assert S.sparse_eval_indices(30, 8, 0, 1) == [1, 5, 8, 12, 15, 19, 23, 26]
    assert S.sparse_eval_indices(30, 8, 0, 3) == [0, 4, 7, 11, 14, 18, 22, 25]
    assert S.sparse_eval_indices(30, 8, 1, 3) == [1, 5, 8, 12, 15, 19, 23, 26]
    assert S.sparse_eval_indices(30, 8, 2, 3) == [2, 6, 9, 13, 16, 20, 24, 27]


def test_sparse_short_clips():
    assert S.sparse_eval_indices(5, 8, 0, 1) == [0, 0, 1, 2, 2, 2, 3, 4]  # V < n
    assert S.sparse_eval_indices(9, 8, 0, 1) == list(range(8))  # V = n + 1
    assert S.sparse_eval_indices(9, 8, 1, 2) == list(range(8))
    assert S.sparse_eval_indices(1, 4, 0, 1) == [0, 0, 0, 0]


def test_sparse_train_ranges_are_exact_and_all_reachable():
    ranges = [(0, 4), (4, 7), (7, 11), (11, 14), (14, 18), (18, 22), (22, 25), (25, 29)]
    seen = [set() for _ in ranges]
    g = rng()
    for _ in range(400):
        for i, (k, (lo, hi)) in enumerate(zip(S.sparse_train_indices(30, 8, g), ranges)):
            assert lo <= k <= hi
            seen[i].add(k)
    assert seen == [set(range(lo, hi + 1)) for lo, hi in ranges]


def test_sparse_train_is_capped_at_last_frame():
    g = rng(1)
    for _ in range(50):
        assert max(S.sparse_train_indices(3, 8, g)) <= 2


# ------------------------------------------------------------------ trimmed windows
def test_trimmed_windows_issue_example():
    assert S.trimmed_windows(8, 4, 1) == [(0, 4), (1, 5), (2, 6), (3, 7), (4, 8), (5, 8), (6, 8)]


def test_trimmed_windows_boundary_and_short_videos():
    assert S.trimmed_windows(6, 4, 2) == [(0, 4), (2, 6), (4, 6)]  # duration − start = trimmed/2 is kept
    assert S.trimmed_windows(5.9, 4, 2) == [(0, 4), (2, 5.9)]  # 1.9 < 2 dropped
    assert S.trimmed_windows(4, 4, 1) == [(0, 4), (1, 4), (2, 4)]
    assert S.trimmed_windows(3, 4, 1) == [(0, 3)]  # shorter than trimmed: one window
    assert S.trimmed_windows(130, 60, 16) == [(0, 60), (16, 76), (32, 92), (48, 108), (64, 124), (80, 130),
                                              (96, 130)]


def test_window_frames():
    assert S.window_frame_range(2, 6, 25.0, 250) == (50, 150)
    assert S.window_frame_range(5, 8, 5.0, 40) == (25, 39)  # end clamped to V − 1
    assert S.window_frame_range(9, 12, 5.0, 40) == (39, 39)
    # sparse inside [50, 150]: s = 25, J = 1 shift int(12.5) = 12
    assert S.sparse_eval_indices(250, 4, 0, 1, first=50, last=150) == [62, 87, 112, 137]
    g = rng(2)
    for _ in range(100):
        idx = S.sparse_train_indices(250, 4, g, first=50, last=150)
        assert all(50 + 25 * i <= k <= 50 + 25 * (i + 1) for i, k in enumerate(idx))


# ------------------------------------------------------------------ SSV2
def test_ssv2_video_views():
    assert S.ssv2_test_indices(30, 8, 0, 2) == [0, 3, 7, 11, 15, 18, 22, 26]
    assert S.ssv2_test_indices(30, 8, 1, 2) == [1, 5, 9, 13, 16, 20, 24, 28]
    assert S.ssv2_video_val_indices(30, 8) == [1, 5, 9, 13, 16, 20, 24, 28]
    assert S.ssv2_test_indices(5, 8, 0, 2) == [0, 0, 1, 1, 2, 3, 3, 4]
    assert S.ssv2_test_indices(5, 8, 1, 2) == [0, 0, 1, 2, 2, 3, 4, 4]
    assert S.ssv2_test_indices(9, 8, 0, 1) == [0, 1, 2, 3, 4, 5, 6, 7]


def test_ssv2_frames_val():
    assert S.ssv2_frames_val_indices(30, 8) == [1, 4, 7, 10, 13, 16, 19, 22]
    assert S.ssv2_frames_val_indices(9, 8) == list(range(8))
    assert S.ssv2_frames_val_indices(5, 8) == [0, 0, 0, 0, 1, 2, 3, 4]


def test_ssv2_train():
    g = rng(3)
    seen = set()
    for _ in range(200):
        idx = S.ssv2_train_indices(30, 8, g)
        assert all(3 * i <= k <= 3 * i + 2 for i, k in enumerate(idx))
        seen.update(k - 3 * i for i, k in enumerate(idx))
    assert seen == {0, 1, 2}
    assert S.ssv2_train_indices(5, 8, g) == [0, 0, 0, 0, 1, 2, 3, 4]
    assert S.ssv2_train_indices(8, 8, g) == list(range(8))


# ------------------------------------------------------------------ dense
def test_dense_test_views():
    assert S.dense_test_indices(60, 8, 4, 0, 1) == [14, 18, 22, 26, 30, 34, 38, 42]
    assert S.dense_test_indices(60, 8, 4, 0, 3) == [0, 4, 8, 12, 16, 20, 24, 28]
    assert S.dense_test_indices(60, 8, 4, 1, 3) == [14, 18, 22, 26, 30, 34, 38, 42]
    assert S.dense_test_indices(60, 8, 4, 2, 3) == [28, 32, 36, 40, 44, 48, 52, 56]
    assert S.dense_test_indices(20, 8, 4, 1, 3) == [0, 4, 8, 12, 16, 16, 16, 16]  # V < n·r: last repeated
    assert S.dense_test_indices(33, 8, 4, 0, 1) == [0, 4, 8, 12, 16, 20, 24, 28]


def test_dense_train():
    g = rng(4)
    assert S.dense_train_indices(20, 8, 4, g) == [0, 5, 10, 15, 19, 19, 19, 19]
    assert S.dense_train_indices(3, 8, 4, g) == [2] * 8
    ends = set()
    for _ in range(300):
        idx = S.dense_train_indices(60, 8, 4, g)
        end = idx[-1] + 1
        assert 32 <= end < 60
        assert idx == [min(int(end - 32 + 32 * k / 7), end - 1) for k in range(8)]
        ends.add(end)
    assert ends == set(range(32, 60))


def test_clip_indices_dispatch_and_errors():
    assert S.clip_indices("sparse", "validation", 30, 8) == [1, 5, 8, 12, 15, 19, 23, 26]
    assert S.clip_indices("dense", "test", 60, 8, rate=4, segment=2, num_segments=3)[0] == 28
    assert S.clip_indices("ssv2_frames", "validation", 30, 8) == [1, 4, 7, 10, 13, 16, 19, 22]
    assert S.clip_indices("ssv2", "validation", 30, 8) == [1, 5, 9, 13, 16, 20, 24, 28]
    with pytest.raises(ValueError, match="random generator"):
        S.clip_indices("sparse", "train", 30, 8)
    with pytest.raises(ValueError, match="trimmed windows"):
        S.clip_indices("dense", "validation", 30, 8, first=3, last=9)
    with pytest.raises(ValueError, match="0 frames"):
        S.sparse_eval_indices(0, 8, 0, 1)
    with pytest.raises(ValueError, match="segment 3"):
        S.ssv2_test_indices(30, 8, 3, 2)


# ------------------------------------------------------------------ masked pretraining (official VideoMAE loader)
def test_pretrain_segments_one_frame_per_segment():
    # V = 30, J = 8: a = 3, segment i covers [3i, 3i + 2]; every frame of every segment is reachable
    seen = [set() for _ in range(8)]
    g = rng()
    for _ in range(300):
        for i, k in enumerate(S.pretrain_segment_indices(30, 8, g)):
            seen[i].add(k)
    assert seen == [{3 * i, 3 * i + 1, 3 * i + 2} for i in range(8)]
    assert all(2 * i <= k <= 2 * i + 1 for i, k in enumerate(S.pretrain_segment_indices(17, 8, g)))  # a = 2
    assert S.pretrain_segment_indices(8, 8, g) == list(range(8))  # a = 1
    assert S.pretrain_segment_indices(5, 8, g) == [0] * 8  # V < J: all zeros (not front padding)


def test_pretrain_clip_stride_from_random_start():
    # V = 60, n = 8, r = 4: start uniform in [0, 60 - 32] = [0, 28], then start + 4k
    starts = set()
    g = rng()
    for _ in range(600):
        out = S.pretrain_clip_indices(60, 8, 4, g)
        assert out == [out[0] + 4 * k for k in range(8)]
        starts.add(out[0])
    assert starts == set(range(29))


def test_pretrain_clip_short_videos_repeat_below_the_last_frame():
    g = rng()
    # V = 9, n = 4, r = 4: V < n·r, start 0; 0 4, then 8 is not below V − 1 = 8, so 4 repeats
    assert S.pretrain_clip_indices(9, 4, 4, g) == [0, 4, 4, 4]
    assert S.pretrain_clip_indices(8, 4, 4, g) == [0, 4, 4, 4]
    assert S.pretrain_clip_indices(1, 3, 2, g) == [0, 0, 0]
    # V = 8, n = 8, r = 1: start 0 (span 1); frame 7 = V − 1 is never stepped onto
    assert S.pretrain_clip_indices(8, 8, 1, g) == [0, 1, 2, 3, 4, 5, 6, 6]
    # V = 10, n = 8, r = 1: start in {0, 1, 2}; from start 2 the clip would end on 9 = V − 1, which repeats 8
    seen = {tuple(S.pretrain_clip_indices(10, 8, 1, g)) for _ in range(200)}
    assert seen == {tuple(range(0, 8)), tuple(range(1, 9)), (2, 3, 4, 5, 6, 7, 8, 8)}
