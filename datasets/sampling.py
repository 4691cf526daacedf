"""Frame-index rules of every sampling mode (issues 4 and 8), as pure functions.

Notation: ``V`` frames in the clip, ``n`` frames to sample, ``J`` test segments, ``j`` the segment (0-based),
``r`` the dense sampling rate. ``int`` truncates. Random rules take a ``numpy.random.Generator`` so that callers
control seeding (worker processes, tests). Every function returns a ``list[int]`` of length ``n``.
"""
from __future__ import annotations

import numpy as np


def _check(num_video_frames: int, num_frames: int) -> None:
    if num_video_frames < 1:
        raise ValueError(f"cannot sample from a clip with {num_video_frames} frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")


def _check_segment(segment: int, num_segments: int) -> None:
    if not 0 <= segment < num_segments:
        raise ValueError(f"segment {segment} is outside [0, {num_segments})")


# ---------------------------------------------------------------- sparse (Kinetics_sparse, LVU, Breakfast, COIN)
def sparse_train_indices(num_video_frames: int, num_frames: int, rng: np.random.Generator,
                         first: int = 0, last: int | None = None) -> list[int]:
    """Training: for each i a random index in [first + round(s·i), first + round(s·(i+1))], capped at ``last``.

    ``first``/``last`` (inclusive) restrict sampling to a trimmed window; by default the whole clip, so
    s = max(0, (V − 1)/n).
    """
    _check(num_video_frames, num_frames)
    last = num_video_frames - 1 if last is None else last
    seg = max(0.0, (last - first) / num_frames)
    out = []
    for i in range(num_frames):
        lo, hi = first + round(seg * i), first + round(seg * (i + 1))
        out.append(min(int(rng.integers(lo, hi + 1)), last))
    return out


def sparse_eval_indices(num_video_frames: int, num_frames: int, segment: int, num_segments: int,
                        first: int = 0, last: int | None = None) -> list[int]:
    """Evaluation view j of J: first + round(s·i) + int(s/(J+1)·(j+1)), capped at ``last`` (validation: J = 1)."""
    _check(num_video_frames, num_frames)
    _check_segment(segment, num_segments)
    last = num_video_frames - 1 if last is None else last
    seg = max(0.0, (last - first) / num_frames)
    shift = int(seg / (num_segments + 1) * (segment + 1))
    return [min(first + round(seg * i) + shift, last) for i in range(num_frames)]


# ---------------------------------------------------------------- trimmed windows (LVU, Breakfast, COIN)
def trimmed_windows(duration: float, trimmed: float, stride: float) -> list[tuple[float, float]]:
    """Windows (start, end) in seconds: starts 0, stride, … below int(duration), each ``trimmed`` long.

    A video shorter than ``trimmed`` is one window [0, duration]. A window running past the end is kept,
    ending at ``duration``, when duration − start ≥ trimmed/2, and dropped otherwise (issue 8 rule 1).
    """
    if duration < 0 or trimmed <= 0 or stride <= 0:
        raise ValueError(f"bad trimmed window arguments: duration={duration}, trimmed={trimmed}, stride={stride}")
    if duration < trimmed:
        return [(0, duration)]
    windows = []
    start = 0
    while start < int(duration):
        end = start + trimmed
        if end <= duration:
            windows.append((start, end))
        elif duration - start >= trimmed / 2:
            windows.append((start, duration))
        start += stride
    return windows


def window_frame_range(start: float, end: float, fps: float, num_video_frames: int) -> tuple[int, int]:
    """Inclusive frame range (a, b) of a window: a = int(start·fps) in [0, V−1], b = int(end·fps) in [a, V−1]."""
    if num_video_frames < 1:
        raise ValueError(f"cannot take a window of a clip with {num_video_frames} frames")
    a = min(max(int(start * fps), 0), num_video_frames - 1)
    b = min(max(int(end * fps), a), num_video_frames - 1)
    return a, b


# ---------------------------------------------------------------- SSV2 (TSN-style)
def _front_padded(num_video_frames: int, num_frames: int) -> list[int]:
    """V < n: frame 0 repeated n − V times, then 0 … V−1."""
    return [0] * (num_frames - num_video_frames) + list(range(num_video_frames))


def ssv2_train_indices(num_video_frames: int, num_frames: int, rng: np.random.Generator) -> list[int]:
    """Training: i·a + randint[0, a) with a = V // n; V < n (a = 0) gives front padding.

    The TSN branch "n sorted random indices when V > n" needs a = 0 and V > n at once, which cannot happen.
    """
    _check(num_video_frames, num_frames)
    step = num_video_frames // num_frames
    if step > 0:
        return [i * step + int(rng.integers(0, step)) for i in range(num_frames)]
    return _front_padded(num_video_frames, num_frames)


def ssv2_test_indices(num_video_frames: int, num_frames: int, segment: int, num_segments: int) -> list[int]:
    """Test view j of J: int(tick·i + tick·j/J) with tick = V/n (videos and frame folders alike)."""
    _check(num_video_frames, num_frames)
    _check_segment(segment, num_segments)
    tick = num_video_frames / num_frames
    return [int(tick * i + tick * segment / num_segments) for i in range(num_frames)]


def ssv2_video_val_indices(num_video_frames: int, num_frames: int) -> list[int]:
    """Validation from a video: int(tick/2 + tick·i)."""
    _check(num_video_frames, num_frames)
    tick = num_video_frames / num_frames
    return [int(tick / 2 + tick * i) for i in range(num_frames)]


def ssv2_frames_val_indices(total_frames: int, num_frames: int) -> list[int]:
    """Validation from a frame folder: i·a + a//2 with a = total // n; total < n gives front padding."""
    _check(total_frames, num_frames)
    step = total_frames // num_frames
    if step > 0:
        return [i * step + step // 2 for i in range(num_frames)]
    return _front_padded(total_frames, num_frames)


# ---------------------------------------------------------------- dense (Kinetics, UCF101, HMDB51)
def dense_test_indices(num_video_frames: int, num_frames: int, rate: int, segment: int,
                       num_segments: int) -> list[int]:
    """Test view j of J: start = int(j·max(V − n·r, 0)/(J − 1)) (J = 1: int(max(V − n·r, 0)/2)); frames
    start, start + r, … below min(start + n·r, V), the last one repeated up to n. Validation is J = 1."""
    _check(num_video_frames, num_frames)
    _check_segment(segment, num_segments)
    span = max(num_video_frames - num_frames * rate, 0)
    start = int(span / 2) if num_segments == 1 else int(segment * span / (num_segments - 1))
    out = list(range(start, min(start + num_frames * rate, num_video_frames), rate))
    return out + [out[-1]] * (num_frames - len(out))


def dense_train_indices(num_video_frames: int, num_frames: int, rate: int,
                        rng: np.random.Generator) -> list[int]:
    """Training: with V > n·r, end e uniform in [n·r, V) and int(linspace(e − n·r, e, n)) capped at e − 1;
    otherwise int(linspace(0, V, V // r)) capped at V − 1, then V − 1 repeated up to n."""
    _check(num_video_frames, num_frames)
    span = num_frames * rate
    if num_video_frames > span:
        end = int(rng.integers(span, num_video_frames))
        return [min(int(x), end - 1) for x in np.linspace(end - span, end, num_frames)]
    out = [min(int(x), num_video_frames - 1) for x in np.linspace(0, num_video_frames, num_video_frames // rate)]
    return out + [num_video_frames - 1] * (num_frames - len(out))


# ---------------------------------------------------------------- masked pretraining (the official VideoMAE loader)
def pretrain_segment_indices(num_video_frames: int, num_segments: int, rng: np.random.Generator) -> list[int]:
    """``--num_segments`` J > 1: one frame per segment, i·a + randint[0, a) with a = V // J; V < J gives J zeros."""
    _check(num_video_frames, num_segments)
    step = num_video_frames // num_segments
    if step == 0:
        return [0] * num_segments
    return [i * step + int(rng.integers(0, step)) for i in range(num_segments)]


def pretrain_clip_indices(num_video_frames: int, num_frames: int, rate: int, rng: np.random.Generator) -> list[int]:
    """``--num_segments 1``: start s uniform in [0, V − n·r] (0 when V < n·r); each next frame is the previous + r
    when that is below V − 1, else the previous frame again (so frame V − 1 is only reached as the start)."""
    _check(num_video_frames, num_frames)
    span = num_video_frames - num_frames * rate + 1
    frame = int(rng.integers(0, span)) if span > 0 else 0
    out = []
    for _ in range(num_frames):
        out.append(frame)
        if frame + rate < num_video_frames - 1:
            frame += rate
    return out


# ---------------------------------------------------------------- dispatch by data set kind and mode
SAMPLINGS = ("sparse", "dense", "ssv2", "ssv2_frames")
VIDEO_SAMPLINGS = tuple(s for s in SAMPLINGS if s != "ssv2_frames")  # frame folders are not videos
MODES = ("train", "validation", "test")


def clip_indices(sampling: str, mode: str, num_video_frames: int, num_frames: int, *,
                 rng: np.random.Generator | None = None, segment: int = 0, num_segments: int = 1,
                 rate: int = 1, first: int = 0, last: int | None = None) -> list[int]:
    """Indices of one clip for ``sampling`` in ``mode``; validation is the J = 1 view of test where the rules agree.

    ``first``/``last`` (a trimmed window's frame range) apply to ``sparse`` only; ``rng`` is needed in training.
    """
    if sampling not in SAMPLINGS or mode not in MODES:
        raise ValueError(f"unknown sampling {sampling!r} / mode {mode!r}; expected {SAMPLINGS} / {MODES}")
    if mode == "train" and rng is None:
        raise ValueError("training sampling needs a random generator")
    if sampling != "sparse" and (first != 0 or last is not None):
        raise ValueError(f"trimmed windows are only supported by sparse sampling, not {sampling!r}")
    v, n = num_video_frames, num_frames
    if sampling == "sparse":
        if mode == "train":
            return sparse_train_indices(v, n, rng, first, last)
        return sparse_eval_indices(v, n, segment if mode == "test" else 0, num_segments if mode == "test" else 1,
                                   first, last)
    if sampling == "dense":
        if mode == "train":
            return dense_train_indices(v, n, rate, rng)
        return dense_test_indices(v, n, rate, segment if mode == "test" else 0, num_segments if mode == "test" else 1)
    if mode == "train":
        return ssv2_train_indices(v, n, rng)
    if mode == "test":
        return ssv2_test_indices(v, n, segment, num_segments)
    return ssv2_video_val_indices(v, n) if sampling == "ssv2" else ssv2_frames_val_indices(v, n)
