"""Loader throughput: clips per second per core for sparse clips of 8 and 32 frames from 320p h264 videos.

The videos are generated first (moving shapes over a drifting gradient with mild noise), once with the libx264
default key-frame interval of 250 frames (as ffmpeg re-encodes Kinetics-320p clips) and once per other ``--gops``
value: exact sparse decoding must decode every reference frame from the key frame before each sampled frame, so
the key-frame interval decides the cost. Each clip opens its video afresh, draws sparse training
indices and decodes them, as the dataset does per item, in one process with one decoding thread. Throughput is
reported per CPU-second of the process (clips / (user + system time)), which is what one core delivers and is
robust to other load on the machine, and per wall-clock second.
Example: python benchmarks/loader.py --num_videos 4 --repeats 3
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python benchmarks/x.py` from the repo root

import numpy as np
import torch

from benchmarks.common import format_table, machine_description
from datasets.readers import open_video
from datasets.sampling import sparse_train_indices
from tools.make_synthetic_dataset import write_video
from utils.logging import setup_logging

logger = logging.getLogger(__name__)


def synthetic_frames(num_frames: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (T, H, W, 3): a drifting colour gradient, two moving rectangles and Gaussian noise (σ = 4, 7 patterns
    cycled to keep generation fast)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    noise = rng.normal(0, 4, (7, height, width, 3)).astype(np.float32)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    boxes = [(rng.uniform(0, width - 80), rng.uniform(0, height - 60), rng.uniform(-4, 4), rng.uniform(-3, 3),
              rng.integers(0, 256, 3)) for _ in range(2)]
    for t in range(num_frames):
        base = np.stack([(xx + 2 * t) % 256, (yy + t) % 256, ((xx + yy) / 2 + 3 * t) % 256], axis=-1)
        base += noise[t % len(noise)]
        for x, y, vx, vy, colour in boxes:
            x0, y0 = int((x + vx * t) % (width - 80)), int((y + vy * t) % (height - 60))
            base[y0:y0 + 60, x0:x0 + 80] = colour
        frames[t] = np.clip(base, 0, 255).astype(np.uint8)
    return frames


def make_videos(folder: Path, count: int, seconds: float, fps: int, height: int, width: int, gop: int,
                seed: int) -> list[str]:
    """Write ``count`` h264 mp4 videos with key-frame interval ``gop`` and return their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(count):
        path = folder / f"bench_g{gop}_{k}.mp4"
        write_video(path, synthetic_frames(int(seconds * fps), height, width, rng), fps=fps, crf=23, gop=gop)
        paths.append(str(path))
    return paths


def measure(paths: list[str], backend: str, num_frames: int, repeats: int, seed: int) -> tuple[float, float]:
    """(clips per CPU-second, clips per wall-second) over ``repeats`` passes after one warm-up pass."""
    rng = np.random.default_rng(seed)

    def one_pass() -> None:
        for path in paths:
            reader = open_video(path, backend, num_threads=1)
            reader.get_frames(sparse_train_indices(reader.num_frames, num_frames, rng))
            reader.close()

    one_pass()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        one_pass()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    clips = repeats * len(paths)
    return clips / cpu, clips / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="video length (Kinetics clips are 10 s)")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=568)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--gops", type=int, nargs="+", default=[250, 30], help="key-frame intervals to compare")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the videos")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    setup_logging()
    torch.set_num_threads(1)
    backends = [b for b in ("decord", "pyav") if b == "pyav" or importlib.util.find_spec("decord")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for gop in a.gops:
            start = time.perf_counter()
            paths = make_videos(Path(tmp), a.num_videos, a.seconds, a.fps, a.height, a.width, gop, a.seed)
            logger.info("wrote %d videos of %dx%d, %d frames, key-frame interval %d, in %.1f s", len(paths),
                        a.width, a.height, int(a.seconds * a.fps), gop, time.perf_counter() - start)
            for backend in backends:
                for n in a.frames:
                    per_cpu, per_wall = measure(paths, backend, n, a.repeats, a.seed)
                    rows.append([backend, gop, n, f"{per_cpu:.1f}", f"{per_wall:.1f}"])
    print(machine_description(1))
    print(f"{a.num_videos} videos {a.width}x{a.height} h264, {a.seconds:g} s at {a.fps} fps; "
          f"sparse training clips, one process, one decode thread")
    print(format_table(["backend", "key-frame interval", "frames", "clips/s per core (CPU time)", "clips/s (wall)"],
                       rows))


if __name__ == "__main__":
    main()
