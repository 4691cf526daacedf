"""Edge cases of real runs (the entry script in a subprocess, as a user runs it): a validation where no video can be
decoded (one process, and two under torchrun where only one rank's shard is unreadable) and --max_bad_fraction
counted over the whole run with DataLoader workers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from entry_runs import run
from tools.make_synthetic_dataset import make_dataset

TINY = ["--model", "videomamba_tiny", "--depth", "1", "--embed_dim", "32", "--num_frames", "4", "--tubelet_size", "1",
        "--input_size", "32", "--short_side_size", "32", "--device", "cpu", "--nb_classes", "4", "--data_set",
        "Kinetics_sparse", "--batch_size", "1", "--num_sample", "1", "--warmup_epochs", "0", "--lr", "1e-3",
        "--no_lr_scale", "--aa", "none", "--reprob", "0", "--mixup", "0", "--cutmix", "0", "--test_num_segment", "1",
        "--test_num_crop", "1", "--print_freq", "100"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = make_dataset(tmp_path_factory.mktemp("edge_data"), num_train=10, num_val=4, num_test=2, size=32,
                        frames=8)
    (root / "broken").mkdir()
    for k in range(4):
        (root / "broken" / f"clip_{k}.mp4").write_bytes(b"\x00\x01 not a video " * 40)
    return root


def lists(root: Path, data: Path, bad_train: tuple[int, ...] = (), bad_val: tuple[int, ...] = ()) -> Path:
    """A --data_path under ``root``: the data set's lists with the train / val lines of the given numbers pointing
    at undecodable files (absolute paths, so --prefix is the data set's folder)."""
    root.mkdir(parents=True)
    for name, bad in (("train", bad_train), ("val", bad_val), ("test", ())):
        lines = (data / f"{name}.csv").read_text().splitlines()
        for k, n in enumerate(bad):
            lines[n] = f"{data / 'broken' / f'clip_{k}.mp4'} {lines[n].split()[1]}"
        (root / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return root


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]


def test_validation_without_a_decodable_video_is_no_validation(data, tmp_path):
    """Every validation video unreadable: training goes on, the epoch warns that it has no validation, no
    checkpoint-best is written, and --test_best falls back to the final weights."""
    argv = [*TINY, "--data_path", str(lists(tmp_path / "lists", data, bad_val=(0, 1, 2, 3))), "--prefix", str(data),
            "--output_dir", str(tmp_path / "out"), "--test_best", "--epochs", "1", "--num_workers", "0",
            "--batch_size", "2"]
    assert run("run_class_finetuning.py", argv, tmp_path / "run.log") == 0, (tmp_path / "run.log").read_text()[-3000:]
    log = (tmp_path / "run.log").read_text()
    assert "epoch 0: no validation video could be decoded (4 missing), so this epoch has no validation: " \
           "checkpoint-best and the best acc1 are left as they were" in log
    assert "--test_best: no checkpoint-best to test; testing the final weights" in log
    first = records(tmp_path / "out")[0]
    assert first["epoch"] == 0 and first["val_num_samples"] == 0 and first["val_missing"] == 4
    assert "val_acc1" not in first
    assert not (tmp_path / "out" / "checkpoint-best.pth").exists()
    assert (tmp_path / "out" / "checkpoint-latest.pth").exists()


def test_two_ranks_validate_when_every_video_of_one_rank_is_unreadable(data, tmp_path):
    """--dist_eval shards val.csv by rank (rank r: lines r, r + 2): lines 1 and 3 unreadable leaves rank 1 nothing
    to score; the ranks still reduce the same statistics, and the epoch is validated on rank 0's two videos."""
    argv = [*TINY, "--data_path", str(lists(tmp_path / "lists", data, bad_val=(1, 3))), "--prefix", str(data),
            "--output_dir", str(tmp_path / "out"), "--epochs", "1", "--num_workers", "0", "--dist_eval"]
    status = run("run_class_finetuning.py", argv, tmp_path / "run.log", nproc=2, timeout=180)
    assert status == 0, (tmp_path / "run.log").read_text()[-3000:]
    first = records(tmp_path / "out")[0]
    assert first["val_num_samples"] == 2 and first["val_missing"] == 2 and "val_acc1" in first
    assert (tmp_path / "out" / "checkpoint-best.pth").exists()


def test_max_bad_fraction_counts_every_worker_together(data, tmp_path):
    """2 of 10 training files unreadable with --max_bad_fraction 0.1 (1 allowed) and 2 DataLoader workers, which
    meet one bad file each: the run stops, naming both."""
    argv = [*TINY, "--data_path", str(lists(tmp_path / "lists", data, bad_train=(2, 7))), "--prefix", str(data),
            "--output_dir", str(tmp_path / "out"), "--epochs", "1", "--num_workers", "2",
            "--disable_eval_during_finetuning", "--max_bad_fraction", "0.1"]
    assert run("run_class_finetuning.py", argv, tmp_path / "run.log") == 1
    log = (tmp_path / "run.log").read_text()
    error = log[log.index("\nerror: ") + 1:]
    assert error.startswith("error: 2 of 10 files are unreadable, more than --max_bad_fraction 0.1 allows")
    for k in range(2):
        assert f"{data / 'broken' / f'clip_{k}.mp4'} (" in error
    assert "Traceback" not in log
