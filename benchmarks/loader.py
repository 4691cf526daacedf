"""Loader throughput: clips per second per core for sparse clips of 8 and 32 frames from 320p h264 videos.

The videos are generated first, for each ``--contents`` kind and each ``--gops`` key-frame interval (250 is the
libx264 default, what ffmpeg gives when Kinetics clips are re-encoded to 320p). Exact sparse decoding must decode
every reference frame from the key frame before each sampled frame, so the key-frame interval and the bitrate
(printed per row) decide the cost:
  shapes   moving rectangles over a drifting colour gradient with mild cycled noise: cheap to decode (~240 kb/s)
  texture  a camera panning over a 1/f² "natural image" texture with a moving textured object and fresh sensor
           noise (σ = 1): detail everywhere, several times the bitrate, a harder case than most real footage
Rows ``decode`` open a video, draw sparse training indices and decode them, as the dataset does per item. Rows
``pipeline`` run whole training items of ``build_video_dataset`` with the Kinetics VideoMamba-Ti f8 launcher's
settings (Kinetics_sparse, 224 px crops, RandAugment rand-m5-n2-mstd0.25-inc1, random erasing 0.25,
``--num_sample 2``: one decode, two augmented clips). Everything runs in one process with one decoding and one
torch thread. Throughput is per CPU-second of the process (items / (user + system time)), which is what one
core delivers and is robust to other load, and per wall-clock second.
Example: python benchmarks/loader.py --num_videos 4 --repeats 3
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python benchmarks/x.py` from the repo root

import numpy as np
import torch

from benchmarks.common import machine_description
from datasets.build import build_video_dataset
from datasets.readers import open_video
from datasets.sampling import sparse_train_indices
from tools.make_synthetic_dataset import write_video
from utils.config import AugmentConfig, VideoSetConfig
from utils.logging import setup_logging
from utils.table import format_table

logger = logging.getLogger(__name__)


def shapes_frames(num_frames: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
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


def natural_texture(height: int, width: int, rng: np.random.Generator, beta: float = 2.0) -> np.ndarray:
    """float32 (H, W, 3) in [0, 255]: random-phase noise with a 1/f^beta power spectrum (the statistics of natural
    images), colour channels mixed so they correlate."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    amplitude = np.hypot(fx, fy)
    amplitude[0, 0] = 1.0
    amplitude = amplitude ** (-beta / 2)
    channels = []
    for _ in range(3):
        spectrum = (rng.normal(size=amplitude.shape) + 1j * rng.normal(size=amplitude.shape)) * amplitude
        img = np.fft.irfft2(spectrum, s=(height, width))
        channels.append((img - img.mean()) / img.std())
    mixed = np.stack(channels, axis=-1) @ (np.eye(3) + 0.3 * rng.normal(size=(3, 3)))
    return np.clip(128 + 45 * mixed, 0, 255).astype(np.float32)


def texture_frames(num_frames: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (T, H, W, 3): a smooth camera pan over a natural texture, a textured object crossing it, and fresh
    Gaussian sensor noise (σ = 1) in every frame."""
    pad_y, pad_x = height // 2, width // 2
    scene = natural_texture(height + pad_y, width + pad_x, rng)
    obj_h, obj_w = height * 3 // 8, width * 2 // 7
    obj = natural_texture(obj_h, obj_w, rng, beta=1.5)
    phase = rng.uniform(0, 2 * np.pi, 3)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        u = t / max(num_frames - 1, 1)
        y = int(pad_y / 2 * (1 + np.sin(2 * np.pi * u + phase[0])))
        x = int(pad_x / 2 * (1 + np.sin(2 * np.pi * u * 0.7 + phase[1])))
        frame = scene[y:y + height, x:x + width].copy()
        oy = int((height - obj_h) / 2 * (1 + np.sin(2 * np.pi * u * 1.3 + phase[2])))
        ox = int((width - obj_w) * u)
        frame[oy:oy + obj_h, ox:ox + obj_w] = obj
        frame += rng.normal(0, 1, frame.shape).astype(np.float32)
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


CONTENTS: dict[str, Callable[[int, int, int, np.random.Generator], np.ndarray]] = {
    "shapes": shapes_frames,
    "texture": texture_frames,
}


def make_videos(folder: Path, content: str, count: int, seconds: float, fps: int, height: int, width: int,
                gop: int, seed: int) -> list[str]:
    """Write ``count`` h264 mp4 videos (crf 23) of ``content`` with key-frame interval ``gop``; return their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(count):
        path = folder / f"{content}_g{gop}_{k}.mp4"
        write_video(path, CONTENTS[content](int(seconds * fps), height, width, rng), fps=fps, crf=23, gop=gop,
                    threads=0)  # x264's own threads, as when the table was measured
        paths.append(str(path))
    return paths


def timed_rates(one_pass: Callable[[], None], items_per_pass: int, repeats: int) -> tuple[float, float]:
    """(items per CPU-second, items per wall-second) over ``repeats`` passes after one warm-up pass."""
    one_pass()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        one_pass()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return repeats * items_per_pass / cpu, repeats * items_per_pass / wall


def measure_decode(paths: list[str], backend: str, num_frames: int, repeats: int, seed: int) -> tuple[float, float]:
    """Sparse training clips decoded straight from the readers."""
    rng = np.random.default_rng(seed)

    def one_pass() -> None:
        for path in paths:
            reader = open_video(path, backend, num_threads=1)
            reader.get_frames(sparse_train_indices(reader.num_frames, num_frames, rng))
            reader.close()

    return timed_rates(one_pass, len(paths), repeats)


def pipeline_configs(list_dir: Path, backend: str, num_frames: int) -> tuple[VideoSetConfig, AugmentConfig]:
    """The data and augmentation settings of exp/k400/videomamba_tiny/run_f8x224.sh (frames as given, list
    lines split on spaces, the parser's defaults elsewhere)."""
    data = VideoSetConfig(data_path=str(list_dir), prefix="", split=" ", video_backend=backend, num_frames=num_frames,
                          sampling_rate=4, num_sample=2, max_bad_fraction=0.1, max_retries=10,
                          data_set="Kinetics_sparse", nb_classes=2, regression=False, frame_folders=False,
                          filename_tmpl="img_{:05}.jpg", trimmed=60, time_stride=16, test_num_segment=4)
    augment = AugmentConfig(input_size=224, short_side_size=224, aa="rand-m5-n2-mstd0.25-inc1",
                            train_interpolation="bicubic", train_crop_scale=(0.08, 1.0), reprob=0.25, remode="pixel",
                            recount=1, test_num_crop=3, mixup=0.8, cutmix=1.0, cutmix_minmax=None, mixup_prob=1.0,
                            mixup_switch_prob=0.5, mixup_mode="batch", smoothing=0.1)
    return data, augment


def measure_pipeline(paths: list[str], backend: str, num_frames: int, repeats: int, seed: int,
                     list_dir: Path) -> tuple[float, float]:
    """Whole training items (decode + augmentation of two clips) through ``build_video_dataset``."""
    (list_dir / "train.csv").write_text("".join(f"{p} {k % 2}\n" for k, p in enumerate(paths)))
    dataset = build_video_dataset("train", *pipeline_configs(list_dir, backend, num_frames), seed=seed)
    torch.manual_seed(seed)

    def one_pass() -> None:
        for i in range(len(dataset)):
            dataset[i]

    return timed_rates(one_pass, len(dataset), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="video length (Kinetics clips are 10 s)")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=568)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--gops", type=int, nargs="+", default=[250, 30], help="key-frame intervals to compare")
    parser.add_argument("--contents", nargs="+", choices=sorted(CONTENTS), default=["shapes", "texture"])
    parser.add_argument("--no_pipeline", action="store_true", help="skip the whole-training-item rows")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the videos")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    setup_logging()
    torch.set_num_threads(1)
    backends = [b for b in ("decord", "pyav") if b == "pyav" or importlib.util.find_spec("decord")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for content in a.contents:
            for gop in a.gops:
                folder = Path(tmp) / f"{content}_g{gop}"
                folder.mkdir()
                start = time.perf_counter()
                paths = make_videos(folder, content, a.num_videos, a.seconds, a.fps, a.height, a.width, gop, a.seed)
                kbps = sum(os.path.getsize(p) for p in paths) * 8 / 1000 / (a.seconds * len(paths))
                logger.info("wrote %d %s videos of %dx%d, %d frames, key-frame interval %d, %.0f kb/s, in %.1f s",
                            len(paths), content, a.width, a.height, int(a.seconds * a.fps), gop, kbps,
                            time.perf_counter() - start)
                for backend in backends:
                    for n in a.frames:
                        measured = [("decode", measure_decode(paths, backend, n, a.repeats, a.seed))]
                        if not a.no_pipeline:
                            measured.append(("pipeline", measure_pipeline(paths, backend, n, a.repeats, a.seed,
                                                                          folder)))
                        for what, (per_cpu, per_wall) in measured:
                            rows.append([content, f"{kbps:.0f}", gop, backend, n, what, f"{per_cpu:.1f}",
                                         f"{per_wall:.1f}"])
    print(machine_description(1))
    print(f"{a.num_videos} videos per row, {a.width}x{a.height} h264 crf 23, {a.seconds:g} s at {a.fps} fps; "
          f"sparse training clips, one process, one decode thread")
    print(format_table(["content", "kb/s", "key-frame interval", "backend", "frames", "what",
                        "items/s per core (CPU time)", "items/s (wall)"], rows))


if __name__ == "__main__":
    main()
