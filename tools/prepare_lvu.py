"""Turn the public LVU 1.0 task files into list files: trimmed ``videos/<youtube_id>.mp4,target,duration`` (for the
``exp/lvu/*_trim.sh`` launchers, ``--data_set LVU``) or with ``--whole_clip`` ``videos/<youtube_id>.mp4,target``
(for ``exp/lvu/run_class.sh`` / ``run_regression.sh``, ``Kinetics_sparse``). ``--split`` is the field separator:
``,`` as the launchers' ``--split ','``.

Input: ``--task_dir`` holds the task's train.csv / val.csv / test.csv (space-separated, one header line).
Classification tasks (relationship, way_speaking, scene, director, genre, writer, year) start with the label and
then the YouTube id; ``like_ratio`` lines are ``like_count dislike_count youtube_id imdb_id``; ``view_count``
lines start with the count, then the YouTube id. ``--durations`` is a file of ``youtube_id seconds`` lines
(needed for trimmed lists; with ``--whole_clip`` it is optional and, when given, still leaves out videos without one).
Regression targets are normalised as ViS4mer does:
  view_count  ln(views) − 11.76425435683139
  like_ratio  10·like / (like + dislike) − 9.138220535629456
Videos without a duration are left out and reported. Train with ``--prefix <video root>`` and ``--nb_classes 1``
for the regression tasks.
Example: python tools/prepare_lvu.py --task view_count --task_dir lvu_1.0/view_count \
             --durations lvu_durations.txt --out data/lvu/view_count
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python tools/x.py` from the repo root

CLASSIFICATION_TASKS = ("relationship", "way_speaking", "scene", "director", "genre", "writer", "year")
VIEW_COUNT_MEAN_LOG = 11.76425435683139
LIKE_RATIO_MEAN = 9.138220535629456
SPLITS = ("train", "val", "test")


def parse_task_line(task: str, fields: list[str]) -> tuple[str, str]:
    """(youtube_id, target text) of one task line; raises ``ValueError`` on a malformed line."""
    if task in CLASSIFICATION_TASKS:
        if len(fields) < 2:
            raise ValueError("expected 'label youtube_id ...'")
        return fields[1], str(int(fields[0]))
    if task == "view_count":
        if len(fields) < 2:
            raise ValueError("expected 'view_count youtube_id ...'")
        views = float(fields[0])
        if views <= 0:
            raise ValueError(f"view count must be > 0, got {fields[0]}")
        return fields[1], repr(math.log(views) - VIEW_COUNT_MEAN_LOG)
    if task == "like_ratio":
        if len(fields) < 3:
            raise ValueError("expected 'like_count dislike_count youtube_id imdb_id'")
        like, dislike = float(fields[0]), float(fields[1])
        if like < 0 or dislike < 0 or like + dislike == 0:
            raise ValueError(f"bad like/dislike counts {fields[0]} {fields[1]}")
        return fields[2], repr(10 * like / (like + dislike) - LIKE_RATIO_MEAN)
    raise ValueError(f"unknown LVU task {task!r}")


def read_durations(path: Path) -> dict[str, float]:
    """``{youtube_id: seconds}`` from ``youtube_id seconds`` lines."""
    durations = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        try:
            if len(fields) != 2:
                raise ValueError("expected 'youtube_id seconds'")
            durations[fields[0]] = float(fields[1])
        except ValueError as e:
            raise ValueError(f"{path}:{number}: {e}: {line!r}") from None
    return durations


def convert_split(task: str, task_file: Path, durations: dict[str, float] | None, video_dir: str,
                  video_ext: str, split: str = ",", whole_clip: bool = False) -> tuple[list[str], list[str]]:
    """(list lines, youtube ids left out for lack of a duration) of one task file: trimmed lines
    ``path<split>target<split>duration``, or with ``whole_clip`` ``path<split>target``; ``durations`` None keeps
    every video (whole clips only)."""
    lines, missing = [], []
    rows = task_file.read_text().splitlines()
    for number, line in enumerate(rows[1:], start=2):  # line 1 is the header
        if not line.strip():
            continue
        try:
            video_id, target = parse_task_line(task, line.split())
        except ValueError as e:
            raise ValueError(f"{task_file}:{number}: {e}: {line!r}") from None
        if durations is not None and video_id not in durations:
            missing.append(video_id)
            continue
        fields = [f"{video_dir}/{video_id}{video_ext}", target]
        if not whole_clip:
            fields.append(f"{durations[video_id]:g}")
        lines.append(split.join(fields) + "\n")
    return lines, missing


def prepare(task: str, task_dir: Path, durations_file: Path | None, out: Path, video_dir: str = "videos",
            video_ext: str = ".mp4", split: str = ",", whole_clip: bool = False) -> dict[str, list[str]]:
    """Write ``out/{train,val,test}.csv``; returns the left-out YouTube ids per split."""
    if task not in CLASSIFICATION_TASKS + ("view_count", "like_ratio"):
        raise ValueError(f"unknown LVU task {task!r}")
    if durations_file is None and not whole_clip:
        raise ValueError("trimmed lists need --durations (or write whole-clip lists with --whole_clip)")
    durations = read_durations(durations_file) if durations_file is not None else None
    out.mkdir(parents=True, exist_ok=True)
    missing = {}
    for name in SPLITS:
        task_file = task_dir / f"{name}.csv"
        if not task_file.is_file():
            raise FileNotFoundError(f"{task_file}: LVU task file not found")
        lines, missing[name] = convert_split(task, task_file, durations, video_dir, video_ext, split, whole_clip)
        (out / f"{name}.csv").write_text("".join(lines))
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=CLASSIFICATION_TASKS + ("view_count", "like_ratio"))
    parser.add_argument("--task_dir", required=True, type=Path, help="LVU 1.0 folder of the task")
    parser.add_argument("--durations", type=Path, default=None,
                        help="'youtube_id seconds' lines (required for trimmed lists)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--video_dir", default="videos", help="folder of the videos inside --prefix")
    parser.add_argument("--video_ext", default=".mp4")
    parser.add_argument("--split", default=",", help="field separator of the lists (the launchers pass ',')")
    parser.add_argument("--whole_clip", action="store_true",
                        help="'path target' lines for the whole-clip launchers instead of trimmed lines")
    a = parser.parse_args()
    if a.durations is None and not a.whole_clip:
        parser.error("--durations is required for trimmed lists (or pass --whole_clip)")
    missing = prepare(a.task, a.task_dir, a.durations, a.out, a.video_dir, a.video_ext, a.split, a.whole_clip)
    report = ", ".join(f"{k}: {len(v)}" for k, v in missing.items())
    print(f"wrote {a.out}/{{train,val,test}}.csv; videos without a duration left out ({report})")
    for split, ids in missing.items():
        if ids:
            print(f"  {split}: {' '.join(ids)}")


if __name__ == "__main__":
    main()
