"""tools/plot_logs.py: exact series parsed from our log.txt and the official formats (plain-text and final-result
lines skipped, a resumed epoch's later record kept, official regression val_loss as MSE), the PNG drawn by a real
subprocess at the requested size with every run's colour, and the one-line error when matplotlib is missing."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.plot_logs import Run, panels, parse_log

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "plot_logs.py"

OURS = [  # our engines/fit.py records; the run was resumed after epoch 1, so epoch 2 is logged twice
    {"train_loss": 1.40, "train_lr": 1e-4, "train_grad_norm": 2.0, "val_loss": 1.3, "val_acc1": 25.0, "val_acc5": 100.0,
     "epoch": 0},
    {"train_loss": 1.20, "train_lr": 5e-4, "val_loss": 1.1, "val_acc1": 40.0, "val_acc5": 100.0, "epoch": 1},
    {"train_loss": 9.99, "train_lr": 4e-4, "val_loss": 9.9, "val_acc1": 1.0, "val_acc5": 100.0, "epoch": 2},
    {"train_loss": 1.00, "train_lr": 4e-4, "val_loss": 0.9, "val_acc1": 62.5, "val_acc5": 100.0, "epoch": 2},
    {"train_loss": 0.80, "train_lr": 2e-4, "val_loss": 0.8, "val_acc1": 60.0, "val_acc5": 100.0, "epoch": 3},
    {"test_acc1": 59.0, "test_acc5": 100.0, "test_num_videos": 4},
]
OFFICIAL = [  # run_class_finetuning.py: train_/val_ stats, epoch, n_parameters; then the final test lines
    {"train_lr": 2e-4, "train_min_lr": 3e-6, "train_loss": 5.9, "train_class_acc": 0.01, "train_loss_scale": 65536.0,
     "train_weight_decay": 0.05, "train_grad_norm": 3.5, "val_loss": 5.5, "val_acc1": 2.5, "val_acc5": 9.0,
     "epoch": 0, "n_parameters": 7000000},
    {"train_lr": 4e-4, "train_min_lr": 6e-6, "train_loss": 5.1, "train_class_acc": 0.05, "train_loss_scale": 65536.0,
     "train_weight_decay": 0.05, "train_grad_norm": 3.1, "val_loss": 4.4, "val_acc1": 12.5, "val_acc5": 30.0,
     "epoch": 1, "n_parameters": 7000000},
    "Accuracy of the network on the 19796 test videos: Top-1: 12.40%, Top-5: 29.90%",
    {"Final top-1": 12.4, "Final Top-5": 29.9},
]
OFFICIAL_REGRESSION = [  # run_regression_finetuning.py: validation logs only its MSE criterion as val_loss
    {"train_lr": 1e-4, "train_min_lr": 1e-6, "train_loss": 2.0, "val_loss": 1.5, "epoch": 0, "n_parameters": 25},
    {"train_lr": 1e-4, "train_min_lr": 1e-6, "train_loss": 1.0, "val_loss": 1.25, "epoch": 1, "n_parameters": 25},
    {"Final MSE Loss": 1.3},
]


def write_log(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture
def logs(tmp_path):
    return [write_log(tmp_path / "mine" / "log.txt", OURS), write_log(tmp_path / "official" / "log.txt", OFFICIAL),
            write_log(tmp_path / "lvu" / "log.txt", OFFICIAL_REGRESSION)]


def lines_of(records):
    return [r if isinstance(r, str) else json.dumps(r) for r in records]


def test_parse_ours_and_official():
    ours = parse_log(lines_of(OURS), "mine")
    assert ours.series == {
        "train_loss": {0: 1.4, 1: 1.2, 2: 1.0, 3: 0.8}, "train_lr": {0: 1e-4, 1: 5e-4, 2: 4e-4, 3: 2e-4},
        "val_acc1": {0: 25.0, 1: 40.0, 2: 62.5, 3: 60.0}}
    assert (ours.skipped_text, ours.skipped_records) == (0, 1)
    official = parse_log(lines_of(OFFICIAL) + ["", "not json {", "[1, 2]"], "official")
    assert official.series == {"train_loss": {0: 5.9, 1: 5.1}, "train_lr": {0: 2e-4, 1: 4e-4},
                               "val_acc1": {0: 2.5, 1: 12.5}}
    assert (official.skipped_text, official.skipped_records) == (3, 1)
    regression = parse_log(lines_of(OFFICIAL_REGRESSION), "lvu")
    assert regression.series["val_mse"] == {0: 1.5, 1: 1.25} and "val_acc1" not in regression.series
    ours_regression = parse_log([json.dumps({"train_loss": 3.0, "val_loss": 2.0, "val_mse": 2.5, "epoch": 0})], "r")
    assert ours_regression.series["val_mse"] == {0: 2.5}
    assert panels([regression]) == ["train_loss", "train_lr", "val_mse"]
    assert panels([ours, regression]) == ["train_loss", "train_lr", "val_acc1", "val_mse"]
    assert panels([Run("empty")]) == []


def colour_present(image, rgb, tol=12):
    return bool((np.abs(image[..., :3].astype(int) - np.array(rgb)).max(axis=-1) <= tol).any())


def test_cli_png_csv_and_summary(logs, tmp_path):
    out, table = tmp_path / "plots" / "curves.png", tmp_path / "points.csv"
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, logs), "--names", "mine", "ref", "lvu",
                           "--out", str(out), "--size", "640x480", "--dump-csv", str(table)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (640, 480)
        pixels = np.asarray(img.convert("RGB"))
    for rgb in ((31, 119, 180), (255, 127, 14), (44, 160, 44)):  # matplotlib's C0, C1, C2: one per run
        assert colour_present(pixels, rgb), rgb
    rows = list(csv.reader(table.open()))
    assert rows[0] == ["run", "metric", "epoch", "value"]
    expected = []
    for name, records in (("mine", OURS), ("ref", OFFICIAL), ("lvu", OFFICIAL_REGRESSION)):
        run = parse_log(lines_of(records), name)
        expected += [[name, key, str(e), repr(v)] for key in ("train_loss", "train_lr", "val_acc1", "val_mse")
                     for e, v in run.series.get(key, {}).items()]
    assert rows[1:] == expected and len(expected) == 4 * 3 + 2 * 3 + 2 * 3
    assert proc.stdout.splitlines() == [
        "mine: 4 epochs (0-3), train_loss 0.8 at epoch 3, best val_acc1 62.5 at epoch 2",
        "ref: 2 epochs (0-1), train_loss 5.1 at epoch 1, best val_acc1 12.5 at epoch 1",
        "lvu: 2 epochs (0-1), train_loss 1 at epoch 1, best val_mse 1.25 at epoch 1"]
    assert "official/log.txt: skipped 1 plain-text lines and 1 JSON records without an epoch" in proc.stderr


def test_default_names_and_usage_errors(logs, tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(logs[0]), str(logs[1]), "--out", str(tmp_path / "a.png")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [line.split(":")[0] for line in proc.stdout.splitlines()] == ["mine", "official"]
    for args, rc, message in [
        ([str(logs[0]), "--names", "a", "b"], 2, "--names gives 2 names for 1 logs"),
        ([str(tmp_path / "nope" / "log.txt")], 2, "no such log file"),
        ([str(logs[0]), "--size", "big"], 2, "expected WIDTHxHEIGHT"),
        ([str(write_log(tmp_path / "text" / "log.txt", ["starting", {"Final top-1": 1.0}]))], 1, "no epoch records"),
    ]:
        proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(tmp_path / "b.png")],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == rc and message in proc.stderr and "Traceback" not in proc.stderr, args
    assert not (tmp_path / "b.png").exists()


BLOCK_MATPLOTLIB = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_missing_matplotlib_is_one_line_exit_2(logs, tmp_path):
    proc = subprocess.run([sys.executable, "-c", BLOCK_MATPLOTLIB, str(SCRIPT), str(logs[0]),
                           "--out", str(tmp_path / "c.png")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "plot_logs.py: error: matplotlib is not installed; pip install matplotlib "
        "(or: pip install -r requirements-extras.txt)"]
    assert not (tmp_path / "c.png").exists()
