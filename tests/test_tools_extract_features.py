"""tools/extract_features.py on real h264 files and a randomly initialised tiny checkpoint."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import timm
import torch

import models  # noqa: F401  (registers the VideoMamba models with timm)
from datasets import transforms
from datasets.readers import open_video
from datasets.sampling import sparse_eval_indices, trimmed_windows, window_frame_range
from models.ops import get_backend, set_backend
from tools.extract_features import main
from tools.make_synthetic_dataset import write_video

pytestmark = pytest.mark.usefixtures("torch_backend")

REPO = Path(__file__).resolve().parents[1]
FRAMES, SIZE, DIM, DEPTH = 4, 32, 64, 2
LENGTHS = {"a": 30, "b": 75}  # frames at 30 fps: 1 s and 2.5 s


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(1)
    for name, length in LENGTHS.items():
        base = rng.integers(0, 256, size=(1, 48, 64, 3))
        drift = np.arange(length)[:, None, None, None] * 5
        write_video(root / "videos" / f"{name}.mp4", ((base + drift) % 256).astype(np.uint8))
    (root / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    torch.manual_seed(0)
    model = timm.create_model("videomamba_tiny", img_size=SIZE, num_frames=FRAMES, num_classes=5, depth=DEPTH,
                              embed_dim=DIM)
    torch.save({"model": model.state_dict()}, root / "tiny.pth")
    return {"root": root, "videos": root / "videos", "checkpoint": root / "tiny.pth"}


@pytest.fixture(scope="module")
def model(files: dict[str, Path]) -> torch.nn.Module:
    net = timm.create_model("videomamba_tiny", img_size=SIZE, num_frames=FRAMES, num_classes=5, depth=DEPTH,
                            embed_dim=DIM)
    net.load_state_dict(torch.load(files["checkpoint"])["model"])
    return net.eval()


def _args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--model", "videomamba_tiny", "--checkpoint", str(files["checkpoint"]), "--out", str(out),
            "--video_backend", "pyav", "--device", "cpu", "--batch_size", "3", *extra]


def _view(path: Path, window: tuple[float, float] | None, segment: int = 0, segments: int = 1, crop: int = 0,
          crops: int = 1) -> torch.Tensor:
    """One view decoded and transformed here, straight from the readers, sampling rules and test transform."""
    reader = open_video(str(path), backend="pyav")
    first, last = (0, None) if window is None else window_frame_range(*window, reader.fps, reader.num_frames)
    frames = reader.get_frames(sparse_eval_indices(reader.num_frames, FRAMES, segment, segments, first, last))
    return transforms.TestTransform(SIZE, crops)(frames, crop).unsqueeze(0)


WINDOWS = ("--folder", "{videos}", "--window_seconds", "1", "--stride_seconds", "0.5")


@pytest.fixture(scope="module")
def windows_run(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    """Sliding-window features of the folder in this process with the torch scan and one torch thread (as each
    torchrun rank): the output folder, exit status and stderr."""
    out = tmp_path_factory.mktemp("windows") / "out"
    threads, backend = torch.get_num_threads(), get_backend()
    torch.set_num_threads(1)
    set_backend("torch")  # module scope: set up before the per-test torch_backend fixture
    try:
        flags = [f.format(videos=files["videos"]) for f in WINDOWS]
        with contextlib.redirect_stderr(io.StringIO()) as err:
            code = main(_args(files, out, *flags, "--num_workers", "2"))
    finally:
        torch.set_num_threads(threads)
        set_backend(backend)
    return out, code, err.getvalue()


def test_sliding_window_features_are_what_the_head_sees(files, model, windows_run) -> None:
    out, code, err = windows_run
    assert code == 1  # the broken video
    assert "broken.mp4" in err and "1 of 3 videos could not be read" in err
    with open(out / "index.csv", newline="") as f:
        index = list(csv.DictReader(f))
    assert [Path(r["video"]).name for r in index] == ["a.mp4", "b.mp4", "broken.mp4"]
    assert [r["status"] for r in index] == ["ok", "ok", "bad"] and index[2]["error"]
    for row, (name, length) in zip(index, LENGTHS.items()):
        windows = trimmed_windows(length / 30, 1, 0.5)
        features = np.load(out / f"{name}.npy")
        record = json.loads((out / f"{name}.json").read_text())
        assert features.shape == (len(windows), DIM) == tuple(record["shape"]) and int(row["rows"]) == len(windows)
        assert row["output"] == f"{name}.npy" and record["fps"] == 30 and record["num_video_frames"] == length
        assert record["views"]["window"] == list(range(len(windows)))
        assert list(zip(record["views"]["start"], record["views"]["end"])) == [(float(a), float(b))
                                                                               for a, b in windows]
        assert record["settings"]["feature"] == "pooled" and record["settings"]["token_grid"] == [FRAMES, 2, 2]
        last = windows[-1]
        with torch.no_grad():
            want = model.forward_head(model.forward_features(_view(files["videos"] / f"{name}.mp4", last)),
                                      pre_logits=True)
        np.testing.assert_allclose(features[-1], want[0].numpy(), rtol=1e-5, atol=1e-6)
    assert np.load(out / "b.npy").shape[0] == 4  # windows at 0, 0.5, 1 and 1.5 s of 2.5 s


def test_resume_skips_complete_videos_and_redoes_partial_ones(files, tmp_path) -> None:
    out = tmp_path / "out"
    args = _args(files, out, "--list", str(tmp_path / "list.txt"), "--prefix", str(files["videos"]),
                 "--num_segments", "2", "--num_crops", "3", "--num_workers", "0")
    (tmp_path / "list.txt").write_text("a.mp4 0\nb.mp4 1\n")
    assert main(args) == 0
    first = {name: np.load(out / f"{name}.npy") for name in LENGTHS}
    assert all(f.shape == (6, DIM) for f in first.values())
    record = json.loads((out / "b.json").read_text())
    assert (record["views"]["segment"], record["views"]["crop"]) == ([0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2])
    kept = (out / "a.npy").stat().st_mtime_ns
    (out / "b.json").unlink()  # b was interrupted between its two files
    np.save(out / "b.npy", np.zeros(3, dtype=np.float32))
    assert main(args) == 0
    assert (out / "a.npy").stat().st_mtime_ns == kept
    assert np.array_equal(np.load(out / "b.npy"), first["b"])  # recomputed, bit for bit the same
    assert not list(out.glob(".*.tmp"))


def test_changed_settings_are_an_error(files, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    video = ["--video", str(files["videos"] / "a.mp4"), "--num_workers", "0"]
    assert main(_args(files, out, *video)) == 0
    assert main(_args(files, out, *video, "--num_crops", "2")) == 2
    err = capsys.readouterr().err
    assert "a.json holds features made with other settings (num_crops: 1 there, 2 now)" in err


def test_h5_tokens_of_a_layer(files, model, tmp_path) -> None:
    out = tmp_path / "out"
    args = _args(files, out, "--video", str(files["videos"] / "b.mp4"), "--tokens", "--layer", "0", "--norm",
                 "--num_segments", "2", "--num_crops", "2", "--h5", "--num_workers", "0")
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["features.h5", "index.csv"]
    with h5py.File(out / "features.h5", "r") as f:
        assert list(f) == ["b"] and json.loads(f.attrs["settings"])["layer"] == 0
        group = f["b"]
        tokens = group["features"][()]
        assert tokens.shape == (4, 1 + FRAMES * 2 * 2, DIM)
        assert group["segment"][()].tolist() == [0, 0, 1, 1] and group["crop"][()].tolist() == [0, 1, 0, 1]
        assert group.attrs["video"] == str(files["videos"] / "b.mp4") and group.attrs["num_video_frames"] == 75
    view = _view(files["videos"] / "b.mp4", None, segment=1, segments=2, crop=1, crops=2)
    with torch.no_grad():
        [(patches, cls)] = model.forward_intermediates(view, indices=[0], norm=True, output_fmt="NLC",
                                                       intermediates_only=True, return_prefix_tokens=True)
    np.testing.assert_allclose(tokens[3], torch.cat([cls, patches], 1)[0].numpy(), rtol=1e-5, atol=1e-6)
    assert main(args) == 0  # resumed from features.h5: nothing left to do, the file keeps the video
    with h5py.File(out / "features.h5", "r") as f:
        assert np.array_equal(f["b"]["features"][()], tokens)


def test_torchrun_shards_equal_one_process(files, windows_run, tmp_path) -> None:
    env = {**os.environ, "VIDEOMAMBA_SCAN_BACKEND": "torch", "OMP_NUM_THREADS": "1"}
    flags = [f.format(videos=files["videos"]) for f in WINDOWS]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "tools/extract_features.py", *_args(files, tmp_path, *flags, "--num_workers", "0")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "broken.mp4" in proc.stderr, proc.stderr[-2000:]  # the broken video
    single = windows_run[0]
    assert (single / "index.csv").read_text() == (tmp_path / "index.csv").read_text()
    for name in LENGTHS:
        assert np.array_equal(np.load(single / f"{name}.npy"), np.load(tmp_path / f"{name}.npy"))
        assert (single / f"{name}.json").read_text() == (tmp_path / f"{name}.json").read_text()


BLOCK_H5PY = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "h5py" or name.startswith("h5py."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_missing_h5py_is_one_line(files, tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-c", BLOCK_H5PY, "tools/extract_features.py",
                           *_args(files, tmp_path / "out", "--video", str(files["videos"] / "a.mp4"), "--h5")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "extract_features.py: error: --h5 needs h5py, which is not installed; pip install h5py "
        "(or: pip install -r requirements-extras.txt)"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["--layer", "1"], "--layer selects token features: add --tokens"),
    (["--tokens", "--layer", "2"], "--layer 2: the model has 2 blocks"),
    (["--window_seconds", "2"], "sliding windows need both --window_seconds and --stride_seconds"),
    (["--sampling", "dense", "--window_seconds", "2", "--stride_seconds", "1"], "sliding windows use sparse"),
])
def test_bad_flags_are_one_line_errors(files, tmp_path, capsys, extra, message) -> None:
    assert main(_args(files, tmp_path / "out", "--video", str(files["videos"] / "a.mp4"), *extra)) == 2
    assert message in capsys.readouterr().err


def test_a_video_no_window_fits_is_listed_and_skipped(files, tmp_path) -> None:
    # 0.8 s: at least one 0.5 s window long, but no window start lies below int(duration) = 0 (the trimmed rule)
    videos = tmp_path / "videos"
    base = np.random.default_rng(2).integers(0, 256, size=(1, 48, 64, 3)).astype(np.uint8)
    write_video(videos / "short.mp4", np.repeat(base, 24, axis=0))
    os.link(files["videos"] / "a.mp4", videos / "a.mp4")
    out = tmp_path / "out"
    code = main(_args(files, out, "--folder", str(videos), "--window_seconds", "0.5", "--stride_seconds", "0.25"))
    assert code == 1
    rows = {Path(r["video"]).name: r for r in csv.DictReader(open(out / "index.csv"))}
    assert rows["a.mp4"]["status"] == "ok" and (out / "a.npy").is_file()
    assert rows["short.mp4"]["status"] != "ok" and "no view fits the video (24 frames" in rows["short.mp4"]["error"]
    assert not (out / "short.npy").exists()
