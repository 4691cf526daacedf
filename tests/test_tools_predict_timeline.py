"""tools/predict.py --timeline and folder / list input, on real h264 files and a tiny random checkpoint."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import models  # noqa: F401  (registers the VideoMamba models with timm)
from datasets import transforms
from datasets.readers import open_video
from datasets.sampling import sparse_eval_indices, trimmed_windows, window_frame_range
from tools.make_synthetic_dataset import write_video
from tools.predict import main

pytestmark = pytest.mark.usefixtures("torch_backend")

FRAMES, SIZE, CLASSES = 4, 32, 6
LABELS = [f"action {c}" for c in "uvwxyz"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("timeline")
    rng = np.random.default_rng(2)
    scenes = [rng.integers(0, 256, size=(1, 48, 64, 3)) * np.array([1, 0.3, 0.3]) for _ in range(2)]
    scenes[1] = 255 - scenes[1][..., ::-1]  # a second scene of other colours from second 2 on
    drift = np.arange(120)[:, None, None, None] * 3
    frames = np.concatenate([scenes[0] + drift[:60], scenes[1] + drift[60:]]) % 256
    write_video(root / "videos" / "long.mp4", frames.astype(np.uint8))
    write_video(root / "videos" / "short.mp4", frames[50:80].astype(np.uint8))
    (root / "videos" / "empty.mp4").write_bytes(b"")
    torch.manual_seed(0)
    model = timm.create_model("videomamba_tiny", img_size=SIZE, num_frames=FRAMES, num_classes=CLASSES, depth=2,
                              embed_dim=64)
    with torch.no_grad():
        model.head.weight.normal_(std=0.5)  # spread the classes
    torch.save({"model": model.state_dict()}, root / "tiny.pth")
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return {"root": root, "videos": root / "videos", "checkpoint": root / "tiny.pth", "labels": root / "labels.txt",
            "model": model.eval()}


def _args(files: dict[str, Path], *extra: str) -> list[str]:
    return ["--model", "videomamba_tiny", "--checkpoint", str(files["checkpoint"]), "--labels", str(files["labels"]),
            "--video_backend", "pyav", "--device", "cpu", *extra]


def _window_probs(files: dict[str, Path], window: tuple[float, float]) -> torch.Tensor:
    reader = open_video(str(files["videos"] / "long.mp4"), backend="pyav")
    first, last = window_frame_range(*window, reader.fps, reader.num_frames)
    frames = reader.get_frames(sparse_eval_indices(reader.num_frames, FRAMES, 0, 1, first, last))
    with torch.no_grad():
        return files["model"](transforms.TestTransform(SIZE, 1)(frames, 0).unsqueeze(0)).softmax(-1)[0]


def test_timeline_json_csv_png_and_table(files, tmp_path, capsys) -> None:
    video = str(files["videos"] / "long.mp4")
    flags = ["--video", video, "--timeline", "--window_seconds", "1.5", "--stride_seconds", "0.5", "--topk", "2"]
    assert main(_args(files, *flags, "--json", "--out", str(tmp_path))) == 0
    result = json.loads(capsys.readouterr().out)
    windows = trimmed_windows(4.0, 1.5, 0.5)  # 120 frames at 30 fps
    assert [(w["start"], w["end"]) for w in result["windows"]] == [(float(a), float(b)) for a, b in windows]
    assert result["labels"] == LABELS and result["views"] == {"segments": 1, "crops": 1}
    probs = np.array(result["probabilities"])
    assert probs.shape == (len(windows), CLASSES)
    for k in (0, len(windows) - 1):
        np.testing.assert_allclose(probs[k], _window_probs(files, windows[k]).numpy(), rtol=1e-4, atol=1e-6)
        top = np.argsort(-probs[k])[:2]
        assert [p["label"] for p in result["windows"][k]["predictions"]] == [LABELS[i] for i in top]
    assert np.abs(probs[0] - probs[-1]).max() > 1e-3  # the two scenes differ
    assert json.loads((tmp_path / "long.timeline.json").read_text()) == result
    with open(tmp_path / "long.timeline.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["window", "start", "end", *LABELS]
    np.testing.assert_array_equal(np.array(rows[1:], dtype=float)[:, 3:], probs)
    with Image.open(tmp_path / "long.timeline.png") as png:
        assert png.format == "PNG" and png.size == (1000, 400)
    assert main(_args(files, *flags)) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert "1x1 views of 4 frames at 32 px per window (7 windows of 1.5 s every 0.5 s)" in table[0]
    assert len(table) == 2 + len(windows)
    last = table[-1].split()
    assert last[:3] == ["6", "3.00", "4.00"] and " ".join(last[3:5]) == result["windows"][-1]["predictions"][0]["label"]


def test_folder_gives_one_line_per_video_and_lists_bad_ones(files, capsys) -> None:
    assert main(_args(files, "--folder", str(files["videos"]), "--test_num_segment", "2", "--test_num_crop", "1",
                      "--topk", "3")) == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert [Path(line.split("\t")[0]).name for line in lines] == ["long.mp4", "short.mp4"]
    fields = lines[0].split("\t")
    assert len(fields) == 1 + 2 * 3 and fields[1] in LABELS and float(fields[2]) >= float(fields[4])
    assert "predict.py: skipped" in captured.err and "empty.mp4: zero-byte file" in captured.err
    assert "1 of 3 videos could not be read" in captured.err


def test_list_with_json_gives_one_object_per_line(files, tmp_path, capsys) -> None:
    (tmp_path / "list.txt").write_text("short.mp4 0\nempty.mp4 0\nlong.mp4 1\n")
    assert main(_args(files, "--list", str(tmp_path / "list.txt"), "--prefix", str(files["videos"]), "--json",
                      "--test_num_segment", "1", "--test_num_crop", "1", "--num_workers", "2")) == 1
    objects = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [Path(o["video"]).name for o in objects] == ["short.mp4", "empty.mp4", "long.mp4"]  # input order
    assert objects[1] == {"video": str(files["videos"] / "empty.mp4"), "error": "zero-byte file"}
    assert [len(o["predictions"]) for o in (objects[0], objects[2])] == [5, 5]


def test_out_needs_timeline(files, tmp_path, capsys) -> None:
    assert main(_args(files, "--video", str(files["videos"] / "long.mp4"), "--out", str(tmp_path))) == 2
    assert "--out writes timeline files: add --timeline" in capsys.readouterr().err
