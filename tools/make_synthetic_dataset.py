"""Write a small real video dataset (h264 mp4 through PyAV) plus train.csv / val.csv / test.csv.

Modes:
  motion  4 classes told apart only by motion over time (a shape moving right, left, down or up); start
          position, size, colours and background are random, so a single frame does not reveal the class.
  index   every frame encodes its own index as a 4×4 grid of black/white blocks (16 bits, survives h264),
          for exact frame-index tests; ``decode_frame_index`` reads it back.
  colour  4 classes told apart by the colour (red, green, blue, yellow) of a square of random size drifting over a
          noisy grey background of random level: every frame shows the class, but only in a part of it.
  brightness  a regression set: the label is a real value v in [-1, 1] that sets the mean grey level of the
          video (40 + 175 · (v + 1) / 2, with pixel noise and a drifting darker or lighter blob), for
          ``--task regression`` runs that must learn something.

List lines are ``videos/<split>_<k>.mp4 <label>`` (space-separated); use ``--prefix <out>`` when training.
Example: python tools/make_synthetic_dataset.py --out /tmp/synth --num_train 64 --size 64 --frames 16
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python tools/x.py` from the repo root

import av
import numpy as np

NUM_CLASSES = 4
_BITS_SIDE = 4  # index mode: a 4×4 grid of blocks, one bit each
_DIRECTIONS = {0: (1, 0), 1: (-1, 0), 2: (0, 1), 3: (0, -1)}  # (dx, dy): right, left, down, up
_COLOURS = {0: (230, 40, 40), 1: (40, 200, 40), 2: (40, 60, 240), 3: (220, 220, 40)}  # red, green, blue, yellow


def write_video(path: str | Path, frames: np.ndarray, fps: int = 30, crf: int = 18,
                gop: int | None = None, faststart: bool = False, threads: int = 1) -> None:
    """Encode uint8 frames (T, H, W, 3), H and W even, as h264/yuv420p mp4 at ``fps``.

    ``gop`` sets the key-frame interval (x264 default 250); ``faststart`` puts the index before the data.
    ``threads``: x264 encoder threads. 1 (default) writes the same file on every run; with x264's own threading
    (0: its automatic choice) two `make demo` runs wrote different videos from the same seed (decoded frames up to
    14 levels apart), so their trainings differed.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": str(threads)}
        if gop is not None:
            stream.options["g"] = str(gop)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def index_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 whose block pattern spells their index in binary (bit b at block b)."""
    if num_frames > 2 ** (_BITS_SIDE * _BITS_SIDE):
        raise ValueError(f"index mode encodes at most {2 ** 16} frames, asked for {num_frames}")
    rows = np.arange(height) * _BITS_SIDE // height
    cols = np.arange(width) * _BITS_SIDE // width
    bit_of_pixel = rows[:, None] * _BITS_SIDE + cols[None, :]
    idx = np.arange(num_frames)[:, None, None]
    on = (idx >> bit_of_pixel[None]) & 1
    return np.repeat((on * 255).astype(np.uint8)[..., None], 3, axis=-1)


def decode_frame_index(frames: np.ndarray) -> list[int]:
    """Read the indices written by ``index_frames`` back from frames (T, H, W, C), any numeric range ≥ 0..1."""
    frames = np.asarray(frames, dtype=np.float64)
    t, h, w = frames.shape[:3]
    lo, hi = frames.min(), frames.max()
    mid = (lo + hi) / 2 if hi > lo else 0.5
    rows = [(r * h // _BITS_SIDE, (r + 1) * h // _BITS_SIDE) for r in range(_BITS_SIDE)]
    cols = [(c * w // _BITS_SIDE, (c + 1) * w // _BITS_SIDE) for c in range(_BITS_SIDE)]
    out = []
    for k in range(t):
        value = 0
        for bit in range(_BITS_SIDE * _BITS_SIDE):
            (y0, y1), (x0, x1) = rows[bit // _BITS_SIDE], cols[bit % _BITS_SIDE]
            my, mx = (y1 - y0) // 4, (x1 - x0) // 4  # the block's centre half, away from blurred edges
            if frames[k, y0 + my:y1 - my, x0 + mx:x1 - mx].mean() > mid:
                value |= 1 << bit
        out.append(value)
    return out


def motion_frames(label: int, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A high-contrast square of random size/colour moving in direction ``label`` over a random noisy background.

    The square travels 60-100 % of the free space, so the direction shows in any crop of a third of the frame or
    more, while its uniform random start keeps a single frame uninformative.
    """
    dx, dy = _DIRECTIONS[label]
    side = int(rng.integers(size // 5, size // 3 + 1))
    travel = size - side - 1
    path = int(rng.integers(travel * 3 // 5, travel + 1))
    background = rng.integers(0, 96, 3)
    colour = rng.integers(160, 256, 3)
    if rng.random() < 0.5:  # dark square on a light background half of the time
        background, colour = 255 - background, 255 - colour
    base = np.clip(background + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
    # Start so that the whole path stays inside the frame; the orthogonal coordinate is uniform.
    along0 = int(rng.integers(0, travel - path + 1))
    across = int(rng.integers(0, travel + 1))
    frames = np.repeat(base[None], num_frames, axis=0)
    for t in range(num_frames):
        step = round(path * t / max(num_frames - 1, 1))
        along = along0 + step if (dx + dy) > 0 else along0 + path - step
        x, y = (along, across) if dx else (across, along)
        frames[t, y:y + side, x:x + side] = colour
    return frames


def colour_frames(label: int, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A square of colour ``label`` (a third to half of the frame side) drifting at up to 2 px per frame over a grey
    background of random level (60-190) with pixel noise (σ 8)."""
    side = int(rng.integers(size // 3, size // 2 + 1))
    grey = np.clip(rng.integers(60, 190) + rng.normal(0, 8, (size, size, 1)), 0, 255)
    x0, y0 = rng.integers(0, size - side, 2)
    vx, vy = rng.integers(-2, 3, 2)
    frames = np.repeat(np.repeat(grey, 3, axis=-1)[None], num_frames, axis=0).astype(np.uint8)
    for t in range(num_frames):
        x, y = int(np.clip(x0 + vx * t, 0, size - side)), int(np.clip(y0 + vy * t, 0, size - side))
        frames[t, y:y + side, x:x + side] = _COLOURS[label]
    return frames


def brightness_frames(value: float, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Grey frames whose mean level is 40 + 175 · (value + 1) / 2 (value in [-1, 1]), with pixel noise (σ 6) and a
    blob ±30 grey levels off the background drifting across the frame, so that no pixel alone gives the value."""
    level = 40 + 175 * (value + 1) / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    x0, y0, vx, vy = rng.uniform(0, size, 2).tolist() + rng.uniform(-2, 2, 2).tolist()
    sign = 1.0 if rng.random() < 0.5 else -1.0
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        blob = np.exp(-((xx - x0 - vx * t) ** 2 + (yy - y0 - vy * t) ** 2) / (2 * (size / 6) ** 2))
        grey = level + sign * 30 * blob + rng.normal(0, 6, (size, size))
        frames[t] = np.clip(grey, 0, 255).astype(np.uint8)[..., None]
    return frames


def _clip_and_label(mode: str, k: int, count: int, frames: int, size: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Item ``k`` of a split of ``count``: its frames and the label column (a class id, or for brightness a real
    value, the split's values evenly spread over [-1, 1])."""
    if mode == "brightness":
        value = round(-1 + 2 * (k + 0.5) / count, 4)
        return brightness_frames(value, frames, size, rng), f"{value}"
    label = k % NUM_CLASSES
    if mode == "index":
        return index_frames(frames, size, size), f"{label}"
    draw = motion_frames if mode == "motion" else colour_frames
    return draw(label, frames, size, rng), f"{label}"


def make_dataset(out: str | Path, mode: str = "motion", num_train: int = 64, num_val: int = 16,
                 num_test: int = 16, size: int = 64, frames: int = 16, fps: int = 30, seed: int = 0,
                 crf: int = 18) -> Path:
    """Write ``out/videos/*.mp4`` and ``out/{train,val,test}.csv``; class labels cycle through the 4 classes,
    brightness labels are evenly spread over [-1, 1]. ``crf`` 0 makes x264 lossless (only the yuv420p conversion
    remains), so what a model sees does not depend on the encoder's rate decisions."""
    if size % 2 or size < 16:
        raise ValueError(f"--size must be even and >= 16, got {size}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val), ("test", num_test)):
        lines = []
        for k in range(count):
            clip, label = _clip_and_label(mode, k, count, frames, size, rng)
            rel = f"videos/{split}_{k:05d}.mp4"
            write_video(out / rel, clip, fps=fps, crf=crf)
            lines.append(f"{rel} {label}\n")
        (out / f"{split}.csv").write_text("".join(lines))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--mode", choices=("motion", "index", "colour", "brightness"), default="motion")
    parser.add_argument("--num_train", type=int, default=64)
    parser.add_argument("--num_val", type=int, default=16)
    parser.add_argument("--num_test", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (even)")
    parser.add_argument("--frames", type=int, default=16, help="frames per video")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crf", type=int, default=18, help="x264 quality, 0 = lossless, 51 = worst (default 18)")
    a = parser.parse_args()
    out = make_dataset(a.out, a.mode, a.num_train, a.num_val, a.num_test, a.size, a.frames, a.fps, a.seed, a.crf)
    print(f"wrote {a.num_train + a.num_val + a.num_test} videos and train/val/test.csv to {out}")


if __name__ == "__main__":
    main()
