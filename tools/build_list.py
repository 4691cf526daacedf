"""Turn a folder tree ``root/<class>/<video>`` into train.csv / val.csv / test.csv and classes.csv.

Classes are numbered in sorted folder-name order (classes.csv: ``index name``). Videos of each class are shuffled
with ``--seed`` and split by ``--val_fraction`` / ``--test_fraction`` (with a test fraction of 0, test.csv is a
copy of val.csv, as the official launchers test on the validation list). List lines are ``<class>/<video> label``
relative to ``root`` (train with ``--prefix root``); ``--durations`` adds the duration in seconds (frames / fps,
read with ``--video_backend``) for trimmed data sets (LVU, Breakfast, COIN); unreadable videos are then left out
and reported.
Example: python tools/build_list.py --root /data/ucf101 --out /data/ucf101/lists --val_fraction 0.2
"""
from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python tools/x.py` from the repo root

from datasets.readers import BACKENDS, VideoDecodeError, open_video

logger = logging.getLogger(__name__)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")


def scan_tree(root: Path, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> dict[str, list[str]]:
    """``{class name: sorted video paths relative to root}`` for every class folder holding videos."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    classes = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        videos = sorted(str(v.relative_to(root)) for v in folder.rglob("*")
                        if v.is_file() and v.suffix.lower() in extensions)
        if videos:
            classes[folder.name] = videos
    if not classes:
        raise ValueError(f"{root}: no class folders with videos ({', '.join(extensions)})")
    return classes


def split_videos(classes: dict[str, list[str]], val_fraction: float, test_fraction: float,
                 seed: int) -> dict[str, list[tuple[str, int]]]:
    """Per-class shuffled split into ``{"train", "val", "test"}`` lists of (path, label)."""
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"bad fractions: val {val_fraction}, test {test_fraction} (need >= 0 and sum < 1)")
    rng = random.Random(seed)
    out: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(classes):
        videos = list(classes[name])
        rng.shuffle(videos)
        n_val, n_test = round(val_fraction * len(videos)), round(test_fraction * len(videos))
        out["val"] += [(v, label) for v in videos[:n_val]]
        out["test"] += [(v, label) for v in videos[n_val:n_val + n_test]]
        out["train"] += [(v, label) for v in videos[n_val + n_test:]]
    if test_fraction == 0:
        out["test"] = list(out["val"])
    return out


def video_duration(path: Path, backend: str) -> float:
    """Duration in seconds: frame count over average frame rate."""
    reader = open_video(str(path), backend)
    return reader.num_frames / reader.fps


def write_lists(root: Path, out: Path, splits: dict[str, list[tuple[str, int]]], classes: list[str],
                sep: str = " ", durations_backend: str | None = None) -> dict[str, str]:
    """Write the list files and classes.csv; returns the videos left out as ``{path: reason}``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.csv").write_text("".join(f"{i}{sep}{name}\n" for i, name in enumerate(classes)))
    skipped: dict[str, str] = {}
    durations: dict[str, float] = {}
    for split, rows in splits.items():
        lines = []
        for path, label in rows:
            fields = [path, str(label)]
            if durations_backend is not None:
                if path not in durations and path not in skipped:
                    try:
                        durations[path] = video_duration(root / path, durations_backend)
                    except VideoDecodeError as e:
                        skipped[path] = e.reason
                        logger.warning("left out %s: %s", path, e.reason)
                if path in skipped:
                    continue
                fields.append(f"{durations[path]:.3f}")
            lines.append(sep.join(fields) + "\n")
        (out / f"{split}.csv").write_text("".join(lines))
    return skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, type=Path, help="folder with one sub-folder per class")
    parser.add_argument("--out", required=True, type=Path, help="where to write the list files")
    parser.add_argument("--val_fraction", type=float, default=0.1)
    parser.add_argument("--test_fraction", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default=" ", help="field separator (launchers use ',')")
    parser.add_argument("--durations", action="store_true", help="add a duration column (trimmed data sets)")
    parser.add_argument("--video_backend", default="auto", choices=BACKENDS)
    a = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    classes = scan_tree(a.root)
    splits = split_videos(classes, a.val_fraction, a.test_fraction, a.seed)
    skipped = write_lists(a.root, a.out, splits, list(classes), a.split, a.video_backend if a.durations else None)
    counts = ", ".join(f"{k} {sum(path not in skipped for path, _ in v)}" for k, v in splits.items())
    print(f"{len(classes)} classes ({counts}) written to {a.out}; {len(skipped)} unreadable videos left out")


if __name__ == "__main__":
    main()
