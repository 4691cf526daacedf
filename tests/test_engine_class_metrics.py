"""Per-class accuracy, mean class accuracy and the confusion matrix (``engines/class_metrics.py``) on small made-up
predictions, the JSON / PNG report, and the report of the multi-view merge (ties, a label the model does not have)."""
from __future__ import annotations

import builtins
import json
import logging
import math

import numpy as np
import pytest

from engines.class_metrics import (class_report, confusion_matrix, mean_class_accuracy, per_class_accuracy,
                                   report_videos, write_class_report)
from engines.multiview import merge_views

# 4 classes; class 3 never occurs (neither true nor predicted)
LABELS = [0, 0, 1, 2, 2, 2]
PREDS = [0, 1, 1, 2, 0, 2]
MATRIX = [[1, 1, 0, 0],
          [0, 1, 0, 0],
          [1, 0, 2, 0],
          [0, 0, 0, 0]]


def test_confusion_matrix_rows_are_true_columns_predicted():
    matrix = confusion_matrix(LABELS, PREDS, 4)
    assert matrix.dtype == np.int64 and matrix.tolist() == MATRIX
    assert confusion_matrix([], [], 2).tolist() == [[0, 0], [0, 0]]


def test_per_class_and_mean_class_accuracy():
    matrix = np.array(MATRIX)
    accuracy = per_class_accuracy(matrix)
    assert accuracy[:3].tolist() == [0.5, 1.0, 2 / 3] and math.isnan(accuracy[3])
    assert mean_class_accuracy(matrix) == pytest.approx((0.5 + 1.0 + 2 / 3) / 3, abs=1e-15)
    assert math.isnan(mean_class_accuracy(np.zeros((3, 3), dtype=np.int64)))


def test_a_class_only_predicted_is_left_out_of_the_mean():
    """Class 3 is predicted once but never true: it has no accuracy (mmaction2 would average in a 0: 0.5)."""
    matrix = confusion_matrix([0, 0, 1], [0, 3, 1], 4)
    assert matrix[0].tolist() == [1, 0, 0, 1] and matrix[3].tolist() == [0, 0, 0, 0]
    assert mean_class_accuracy(matrix) == 0.75


@pytest.mark.parametrize("labels, preds, message", [
    ([0, 4], [0, 1], r"\[0, 4\), got \[4\]"),
    ([0, 1], [-1, 1], r"got \[-1\]"),
    ([0, 1], [0], "of one length"),
])
def test_bad_indices_are_errors(labels, preds, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(labels, preds, 4)


def test_class_report_is_exact():
    report = class_report(LABELS, PREDS, 4, names=["a", "b", "c", "d"])
    assert report == {
        "num_videos": 6, "num_classes": 4, "top1": pytest.approx(400 / 6),
        "mean_class_accuracy": pytest.approx(100 * (0.5 + 1.0 + 2 / 3) / 3), "classes_present": 3,
        "per_class": [
            {"class": 0, "name": "a", "videos": 2, "correct": 1, "accuracy": 50.0},
            {"class": 1, "name": "b", "videos": 1, "correct": 1, "accuracy": 100.0},
            {"class": 2, "name": "c", "videos": 3, "correct": 2, "accuracy": pytest.approx(200 / 3)},
            {"class": 3, "name": "d", "videos": 0, "correct": 0, "accuracy": None},
        ],
        "confusion_matrix_layout": "rows: true class, columns: predicted class",
        "confusion_matrix": MATRIX,
    }
    assert [c["name"] for c in class_report(LABELS, PREDS, 4)["per_class"]] == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        class_report(LABELS, PREDS, 4, names=["a", "b", "c"])


def test_json_and_png_are_written(tmp_path):
    report = class_report(LABELS, PREDS, 4)
    png = write_class_report(report, tmp_path / "out" / "test_per_class.json")
    text = (tmp_path / "out" / "test_per_class.json").read_text()
    assert json.loads(text) == report
    assert '    [1, 0, 2, 0],' in text.splitlines()  # one line per matrix row, readable
    assert png == tmp_path / "out" / "test_per_class.png"
    from PIL import Image
    with Image.open(png) as image:
        assert image.format == "PNG" and min(image.size) >= 300
    assert write_class_report(report, tmp_path / "no_png.json", png=False) is None
    assert not (tmp_path / "no_png.png").exists()


def test_without_matplotlib_one_line_says_the_png_was_skipped(tmp_path, monkeypatch, caplog):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with caplog.at_level(logging.INFO, logger="engines.class_metrics"):
        assert write_class_report(class_report(LABELS, PREDS, 4), tmp_path / "r.json") is None
    assert (tmp_path / "r.json").is_file() and not (tmp_path / "r.png").exists()
    [line] = [r.getMessage() for r in caplog.records]
    assert "confusion matrix PNG skipped: matplotlib is not installed" in line and "requirements-extras.txt" in line


def _views(outputs: list[list[float]], labels: list[int]) -> dict[str, np.ndarray]:
    """One view per video (ids 0..n-1) with these logits."""
    n = len(outputs)
    zeros = np.zeros(n, dtype=np.int64)
    return {"video_id": np.arange(n), "window": zeros, "segment": zeros, "crop": zeros,
            "outputs": np.array(outputs, dtype=np.float32), "label": np.array(labels), "valid": np.ones(n, bool)}


def test_multiview_ties_go_to_the_lowest_class_in_the_report(tmp_path):
    # video 0: classes 1 and 2 tie at the top -> predicted 1 (correct); video 1: all tie -> 0 (its label is 2);
    # video 2: clear 2 (correct)
    merged = merge_views(_views([[0, 3, 3], [1, 1, 1], [0, 0, 5]], [1, 2, 2]), "classification", 1)
    assert [v["pred"] for v in merged["videos"]] == [1, 0, 2]
    assert report_videos(merged["videos"], tmp_path) == pytest.approx((100.0 + 50.0) / 2)
    report = json.loads((tmp_path / "test_per_class.json").read_text())
    assert report["confusion_matrix"] == [[0, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert [c["accuracy"] for c in report["per_class"]] == [None, 100.0, 50.0]


def test_a_label_outside_the_classes_skips_the_report_with_a_warning(tmp_path, caplog):
    merged = merge_views(_views([[0, 1], [1, 0]], [0, 5]), "classification", 1)
    with caplog.at_level(logging.WARNING):
        assert report_videos(merged["videos"], tmp_path) is None
    assert "per-class report skipped: class indices must lie in [0, 2), got [5]" in caplog.text
    assert not (tmp_path / "test_per_class.json").exists()
