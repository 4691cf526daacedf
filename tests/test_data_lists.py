"""List-file parsing: every format, separators, prefixes and errors naming file and line."""
import pytest

from datasets.lists import ListEntry, ListFileError, guess_format, list_file_path, read_list, read_paths


def write(tmp_path, text, name="train.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_formats_and_prefix(tmp_path):
    assert read_list(write(tmp_path, "a/x.mp4 3\n\nb.mp4 0\n"), "classification", prefix="/data") == [
        ListEntry("/data/a/x.mp4", 3), ListEntry("/data/b.mp4", 0)]
    assert read_list(write(tmp_path, "x.mp4,1.5\n"), "regression", split=",") == [ListEntry("x.mp4", 1.5)]
    assert read_list(write(tmp_path, "x.mp4 2 61.5\n"), "trimmed") == [ListEntry("x.mp4", 2, duration=61.5)]
    assert read_list(write(tmp_path, "x.mp4 -0.25 10\n"), "trimmed", regression=True) == [
        ListEntry("x.mp4", -0.25, duration=10.0)]
    assert read_list(write(tmp_path, "f/123 45 7\n"), "frames", prefix="s3://b/ssv2") == [
        ListEntry("s3://b/ssv2/f/123", 7, total_frames=45)]
    assert read_list(write(tmp_path, "s3://b/x.mp4 1\n"), "classification", prefix="/data")[0].path == "s3://b/x.mp4"
    assert list_file_path("/d", "validation").name == "val.csv"
    assert [e.path for e in read_paths(write(tmp_path, "a.mp4 0 -1\nb.mp4\n"), prefix="p")] == ["p/a.mp4", "p/b.mp4"]


@pytest.mark.parametrize("fmt, text, message", [
    ("classification", "ok.mp4 1\nbad.mp4\n", r"train.csv:2: expected 2 fields 'path label'"),
    ("classification", "ok.mp4 1\n\nbad.mp4 cat\n", r"train.csv:3: bad value"),
    ("classification", "a.mp4,1\n", r"train.csv:1: expected 2 fields"),  # wrong separator
    ("trimmed", "a.mp4 1\n", r"train.csv:1: expected 3 fields 'path label duration'"),
    ("trimmed", "a.mp4 1 -3\n", r"train.csv:1: bad value .*duration must be >= 0"),
    ("frames", "f 0 1\n", r"train.csv:1: bad value .*total_frames must be >= 1"),
    ("regression", "a.mp4 high\n", r"train.csv:1: bad value"),
    ("classification", "\n\n", r"train.csv: no entries"),
])
def test_malformed_lines_name_file_and_line(tmp_path, fmt, text, message):
    with pytest.raises(ListFileError, match=message):
        read_list(write(tmp_path, text), fmt)


def test_missing_list_file(tmp_path):
    with pytest.raises(ListFileError, match="val.csv: list file not found"):
        read_list(tmp_path / "val.csv", "classification")


def test_pretraining_paths_lists_keep_only_the_first_field(tmp_path):
    lst = tmp_path / "train.csv"
    lst.write_text("a.mp4 0 -1\nsub/b.mp4 0 -1\n\n")
    assert guess_format(lst.read_text().splitlines()) == ("paths", False)
    assert [e.path for e in read_paths(lst, prefix="/v")] == ["/v/a.mp4", "/v/sub/b.mp4"]
    assert guess_format(["a.mp4 3 12.5", "b.mp4 1 7"]) == ("trimmed", False)
    with pytest.raises(ListFileError, match=r"train.csv:2: expected a video path"):
        lst.write_text("a.mp4 0 -1\n,0,-1\n")
        read_paths(lst, split=",")
