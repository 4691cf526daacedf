"""tools/check_videos.py run as a user runs it (a subprocess) on real h264 files plus missing, zero-byte,
text-renamed, cut-in-half, corrupt-tail and zero-frame entries: the exact lines reported and why, the cleaned
list's bytes, exit codes, 1 vs 2 workers; the lenient list reader; a decoder crash isolated by the scan."""
import importlib.util
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from datasets.lists import ListEntry, ListLine, guess_format, read_list, read_list_lines
from tools.check_videos import VideoReport, scan
from tools.make_synthetic_dataset import index_frames, motion_frames, write_video

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "check_videos.py"
BACKENDS = ("decord", "pyav") if importlib.util.find_spec("decord") else ("pyav",)

TRAIN_LINES = [  # (raw line, expected problem or None, a phrase of the reason)
    (b"videos/a.mp4 0\n", None, ""),
    (b"videos/cut.mp4 1\n", "truncated", "box 'mdat'"),  # moov index at the end: lost
    (b"videos/b.mp4 1\r\n", None, ""),
    (b"\n", "blank", ""),
    (b"videos/empty.mp4 2\n", "empty", "zero-byte"),
    (b"videos/notes.mp4 0\n", "not_video", "no known video container"),
    (b"videos/a.mp4 3\n", None, ""),
    (b"videos/missing.mp4 1\n", "missing", "file not found"),
    (b"videos/b.mp4 cat\n", "malformed", "bad value in 'path label'"),
    (b"videos/cut_fast.mp4 2\n", "truncated", "box 'mdat'"),  # index first, half the frames
    (b"videos/late.mp4 0\n", "truncated", "frame 0 decodes, later frames do not"),
    (b"videos/zero.avi 1\n", "no_frames", "no video frames"),
    (b"videos/c.mp4 2", None, ""),  # no final newline
]


def write_empty_video(path):
    """An AVI with an h264 stream and no frames (PyAV writes the headers only)."""
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=10)
    stream.width = stream.height = 32
    stream.pix_fmt = "yuv420p"
    container.start_encoding()
    container.close()


def zero_mdat_tail(path, fraction):
    """Overwrite the last ``fraction`` of the mp4's media data with zeros; sizes and index stay intact."""
    data = bytearray(path.read_bytes())
    offset = 0
    while True:
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"mdat":
            break
        offset += size
    start = offset + size - int((size - 8) * fraction)
    data[start:offset + size] = bytes(offset + size - start)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("check_videos")
    videos = root / "videos"
    rng = np.random.default_rng(0)
    write_video(videos / "a.mp4", index_frames(40, 32, 32), fps=10, gop=8)  # 4 s
    write_video(videos / "b.mp4", motion_frames(1, 30, 32, rng), fps=15)  # 2 s
    write_video(videos / "c.mp4", index_frames(25, 32, 32), fps=5, faststart=True)  # 5 s
    full = (videos / "a.mp4").read_bytes()
    (videos / "cut.mp4").write_bytes(full[:len(full) // 2])
    write_video(videos / "whole.mp4", motion_frames(0, 60, 64, rng), fps=10, gop=8, faststart=True)
    full = (videos / "whole.mp4").read_bytes()
    (videos / "cut_fast.mp4").write_bytes(full[:len(full) // 2])
    (videos / "whole.mp4").rename(videos / "late.mp4")
    zero_mdat_tail(videos / "late.mp4", 0.3)
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "notes.mp4").write_text("these are my notes, not a video\n")
    write_empty_video(videos / "zero.avi")
    (root / "train.csv").write_bytes(b"".join(raw for raw, _, _ in TRAIN_LINES))
    (root / "val.csv").write_text("videos/a.mp4,0,4.0\nvideos/b.mp4,1,2.5\nvideos/c.mp4,2,9.0\n"
                                  "videos/missing.mp4,1,3\n")
    (root / "good.csv").write_text("videos/a.mp4 0\nvideos/c.mp4 1\n")
    return root


def run_tool(*args, cwd=None):
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def expected_bad():
    return {n: (problem, phrase) for n, (_, problem, phrase) in enumerate(TRAIN_LINES, start=1)
            if problem not in (None, "blank")}


@pytest.mark.parametrize("backend", BACKENDS)
def test_list_problems_clean_list_and_workers(dataset, tmp_path, backend):
    reports, outputs = [], []
    for workers in (1, 2):
        out, report = tmp_path / f"clean{workers}.csv", tmp_path / f"report{workers}.json"
        rc, stdout, stderr = run_tool(dataset / "train.csv", "--prefix", dataset, "--video_backend", backend,
                                      "--num_workers", workers, "--out", out, "--json", report)
        assert rc == 1, stderr
        reports.append(json.loads(report.read_text()))
        outputs.append((stdout, out.read_bytes()))
    assert reports[0] == reports[1] and outputs[0] == outputs[1]
    stdout, clean = outputs[0]
    rows = reports[0]["inputs"][0]["rows"]
    got = {r["line"]: r["problem"] for r in rows if r["problem"] is not None}
    assert got == {n: problem for n, (problem, _) in expected_bad().items()}
    for row in rows:
        if row["problem"] is not None:
            assert expected_bad()[row["line"]][1] in row["reason"]
    assert [r["line"] for r in rows] == [n for n in range(1, 14) if n != 4]  # the blank line is not a row
    assert clean == b"videos/a.mp4 0\nvideos/b.mp4 1\r\nvideos/a.mp4 3\nvideos/c.mp4 2"
    a = next(r for r in rows if r["line"] == 1)
    assert (a["num_frames"], a["fps"], a["duration"]) == (40, 10.0, 4.0)
    assert len(reports[0]["videos"]) == 10  # 11 entries naming 10 distinct files
    reported = [line for line in stdout.splitlines() if line.startswith(f"{dataset / 'train.csv'}:")]
    assert [line.split(":")[1] for line in reported] == [str(n) for n in sorted(expected_bad())]
    assert f"train.csv:8: {dataset / 'videos/missing.mp4'}: missing: file not found" in stdout
    assert "train.csv:9: malformed: bad value in 'path label'" in stdout
    table = stdout.splitlines()[-1].split()
    assert table == [str(dataset / "train.csv"), "12", "4", "1", "1", "1", "3", "1", "0", "0", "1", "0"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_trimmed_durations_and_tolerance(dataset, tmp_path, backend):
    out = tmp_path / "clean.csv"
    rc, stdout, stderr = run_tool(dataset / "val.csv", "--prefix", dataset, "--split", ",", "--backend", backend,
                                  "--out", out, "--num_frames", "4", "--test_num_segment", "2")
    assert rc == 1, stderr
    assert "val.csv: trimmed list" in stderr
    problems = [line.split(": ")[2] for line in stdout.splitlines() if "val.csv:" in line]
    assert problems == ["duration", "missing"]
    assert "val.csv:3: " in stdout and "the list says 9 s, the video lasts 5.000 s (25 frames at 5 fps)" in stdout
    assert out.read_text() == "videos/a.mp4,0,4.0\nvideos/b.mp4,1,2.5\nvideos/c.mp4,2,9.0\n"  # durations decode
    rc, stdout, _ = run_tool(dataset / "val.csv", "--prefix", dataset, "--split", ",", "--backend", backend,
                             "--duration_tolerance", "0.1")
    assert [line.split(":")[1] for line in stdout.splitlines() if "val.csv:" in line] == ["2", "3", "4"]


def test_all_good_list_folder_scan_and_several_inputs(dataset, tmp_path):
    rc, stdout, stderr = run_tool(dataset / "good.csv", "--prefix", dataset, "--out", tmp_path / "good.csv")
    assert rc == 0, stderr
    assert (tmp_path / "good.csv").read_bytes() == (dataset / "good.csv").read_bytes()
    assert stdout.splitlines()[-1].split() == [str(dataset / "good.csv"), "2", "2"] + ["0"] * 9

    rc, stdout, stderr = run_tool(dataset / "videos", "--out", tmp_path / "clean", "--num_workers", "2",
                                  dataset / "good.csv", "--prefix", dataset)
    assert rc == 1, stderr
    bad = {Path(line.split(": ")[0]).name: line.split(": ")[1] for line in stdout.splitlines()
           if line.startswith(f"{dataset / 'videos'}{os.sep}")}
    assert bad == {"cut.mp4": "truncated", "cut_fast.mp4": "truncated", "late.mp4": "truncated",
                   "empty.mp4": "empty", "notes.mp4": "not_video", "zero.avi": "no_frames"}
    assert (tmp_path / "clean" / "videos.txt").read_text() == "a.mp4\nb.mp4\nc.mp4\n"
    assert (tmp_path / "clean" / "good.csv").read_bytes() == (dataset / "good.csv").read_bytes()
    assert stdout.splitlines()[-1].split() == ["total", "11", "5", "0", "1", "1", "3", "1", "0", "0", "0", "0"]


def test_nb_classes_reports_labels_training_would_refuse(dataset, tmp_path):
    listed = tmp_path / "labels.csv"
    listed.write_text("videos/a.mp4,3\nvideos/c.mp4,4\nvideos/missing.mp4,9\n")
    rc, stdout, stderr = run_tool(listed, "--prefix", dataset, "--split", ",", "--nb_classes", "4", "--out",
                                  tmp_path / "clean.csv")
    assert rc == 1, stderr
    reported = [line for line in stdout.splitlines() if line.startswith(f"{listed}:")]
    assert reported == [f"{listed}:2: {dataset / 'videos/c.mp4'}: label: label 4 is not a class of --nb_classes 4 "
                        "(labels 0 to 3)",
                        f"{listed}:3: {dataset / 'videos/missing.mp4'}: label: label 9 is not a class of "
                        "--nb_classes 4 (labels 0 to 3)"]
    assert (tmp_path / "clean.csv").read_text() == "videos/a.mp4,3\n"
    assert stdout.splitlines()[-1].split() == [str(listed), "3", "1"] + ["0"] * 8 + ["2"]
    rc, stdout, _ = run_tool(listed, "--prefix", dataset, "--split", ",")  # without the flag: labels unchecked
    assert [line.split(": ")[-2] for line in stdout.splitlines() if line.startswith(f"{listed}:")] == ["missing"]


def test_usage_errors_exit_2(dataset, tmp_path):
    for args, message in [
        ((tmp_path / "nope.csv",), "nope.csv: list file not found"),
        ((dataset / "good.csv", "--num_workers", "0"), "--num_workers"),
        ((dataset / "good.csv", "--out", dataset / "good.csv"), "would overwrite the input list"),
        ((dataset / "good.csv", dataset / "good.csv", "--out", tmp_path / "o"), "the same file name"),
        ((dataset / "good.csv", "--backend", "opencv"), "invalid choice"),
    ]:
        rc, stdout, stderr = run_tool(*args)
        assert rc == 2 and message in stderr and stdout == "", (args, stderr)
        assert "Traceback" not in stderr
    assert (dataset / "good.csv").read_text() == "videos/a.mp4 0\nvideos/c.mp4 1\n"


def crash_on_bad(path):
    """A stand-in decoder whose process dies (a segfaulting library, the OOM killer) on paths containing 'crash'."""
    if "crash" in path:
        os.kill(os.getpid(), signal.SIGKILL)
    return VideoReport(path, None, "", 10, 5.0)


def test_scan_survives_a_decoder_crash():
    paths = [f"v{k}.mp4" for k in range(7)] + ["crash.mp4"] + [f"w{k}.mp4" for k in range(7)]
    results = scan(paths, crash_on_bad, num_workers=2)
    assert sorted(results) == sorted(paths)
    assert results["crash.mp4"].problem == "undecodable" and "crashed" in results["crash.mp4"].reason
    assert all(results[p] == VideoReport(p, None, "", 10, 5.0) for p in paths if p != "crash.mp4")


def test_read_list_lines_keeps_bytes_and_reports_errors(tmp_path):
    path = tmp_path / "l.csv"
    path.write_bytes(b"a.mp4 1\r\n\n  \nb.mp4 x\nc.mp4\t2\n\xff.mp4 1\nd.mp4 3")
    lines = read_list_lines(path, "classification", prefix="/p")
    assert [(line.number, line.raw) for line in lines] == [
        (1, b"a.mp4 1\r\n"), (4, b"b.mp4 x\n"), (5, b"c.mp4\t2\n"), (6, b"\xff.mp4 1\n"), (7, b"d.mp4 3")]
    assert lines[0] == ListLine(1, b"a.mp4 1\r\n", ListEntry("/p/a.mp4", 1))
    assert lines[1].entry is None and lines[1].error.startswith("bad value in 'path label'")
    assert lines[3].entry is None and lines[3].error.startswith("not UTF-8 text")
    assert [line.entry.path for line in lines if line.entry] == ["/p/a.mp4", "/p/c.mp4", "/p/d.mp4"]
    with pytest.raises(ValueError, match=r"l.csv:4: bad value in 'path label' .*'b.mp4 x'"):
        read_list(path, "classification")


def test_guess_format():
    assert guess_format(["a.mp4 1", "b.mp4 2", ""]) == ("classification", False)
    assert guess_format(["a.mp4,0.5", "b.mp4,2"], ",") == ("classification", True)
    assert guess_format(["a.mp4 1 60.5", "b.mp4 2 10", "broken"]) == ("trimmed", False)
    assert guess_format(["a.mp4 -0.3 60.5"]) == ("trimmed", True)
