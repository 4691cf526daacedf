"""Multi-view merge on a toy prediction set with padded duplicates, invalid views and an incomplete video."""
import logging

import numpy as np
import pytest

from engines.multiview import (load_rank_predictions, merge_views, official_prediction_lines, official_video_name,
                               save_rank_predictions, write_video_csv)
from official_merge import official_merge


def _views(rows):
    """rows: (video_id, window, segment, crop, logits, label, valid)."""
    return {
        "video_id": np.array([r[0] for r in rows]), "window": np.array([r[1] for r in rows]),
        "segment": np.array([r[2] for r in rows]), "crop": np.array([r[3] for r in rows]),
        "outputs": np.array([r[4] for r in rows], dtype=np.float32), "label": np.array([r[5] for r in rows]),
        "valid": np.array([r[6] for r in rows], dtype=bool), "batch": np.arange(len(rows)) // 4,
    }


L = np.log  # logits whose softmax is easy to compute by hand: softmax(log p) = p / sum(p)

TOY = [
    # video 0 (label 0): two views, softmaxes (0.6, 0.3, 0.1) and (0.2, 0.7, 0.1) -> mean (0.4, 0.5, 0.1): wrong
    (0, 0, 0, 0, L([0.6, 0.3, 0.1]), 0, True),
    (0, 0, 1, 0, L([0.2, 0.7, 0.1]), 0, True),
    # video 1 (label 2): (0.1, 0.1, 0.8) and (0.3, 0.3, 0.4) -> (0.2, 0.2, 0.6): right
    (1, 0, 0, 0, L([0.1, 0.1, 0.8]), 2, True),
    (1, 0, 1, 0, L([0.3, 0.3, 0.4]), 2, True),
    # video 2 (label 1): one valid view (0.5, 0.4, 0.1) and one undecodable view: wrong at top-1, right at top-2
    (2, 0, 0, 0, L([0.5, 0.4, 0.1]), 1, True),
    (2, 0, 1, 0, np.zeros(3), 1, False),
    # video 3: never decoded -> missing
    (3, 0, 0, 0, np.zeros(3), 0, False),
    (3, 0, 1, 0, np.zeros(3), 0, False),
    # padding of the distributed sampler: exact repeats of views already seen (the first would flip video 0)
    (0, 0, 1, 0, L([0.2, 0.7, 0.1]), 0, True),
    (1, 0, 0, 0, L([0.1, 0.1, 0.8]), 2, True),
]


def test_merge_counts_each_view_once_and_scores_videos(caplog):
    with caplog.at_level(logging.WARNING):
        result = merge_views(_views(TOY), "classification", views_per_window=2)
    assert result["num_videos"] == 3
    assert result["missing"] == 1 and result["missing_ids"] == [3]
    assert result["duplicates"] == 2
    assert result["incomplete"] == [[2, 0, 1]]
    assert "fewer than 2 views" in caplog.text
    videos = {v["video_id"]: v for v in result["videos"]}
    np.testing.assert_allclose(videos[0]["scores"], [0.4, 0.5, 0.1], atol=1e-6)
    np.testing.assert_allclose(videos[1]["scores"], [0.2, 0.2, 0.6], atol=1e-6)
    np.testing.assert_allclose(videos[2]["scores"], [0.5, 0.4, 0.1], atol=1e-6)
    assert [videos[i]["views"] for i in (0, 1, 2)] == [2, 2, 1]
    assert [videos[i]["pred"] for i in (0, 1, 2)] == [1, 2, 0]
    assert result["acc1"] == pytest.approx(100 / 3)
    assert result["acc5"] == pytest.approx(100.0)


def test_views_with_different_tuples_never_collide():
    # Joined without a separator, (segment 1, crop 11) and (segment 11, crop 1) both read "5011"; tuples differ.
    rows = [(5, 0, 1, 11, L([0.9, 0.1]), 0, True), (5, 0, 11, 1, L([0.1, 0.9]), 0, True)]
    result = merge_views(_views(rows), "classification", views_per_window=2)
    assert result["duplicates"] == 0
    np.testing.assert_allclose(result["videos"][0]["scores"], [0.5, 0.5], atol=1e-6)


def test_a_window_without_any_valid_view_is_reported_incomplete():
    rows = [(0, 0, 0, 0, L([0.8, 0.2]), 0, True), (0, 1, 0, 0, np.zeros(2), 0, False),
            (1, 0, 0, 0, np.zeros(2), 1, False)]
    result = merge_views(_views(rows), "classification", views_per_window=1)
    assert result["incomplete"] == [[0, 1, 0]] and result["missing_ids"] == [1]


def test_windows_of_a_trimmed_video_are_averaged_together():
    rows = [(0, w, 0, 0, L([p, 1 - p]), 1, True) for w, p in enumerate([0.8, 0.2, 0.3])]
    result = merge_views(_views(rows), "classification", views_per_window=1)
    np.testing.assert_allclose(result["videos"][0]["scores"], [13 / 30, 17 / 30], atol=1e-6)
    assert result["acc1"] == 100.0 and result["incomplete"] == []


def test_regression_merge_averages_raw_outputs():
    rows = [(0, 0, 0, 0, [1.0], 2.0, True), (0, 0, 1, 0, [3.0], 2.0, True), (1, 0, 0, 0, [0.5], 1.5, True),
            (1, 0, 1, 0, [0.5], 1.5, True), (1, 0, 1, 0, [0.5], 1.5, True)]
    result = merge_views(_views(rows), "regression", views_per_window=2)
    assert result["mse"] == pytest.approx((0.0 + 1.0) / 2)
    assert [v["pred"] for v in result["videos"]] == [2.0, 0.5]


def test_conflicting_labels_are_an_error():
    rows = [(0, 0, 0, 0, L([0.5, 0.5]), 0, True), (0, 0, 1, 0, L([0.5, 0.5]), 1, True)]
    with pytest.raises(ValueError, match="different labels"):
        merge_views(_views(rows), "classification", views_per_window=2)


def test_rank_files_round_trip_and_csv(tmp_path):
    views = _views(TOY)
    half = len(TOY) // 2
    save_rank_predictions({k: v[:half] for k, v in views.items()}, tmp_path, 0)
    save_rank_predictions({k: v[half:] for k, v in views.items()}, tmp_path, 1)
    merged = load_rank_predictions(tmp_path, 2)
    result = merge_views(merged, "classification", views_per_window=2)
    assert result["acc1"] == pytest.approx(100 / 3)
    write_video_csv(result, tmp_path / "videos.csv")
    lines = (tmp_path / "videos.csv").read_text().splitlines()
    assert lines[0].startswith("video_id,label,pred,views")
    assert [line.split(",")[:4] for line in lines[1:]] == [["0", "0", "1", "2"], ["1", "2", "2", "2"],
                                                           ["2", "1", "0", "1"]]
    with pytest.raises(FileNotFoundError, match="rank2"):
        load_rank_predictions(tmp_path, 3)


def _write_official(views, folder, rank, task="classification"):
    names = [f"clip_{i}" for i in range(int(views["video_id"].max()) + 1)]
    lines = official_prediction_lines(views, task, names)
    (folder / f"{rank}.txt").write_text("".join(f"{line}\n" for line in lines))
    return lines


def test_official_rank_files_have_the_official_lines_and_merge_to_our_numbers(tmp_path):
    views = _views(TOY)
    lines = _write_official(views, tmp_path, 0)
    # first line: the last batch's (rows 8, 9: one right of two) top-1 and top-5 (3 classes: top-1) as tensors
    assert lines[0] == "tensor(50.), tensor(50.)"
    logits = np.log([0.6, 0.3, 0.1]).astype(np.float32)  # as the model outputs them: float32
    assert lines[1] == f"clip_0 [{', '.join(repr(float(x)) for x in logits)}] 0 0 0"  # id [scores] label chunk split
    assert len(lines) == 1 + sum(row[6] for row in TOY)  # the undecodable views are left out
    ours = merge_views(views, "classification", views_per_window=2)
    assert official_merge(tmp_path, 1) == (pytest.approx(ours["acc1"]), pytest.approx(ours["acc5"]))
    half = len(TOY) // 2  # two ranks, the padding repeats in the second: the official merge drops them too
    _write_official({k: v[:half] for k, v in views.items()}, tmp_path, 0)
    _write_official({k: v[half:] for k, v in views.items()}, tmp_path, 1)
    assert official_merge(tmp_path, 2) == (pytest.approx(100 / 3), pytest.approx(100.0))


def test_official_rank_files_for_regression(tmp_path):
    rows = [(0, 0, 0, 0, [1.0], 2.0, True), (0, 0, 1, 0, [3.0], 2.0, True), (1, 0, 0, 0, [0.25], 1.5, True),
            (1, 0, 1, 0, [0.75], 1.5, True), (2, 0, 0, 0, [0.0], 0.1, False)]
    lines = _write_official(_views(rows), tmp_path, 0, "regression")
    assert lines[0] == "nan"  # the last batch (row 4) has no valid view
    assert lines[1:] == ["clip_0 1.0 2.0 0 0", "clip_0 3.0 2.0 1 0", "clip_1 0.25 1.5 0 0", "clip_1 0.75 1.5 1 0"]
    ours = merge_views(_views(rows), "regression", views_per_window=2)
    assert official_merge(tmp_path, 1, "regression") == (pytest.approx(ours["mse"]),)
    assert official_video_name("videos/abc/-x1.mp4") == "-x1" and official_video_name("a/b.c.avi") == "b"
