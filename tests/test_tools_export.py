"""tools/export.py: torch.export (.pt2) and ONNX of a tiny classifier, checked on a real h264 file."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import timm
import torch

import models  # noqa: F401  (registers the VideoMamba models with timm)
from datasets import transforms
from datasets.readers import open_video
from datasets.sampling import sparse_eval_indices
from tools import export
from tools.export import main
from tools.make_synthetic_dataset import write_video

pytestmark = pytest.mark.usefixtures("torch_backend")

FRAMES, SIZE = 4, 32


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, size=(1, 48, 64, 3))
    write_video(root / "clip.mp4", ((base + np.arange(40)[:, None, None, None] * 4) % 256).astype(np.uint8))
    torch.manual_seed(0)
    model = timm.create_model("videomamba_tiny", img_size=SIZE, num_frames=FRAMES, num_classes=5, depth=1,
                              embed_dim=64)
    torch.save({"model": model.state_dict()}, root / "tiny.pth")
    view = transforms.TestTransform(SIZE, 1)(_frames(root / "clip.mp4"), 0).unsqueeze(0)
    return {"root": root, "video": root / "clip.mp4", "checkpoint": root / "tiny.pth", "model": model.eval(),
            "view": view}


def _frames(path: Path) -> np.ndarray:
    reader = open_video(str(path), backend="pyav")
    return reader.get_frames(sparse_eval_indices(reader.num_frames, FRAMES, 0, 1))


def _args(files: dict[str, Path], *extra: str) -> list[str]:
    return ["--model", "videomamba_tiny", "--checkpoint", str(files["checkpoint"]), "--num_frames", str(FRAMES),
            "--input_size", str(SIZE), "--video", str(files["video"]), "--video_backend", "pyav", "--repeats", "1",
            *extra]


def _printed_error(out: str) -> float:
    line = next(line for line in out.splitlines() if line.startswith("max relative error"))
    return float(line.split(": ")[1].split()[0])


def test_pt2_features_match_the_backbone(files, tmp_path, capsys) -> None:
    path = tmp_path / "backbone.pt2"
    assert main(_args(files, "--pt2", str(path), "--features")) == 0
    out = capsys.readouterr().out
    assert "-> features (1, 64)" in out and _printed_error(out) <= 1e-4
    program = torch.export.load(str(path)).module()
    model = files["model"]
    noise = torch.randn(files["view"].shape, generator=torch.Generator().manual_seed(0))
    for clip in (files["view"], noise):  # the real view, and another input: the graph is no frozen constant
        with torch.no_grad():
            got = program(clip)
            want = model.forward_head(model.forward_features(clip), pre_logits=True)
        assert got.shape == (1, 64)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_onnx_logits_match_eager(files, tmp_path, capsys) -> None:
    path = tmp_path / "classifier.onnx"
    assert main(_args(files, "--onnx", str(path), "--opset", "18")) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "-> logits (1, 5)" in out and _printed_error(out) <= 1e-4
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    noise = torch.randn(files["view"].shape, generator=torch.Generator().manual_seed(0))
    for clip in (files["view"], noise):
        [got] = session.run(None, {"video": clip.numpy()})
        with torch.no_grad():
            want = files["model"](clip).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_error_above_tolerance_exits_1(files, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(export, "run", lambda args: 2e-4)  # what main does with the measured error
    assert main(_args(files, "--pt2", str(tmp_path / "m.pt2"))) == 1
    assert capsys.readouterr().err.strip() == "export.py: error: max relative error 0.0002 is above --tolerance 0.0001"
    assert main(_args(files, "--pt2", str(tmp_path / "m.pt2"), "--tolerance", "3e-4")) == 0


def test_missing_onnxruntime_is_one_line(files, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    assert main(_args(files, "--onnx", str(tmp_path / "m.onnx"))) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "export.py: error: --onnx needs onnxruntime, not installed; pip install onnx onnxscript onnxruntime "
        "(or: pip install -r requirements-extras.txt)"]
    assert not (tmp_path / "m.onnx").exists()


def test_opset_below_17_is_refused(files, tmp_path, capsys) -> None:
    assert main(_args(files, "--onnx", str(tmp_path / "m.onnx"), "--opset", "16")) == 2
    assert "--opset 16: must be >= 17" in capsys.readouterr().err
