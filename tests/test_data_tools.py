"""Tools: the synthetic dataset (real h264, read by both backends, classes told apart only by motion),
build_list and prepare_lvu outputs."""
import importlib.util
import math

import av
import numpy as np
import pytest

from datasets.readers import open_video
from datasets.lists import read_list
from tools import build_list, prepare_lvu
from tools.make_synthetic_dataset import make_dataset, write_video

BACKENDS = ("decord", "pyav") if importlib.util.find_spec("decord") else ("pyav",)


def shape_centroid(frame):
    """Centre (x, y) of the pixels far from the frame's median colour (the moving square)."""
    far = np.abs(frame.astype(int) - np.median(frame.reshape(-1, 3), axis=0)).sum(-1) > 150
    ys, xs = np.nonzero(far)
    return xs.mean(), ys.mean()


def test_synthetic_motion_dataset(tmp_path):
    root = make_dataset(tmp_path, "motion", num_train=8, num_val=4, num_test=4, size=64, frames=12, seed=1)
    lines = (root / "train.csv").read_text().splitlines()
    assert len(lines) == 8 and [int(line.split()[1]) for line in lines] == [0, 1, 2, 3] * 2
    directions = {0: (1, 0), 1: (-1, 0), 2: (0, 1), 3: (0, -1)}
    first_positions = []
    for line in lines:
        rel, label = line.split()
        clips = [open_video(str(root / rel), b).get_frames(list(range(12))) for b in BACKENDS]
        assert clips[0].shape == (12, 64, 64, 3)
        for other in clips[1:]:
            np.testing.assert_array_equal(clips[0], other)
        (x0, y0), (x1, y1) = shape_centroid(clips[0][0]), shape_centroid(clips[0][-1])
        dx, dy = directions[int(label)]
        assert (x1 - x0) * dx > 5 or (y1 - y0) * dy > 5
        assert abs((x1 - x0) * dy) < 2 and abs((y1 - y0) * dx) < 2
        first_positions.append((x0, y0))
    assert len({round(x) for x, _ in first_positions}) > 4  # random start positions
    assert (root / "val.csv").read_text().count("\n") == 4 and (root / "test.csv").read_text().count("\n") == 4


@pytest.mark.parametrize("crf, lossless", [(0, True), (18, False)])
def test_write_video_crf0_is_lossless(tmp_path, crf, lossless):
    """crf 0 decodes to exactly the yuv420p round trip of the input (the demo's data relies on it); crf 18 does not."""
    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    yuv_round_trip = np.stack([av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p")
                               .to_ndarray(format="rgb24") for f in frames])
    write_video(tmp_path / "v.mp4", frames, crf=crf)
    with av.open(str(tmp_path / "v.mp4")) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert np.array_equal(decoded, yuv_round_trip) == lossless


def test_build_list(tmp_path):
    root = tmp_path / "tree"
    frames = np.zeros((10, 16, 16, 3), dtype=np.uint8)
    for cls, count in (("walk", 5), ("run", 5), ("empty", 0)):
        (root / cls).mkdir(parents=True)
        for k in range(count):
            write_video(root / cls / f"{cls}{k}.mp4", frames, fps=5)
    (root / "run" / "notes.txt").write_text("not a video")
    (root / "walk" / "walk4.mp4").write_bytes(b"broken")
    classes = build_list.scan_tree(root)
    assert classes == {"run": [f"run/run{k}.mp4" for k in range(5)], "walk": [f"walk/walk{k}.mp4" for k in range(5)]}
    splits = build_list.split_videos(classes, 0.2, 0.2, seed=0)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(p for s in splits.values() for p, _ in s) == sorted(classes["run"] + classes["walk"])
    assert all(label == (1 if p.startswith("walk") else 0) for s in splits.values() for p, label in s)
    skipped = build_list.write_lists(root, tmp_path / "lists", splits, list(classes), ",", BACKENDS[-1])
    assert list(skipped) == ["walk/walk4.mp4"]
    assert (tmp_path / "lists" / "classes.csv").read_text() == "0,run\n1,walk\n"
    rows = [r.split(",") for s in ("train", "val", "test")
            for r in (tmp_path / "lists" / f"{s}.csv").read_text().splitlines()]
    assert len(rows) == 9 and all(r[2] == "2.000" for r in rows)  # 10 frames at 5 fps
    assert build_list.split_videos(classes, 0.2, 0.0, seed=0)["test"] == build_list.split_videos(
        classes, 0.2, 0.0, seed=0)["val"]
    with pytest.raises(ValueError, match="no class folders"):
        build_list.scan_tree(root / "empty")


def test_prepare_lvu(tmp_path):
    for task, rows in (("view_count", ["view_count youtube_id imdb_id", "1000 aaa tt1", "5 bbb tt2", "7 zzz tt3"]),
                       ("like_ratio", ["like_count dislike_count youtube_id imdb_id", "90 10 aaa tt1", "1 0 bbb tt2"]),
                       ("genre", ["genre youtube_id imdb_id", "3 aaa tt1", "0 bbb tt2"])):
        task_dir = tmp_path / task
        task_dir.mkdir()
        for split in ("train", "val", "test"):
            (task_dir / f"{split}.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "durations.txt").write_text("aaa 125.5\nbbb 40\n")
    missing = prepare_lvu.prepare("view_count", tmp_path / "view_count", tmp_path / "durations.txt", tmp_path / "vc")
    assert missing == {"train": ["zzz"], "val": ["zzz"], "test": ["zzz"]}
    lines = [line.split(",") for line in (tmp_path / "vc" / "train.csv").read_text().splitlines()]
    assert [(p, d) for p, _, d in lines] == [("videos/aaa.mp4", "125.5"), ("videos/bbb.mp4", "40")]
    assert float(lines[0][1]) == pytest.approx(math.log(1000) - 11.76425435683139, abs=1e-12)
    assert float(lines[1][1]) == pytest.approx(math.log(5) - 11.76425435683139, abs=1e-12)
    prepare_lvu.prepare("like_ratio", tmp_path / "like_ratio", tmp_path / "durations.txt", tmp_path / "lr")
    values = [float(line.split(",")[1]) for line in (tmp_path / "lr" / "val.csv").read_text().splitlines()]
    assert values == pytest.approx([9 - 9.138220535629456, 10 - 9.138220535629456], abs=1e-12)
    prepare_lvu.prepare("genre", tmp_path / "genre", tmp_path / "durations.txt", tmp_path / "g", "clips", ".mkv")
    assert (tmp_path / "g" / "test.csv").read_text() == "clips/aaa.mkv,3,125.5\nclips/bbb.mkv,0,40\n"
    # the lists parse as the launchers read them: trimmed with --split ',', whole clips for Kinetics_sparse
    assert [e.duration for e in read_list(tmp_path / "g" / "test.csv", "trimmed", ",")] == [125.5, 40.0]
    prepare_lvu.prepare("genre", tmp_path / "genre", None, tmp_path / "w", whole_clip=True)
    assert (tmp_path / "w" / "train.csv").read_text() == "videos/aaa.mp4,3\nvideos/bbb.mp4,0\n"
    assert [e.label for e in read_list(tmp_path / "w" / "train.csv", "classification", ",")] == [3, 0]
    with pytest.raises(ValueError, match="trimmed lists need --durations"):
        prepare_lvu.prepare("genre", tmp_path / "genre", None, tmp_path / "t")
    (tmp_path / "genre" / "val.csv").write_text("genre youtube_id imdb_id\n3 aaa\nx bbb tt2\n")
    with pytest.raises(ValueError, match=r"val.csv:3:"):
        prepare_lvu.prepare("genre", tmp_path / "genre", tmp_path / "durations.txt", tmp_path / "g")
