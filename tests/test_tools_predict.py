"""tools/predict.py on a real encoded synthetic video and a randomly initialised tiny checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import models  # noqa: F401  (registers the VideoMamba models with timm)
from datasets.readers import open_video
from datasets.sampling import sparse_eval_indices
from datasets import transforms
from tools.make_synthetic_dataset import write_video
from tools.checkpoint_model import CheckpointError, infer_shape, load_model
from tools.predict import main

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES, FRAMES, SIZE = 7, 4, 32
LABELS = [f"class_{c}" for c in "abcdefg"]


@pytest.fixture(autouse=True)
def _torch_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDEOMAMBA_SCAN_BACKEND", "torch")  # no C++ build needed for these tiny models


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(1, 48, 64, 3))
    drift = np.arange(30)[:, None, None, None] * 6
    write_video(root / "clip.mp4", ((base + drift) % 256).astype(np.uint8))
    torch.manual_seed(0)
    model = timm.create_model("videomamba_tiny", img_size=SIZE, num_frames=FRAMES, num_classes=NUM_CLASSES, depth=2)
    with torch.no_grad():
        model.head.weight.normal_(std=0.5)  # spread the classes so the ranking is meaningful
    torch.save({"model": model.state_dict(), "epoch": 3}, root / "tiny.pth")
    regressor = timm.create_model("videomamba_tiny", img_size=SIZE, num_frames=FRAMES, num_classes=1, depth=1)
    torch.save({"model": regressor.state_dict()}, root / "regression.pth")
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (root / "not_a_video.mp4").write_text("hello")
    return {"video": root / "clip.mp4", "checkpoint": root / "tiny.pth", "labels": root / "labels.txt",
            "bad_video": root / "not_a_video.mp4", "root": root}


def _args(files: dict[str, Path], *extra: str) -> list[str]:
    return ["--model", "videomamba_tiny", "--checkpoint", str(files["checkpoint"]), "--video", str(files["video"]),
            "--device", "cpu", *extra]


def _expected_probs(files: dict[str, Path], segments: int, crops: int) -> torch.Tensor:
    """Mean softmax over all views, computed directly from the model and the data pipeline's building blocks."""
    model = timm.create_model("videomamba_tiny", img_size=SIZE, num_frames=FRAMES, num_classes=NUM_CLASSES, depth=2)
    model.load_state_dict(torch.load(files["checkpoint"])["model"])
    model.eval()
    reader = open_video(str(files["video"]), backend="pyav")
    transform = transforms.TestTransform(SIZE, crops)
    views = [transform(reader.get_frames(sparse_eval_indices(reader.num_frames, FRAMES, s, segments)), c)
             for s in range(segments) for c in range(crops)]
    with torch.no_grad():
        return model(torch.stack(views)).softmax(-1).mean(0)


def test_json_top5_matches_a_direct_model_call(files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    code = main(_args(files, "--labels", str(files["labels"]), "--json", "--test_num_segment", "3",
                      "--test_num_crop", "2", "--video_backend", "pyav", "--batch_size", "4"))
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"video", "checkpoint", "model", "num_frames", "input_size", "views", "predictions"}
    assert result["views"] == {"segments": 3, "crops": 2}
    assert (result["num_frames"], result["input_size"]) == (FRAMES, SIZE)
    rows = result["predictions"]
    assert [row["rank"] for row in rows] == [1, 2, 3, 4, 5]
    assert all(set(row) == {"rank", "index", "label", "probability"} for row in rows)
    probs = [row["probability"] for row in rows]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    expected = _expected_probs(files, segments=3, crops=2)
    values, indices = expected.topk(5)
    assert [row["index"] for row in rows] == indices.tolist()
    assert [row["label"] for row in rows] == [LABELS[i] for i in indices.tolist()]
    np.testing.assert_allclose(probs, values.numpy(), rtol=1e-4, atol=1e-6)


def test_cli_script_prints_a_top5_table(files: dict[str, Path]) -> None:
    env = {**os.environ, "VIDEOMAMBA_SCAN_BACKEND": "torch"}
    result = subprocess.run([sys.executable, "tools/predict.py", *_args(files, "--labels", str(files["labels"]))],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "4x3 views of 4 frames at 32 px" in lines[0]
    rows = [line.split() for line in lines[1:]]
    assert [row[0] for row in rows] == ["1.", "2.", "3.", "4.", "5."]
    assert all(row[1] in LABELS for row in rows) and len({row[1] for row in rows}) == 5
    probs = [float(row[2]) for row in rows]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-3
    expected = _expected_probs(files, segments=4, crops=3)
    assert [row[1] for row in rows] == [LABELS[i] for i in expected.topk(5).indices.tolist()]


def test_frames_and_resolution_can_differ_from_the_checkpoint(files: dict[str, Path],
                                                             capsys: pytest.CaptureFixture) -> None:
    assert main(_args(files, "--json", "--num_frames", "6", "--input_size", "48", "--test_num_segment", "1",
                      "--test_num_crop", "1", "--topk", "3")) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["num_frames"], result["input_size"]) == (6, 48)
    assert [row["label"] for row in result["predictions"]] == [str(row["index"]) for row in result["predictions"]]
    assert len(result["predictions"]) == 3


@pytest.mark.parametrize("case", ["video", "checkpoint", "labels", "label_count", "undecodable", "short_side",
                                  "not_checkpoint", "regression"])
def test_bad_input_is_a_clear_error(files: dict[str, Path], capsys: pytest.CaptureFixture, case: str) -> None:
    root = files["root"]
    args = {
        "video": _args(files)[:5] + [str(root / "missing.mp4")],
        "checkpoint": ["--model", "videomamba_tiny", "--checkpoint", str(root / "missing.pth"), "--video",
                       str(files["video"])],
        "labels": _args(files, "--labels", str(root / "missing.txt")),
        "label_count": _args(files, "--labels", str(files["checkpoint"].with_name("short.txt"))),
        "undecodable": _args(files)[:5] + [str(files["bad_video"])],
        "short_side": _args(files, "--short_side_size", "40"),
        "regression": ["--model", "videomamba_tiny", "--checkpoint", str(root / "regression.pth"), "--video",
                       str(files["video"])],
        "not_checkpoint": ["--model", "videomamba_tiny", "--checkpoint", str(files["labels"]), "--video",
                           str(files["video"])],
    }[case]
    (root / "short.txt").write_text("only\ntwo\n")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "predict.py: error:" in err
    needle = {"video": "missing.mp4", "checkpoint": "missing.pth", "labels": "missing.txt",
              "label_count": "2 class names for a checkpoint with 7 classes", "undecodable": "not_a_video.mp4",
              "short_side": "--short_side_size 40", "not_checkpoint": "labels.txt is not a checkpoint",
              "regression": "regression checkpoint"}[case]
    assert needle in err


def test_infer_shape_reads_tubelet_frames_and_resolution() -> None:
    model = timm.create_model("videomamba_small", img_size=48, num_frames=8, kernel_size=2, num_classes=3, depth=3,
                              embed_dim=96)
    shape = infer_shape(model.state_dict(), "m.pth")
    assert (shape.embed_dim, shape.depth, shape.num_classes) == (96, 3, 3)
    assert (shape.kernel_size, shape.num_frames, shape.img_size) == (2, 8, 48)


def test_load_model_takes_the_patch_size_and_refuses_another_registered_size(tmp_path) -> None:
    torch.manual_seed(0)
    model = timm.create_model("videomamba_tiny", img_size=32, patch_size=8, num_frames=4, num_classes=3, depth=2,
                              embed_dim=32).eval()
    torch.save({"model": model.state_dict()}, tmp_path / "p8.pth")
    loaded, shape = load_model("videomamba_small", tmp_path / "p8.pth")  # not a registered size: any name loads
    assert (shape.patch_size, shape.img_size) == (8, 32)
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    tiny = timm.create_model("videomamba_tiny", img_size=32, num_frames=4, num_classes=3)  # depth 24, width 192
    torch.save({"model": tiny.state_dict()}, tmp_path / "ti.pth")
    with pytest.raises(CheckpointError, match="a videomamba_tiny checkpoint \\(depth 24, width 192\\), not --model "
                                              "videomamba_middle"):
        load_model("videomamba_middle", tmp_path / "ti.pth")


def test_per_class_report_of_a_labelled_list(files: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    """``--list`` with true classes and ``--per_class``: the JSON (and PNG) holds the confusion matrix and
    accuracies of the top-1 predictions, which equal a direct model call; unreadable videos are skipped."""
    rng = np.random.default_rng(1)
    for k in (1, 2):
        write_video(tmp_path / f"v{k}.mp4", rng.integers(0, 256, size=(30, 48, 64, 3), dtype=np.uint8))
    (tmp_path / "clip.mp4").write_bytes(files["video"].read_bytes())
    (tmp_path / "bad.mp4").write_text("not a video")
    names = ["clip.mp4", "v1.mp4", "v2.mp4"]
    preds = [int(_expected_probs({**files, "video": tmp_path / n}, 1, 1).argmax()) for n in names]
    other = (preds[0] + 1) % NUM_CLASSES
    labels = [preds[0], preds[0] if preds[1] != preds[0] else other, (preds[2] + 1) % NUM_CLASSES]
    lines = [f"{n} {label}" for n, label in zip(names, labels)] + ["bad.mp4 3"]
    (tmp_path / "test.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "report" / "per_class.json"
    argv = ["--model", "videomamba_tiny", "--checkpoint", str(files["checkpoint"]), "--list",
            str(tmp_path / "test.csv"), "--prefix", str(tmp_path), "--labels", str(files["labels"]),
            "--test_num_segment", "1", "--test_num_crop", "1", "--video_backend", "pyav", "--device", "cpu",
            "--per_class", str(out)]
    assert main(argv) == 1  # one video could not be read
    stderr = capsys.readouterr().err
    report = json.loads(out.read_text())
    matrix = [[0] * NUM_CLASSES for _ in range(NUM_CLASSES)]
    for label, pred in zip(labels, preds):
        matrix[label][pred] += 1
    assert report["confusion_matrix"] == matrix
    assert (report["num_videos"], report["skipped_videos"], report["num_classes"]) == (3, 1, NUM_CLASSES)
    per_class = {c: [p == c for label, p in zip(labels, preds) if label == c] for c in set(labels)}
    accuracy = {c: 100.0 * sum(hits) / len(hits) for c, hits in per_class.items()}
    assert [c["name"] for c in report["per_class"]] == LABELS
    assert [c["accuracy"] for c in report["per_class"]] == [accuracy.get(c) for c in range(NUM_CLASSES)]
    assert report["mean_class_accuracy"] == pytest.approx(sum(accuracy.values()) / len(accuracy))
    assert report["top1"] == pytest.approx(100.0 / 3)  # only the first video is right
    assert out.with_suffix(".png").is_file()
    assert f"mean class accuracy {report['mean_class_accuracy']:.2f}%" in stderr
    assert "skipped" in stderr and "bad.mp4" in stderr


@pytest.mark.parametrize("case", ["no_list", "no_labels", "label_range"])
def test_per_class_needs_a_list_with_true_classes(files: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture, case: str) -> None:
    lists = {"no_labels": "clip.mp4 0.5\n", "label_range": "clip.mp4 9\n"}
    (tmp_path / "list.csv").write_text(lists.get(case, "clip.mp4 1\n"))
    source = (["--video", str(files["video"])] if case == "no_list"
              else ["--list", str(tmp_path / "list.csv"), "--prefix", str(files["root"])])
    argv = ["--model", "videomamba_tiny", "--checkpoint", str(files["checkpoint"]), *source, "--device", "cpu",
            "--per_class", str(tmp_path / "r.json")]
    assert main(argv) == 2
    needle = {"no_list": "--per_class scores the videos of a --list", "no_labels": "has no integer label field",
              "label_range": "has label 9, not a class of the checkpoint (0 to 6)"}[case]
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
