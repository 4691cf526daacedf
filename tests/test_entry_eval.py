"""``--eval`` end to end on a test list with broken videos (zero-byte, text renamed .mp4, cut in half, missing): they
are counted as missing and named in the log while every readable video is scored, and ``torchrun
--nproc_per_node 2 --eval`` writes the same per-video predictions as one process."""
from __future__ import annotations

import csv
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import timm
import torch

import models  # noqa: F401  (registers the models)
from entry_runs import run
from tools.make_synthetic_dataset import make_dataset

BROKEN = ("zero.mp4", "text.mp4", "cut.mp4", "missing.mp4")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    data = make_dataset(root / "data", num_train=2, num_val=1, num_test=4, size=32, frames=8)
    whole = (data / "videos" / "test_00000.mp4").read_bytes()
    (data / "videos" / "zero.mp4").write_bytes(b"")
    (data / "videos" / "text.mp4").write_text("not a video\n")
    (data / "videos" / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    lines = (data / "test.csv").read_text().splitlines()
    broken = [f"videos/{name} {k}" for k, name in enumerate(BROKEN)]
    (data / "test.csv").write_text("\n".join([lines[0], broken[0], broken[1], *lines[1:3], *broken[2:], lines[3]])
                                   + "\n")
    torch.manual_seed(0)
    model = timm.create_model("videomamba_tiny", depth=2, embed_dim=32, num_frames=4, kernel_size=1, img_size=32,
                              num_classes=4)
    torch.save({"model": model.state_dict()}, root / "weights.pth")
    argv = lambda out: ["--model", "videomamba_tiny", "--depth", "2", "--embed_dim", "32", "--num_frames", "4",  # noqa
                        "--tubelet_size", "1", "--input_size", "32", "--short_side_size", "32", "--device", "cpu",
                        "--nb_classes", "4", "--data_set", "Kinetics_sparse", "--data_path", str(data), "--prefix",
                        str(data), "--eval", "--disable_eval_during_finetuning", "--finetune",
                        str(root / "weights.pth"), "--test_num_segment", "2", "--test_num_crop", "2",
                        "--batch_size", "1", "--num_workers", "1", "--output_dir", str(root / out)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        one = pool.submit(run, "run_class_finetuning.py", argv("one"), root / "one.log")
        two = pool.submit(run, "run_class_finetuning.py", argv("two"), root / "two.log", nproc=2)
        assert one.result() == 0, (root / "one.log").read_text()[-3000:]
        assert two.result() == 0, (root / "two.log").read_text()[-3000:]
    return root


def test_broken_videos_are_missing_and_named_while_readable_ones_are_scored(evaluated):
    final = json.loads((evaluated / "one" / "log.txt").read_text().splitlines()[-1])
    assert final["test_num_videos"] == 4 and final["test_missing"] == 4
    rows = list(csv.DictReader(open(evaluated / "one" / "test_videos.csv")))
    assert [int(r["video_id"]) for r in rows] == [0, 3, 4, 7]  # the readable lines of test.csv
    assert all(r["views"] == "4" for r in rows)  # 2 segments × 2 crops each
    log = (evaluated / "one" / "train.log").read_text()
    summary = next(line for line in log.splitlines() if "could not be decoded and are not scored" in line)
    assert all(f"videos/{name}" in summary for name in BROKEN)
    assert not any(f"test_0000{k}" in summary for k in range(4))
    # --eval records its flags beside a training run's args.json, never over it
    assert json.loads((evaluated / "one" / "eval_args.json").read_text())["eval"] is True
    assert not (evaluated / "one" / "args.json").exists()


def test_two_processes_write_the_same_per_video_predictions_as_one(evaluated):
    one = (evaluated / "one" / "test_videos.csv").read_text()
    assert (evaluated / "two" / "test_videos.csv").read_text() == one
    finals = [json.loads((evaluated / d / "log.txt").read_text().splitlines()[-1]) for d in ("one", "two")]
    assert finals[0]["Final top-1"] == finals[1]["Final top-1"] and finals[1]["test_missing"] == 4


def test_per_class_report_of_the_merged_predictions(evaluated):
    """``--eval`` writes ``test_per_class.json`` (and the PNG) from the merged per-video predictions on rank 0: the
    confusion matrix and accuracies of ``test_videos.csv``'s label / pred columns, the same with two processes."""
    rows = list(csv.DictReader(open(evaluated / "one" / "test_videos.csv")))
    labels, preds = [int(r["label"]) for r in rows], [int(r["pred"]) for r in rows]
    matrix = [[0] * 4 for _ in range(4)]
    for label, pred in zip(labels, preds):
        matrix[label][pred] += 1
    accuracy = {c: 100.0 * matrix[c][c] / sum(matrix[c]) for c in set(labels)}
    reports = []
    for run_dir in (evaluated / "one", evaluated / "two"):
        report = json.loads((run_dir / "test_per_class.json").read_text())
        assert report["confusion_matrix"] == matrix and report["num_videos"] == 4
        assert [c["accuracy"] for c in report["per_class"]] == [accuracy.get(c) for c in range(4)]
        assert report["mean_class_accuracy"] == pytest.approx(sum(accuracy.values()) / len(accuracy))
        final = json.loads((run_dir / "log.txt").read_text().splitlines()[-1])
        assert final["test_mean_class_acc"] == report["mean_class_accuracy"]
        assert report["top1"] == pytest.approx(final["Final top-1"])
        assert (run_dir / "test_per_class.png").is_file()
        reports.append(report)
    assert reports[0] == reports[1]
    assert "mean class accuracy" in (evaluated / "one" / "train.log").read_text()
