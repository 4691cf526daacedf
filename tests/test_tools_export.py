"""tools/export.py: torch.export (.pt2) and ONNX of a tiny classifier, checked on a real h264 file: by default the
fused mixer op / the videomamba custom ops, run in fresh processes with only what the README says a deployment needs;
with --portable standard operators only."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
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
from models.ops import ort_bimamba
from models.ops.selective_scan_cpu import load_cpu_kernel
from tools import export
from tools.export import main
from tools.make_synthetic_dataset import write_video

pytestmark = pytest.mark.usefixtures("torch_backend")  # the eager reference runs the plain PyTorch scan

ROOT = Path(__file__).resolve().parents[1]
FRAMES, SIZE, DEPTH = 4, 32, 2
# A deployment of the .pt2 program: torch, and `import models.ops` for the fused op (README, "Export").
RUN_PT2 = """
import sys, torch
sys.path.insert(0, sys.argv[1])
import models.ops
program = torch.export.load(sys.argv[2]).module()
with torch.no_grad():
    torch.save([program(clip) for clip in torch.load(sys.argv[3])], sys.argv[4])
"""
# A deployment of the ONNX file: onnxruntime and the custom-op library, no torch (README, "Export").
RUN_ONNX = """
import json, sys
import numpy as np, onnxruntime
options = onnxruntime.SessionOptions()
options.register_custom_ops_library(sys.argv[2])
session = onnxruntime.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
clips = np.load(sys.argv[3])
print(json.dumps({"torch": "torch" in sys.modules,
                  "outputs": [session.run(None, {"video": clip[None]})[0].tolist() for clip in clips]}))
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, size=(1, 48, 64, 3))
    write_video(root / "clip.mp4", ((base + np.arange(40)[:, None, None, None] * 4) % 256).astype(np.uint8))
    torch.manual_seed(0)
    model = timm.create_model("videomamba_tiny", img_size=SIZE, num_frames=FRAMES, num_classes=5, depth=DEPTH,
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


def _clips(files: dict[str, Path]) -> list[torch.Tensor]:
    """The real view, and another input: the graph is no frozen constant."""
    return [files["view"], torch.randn(files["view"].shape, generator=torch.Generator().manual_seed(0))]


def _targets(module: torch.nn.Module) -> Counter:
    """The functions called by a graph module and its submodules (autocast regions are submodules)."""
    return Counter(str(node.target) for m in module.modules() if isinstance(m, torch.fx.GraphModule)
                   for node in m.graph.nodes if node.op == "call_function")


def test_pt2_keeps_the_fused_op_and_runs_where_models_ops_is_imported(files, tmp_path, capsys) -> None:
    path = tmp_path / "classifier.pt2"
    assert main(_args(files, "--pt2", str(path))) == 0
    out = capsys.readouterr().out
    assert "-> logits (1, 5)" in out and _printed_error(out) <= 1e-4
    assert "runtime: the videomamba::bimamba_inner op: `import models.ops` before torch.export.load" in out
    targets = _targets(torch.export.load(str(path)).graph_module)
    assert targets["videomamba.bimamba_inner.default"] == DEPTH
    torch.save(_clips(files), tmp_path / "clips.pt")
    done = subprocess.run([sys.executable, "-c", RUN_PT2, str(ROOT), str(path), str(tmp_path / "clips.pt"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for got, clip in zip(torch.load(tmp_path / "out.pt"), _clips(files)):
        with torch.no_grad():
            want = files["model"](clip)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_onnx_uses_the_custom_ops_and_runs_with_onnxruntime_and_the_library_alone(files, tmp_path, capsys) -> None:
    path = tmp_path / "classifier.onnx"
    assert main(_args(files, "--onnx", str(path))) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "-> logits (1, 5)" in out and _printed_error(out) <= 1e-4
    library = str(ort_bimamba.library_path())
    assert f"runtime: the videomamba custom ops: SessionOptions.register_custom_ops_library({library!r})" in out
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    custom = Counter(node.op_type for node in graph.graph.node if node.domain == ort_bimamba.DOMAIN)
    assert custom == {"CausalConvSilu": 2 * DEPTH, "SelectiveScan": 2 * DEPTH}
    clips = _clips(files)
    np.save(tmp_path / "clips.npy", torch.cat(clips).numpy())
    done = subprocess.run([sys.executable, "-c", RUN_ONNX, str(path), library, str(tmp_path / "clips.npy")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["torch"] is False
    for got, clip in zip(result["outputs"], clips):
        with torch.no_grad():
            want = files["model"](clip).numpy()
        np.testing.assert_allclose(np.array(got, dtype=np.float32), want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_portable_pt2_features_match_the_backbone(files, tmp_path, capsys) -> None:
    path = tmp_path / "backbone.pt2"
    assert main(_args(files, "--pt2", str(path), "--features", "--portable")) == 0
    out = capsys.readouterr().out
    assert "-> features (1, 64)" in out and _printed_error(out) <= 1e-4
    assert "runtime: standard operators only" in out
    program = torch.export.load(str(path)).module()
    assert not [t for t in _targets(program) if "videomamba" in t]
    model = files["model"]
    noise = torch.randn(files["view"].shape, generator=torch.Generator().manual_seed(0))
    for clip in (files["view"], noise):  # the real view, and another input: the graph is no frozen constant
        with torch.no_grad():
            got = program(clip)
            want = model.forward_head(model.forward_features(clip), pre_logits=True)
        assert got.shape == (1, 64)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_portable_onnx_logits_match_eager(files, tmp_path, capsys) -> None:
    path = tmp_path / "classifier.onnx"
    assert main(_args(files, "--onnx", str(path), "--opset", "18", "--portable")) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "-> logits (1, 5)" in out and _printed_error(out) <= 1e-4
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    noise = torch.randn(files["view"].shape, generator=torch.Generator().manual_seed(0))
    for clip in (files["view"], noise):
        [got] = session.run(None, {"video": clip.numpy()})
        with torch.no_grad():
            want = files["model"](clip).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_timed_models_take_turns(monkeypatch) -> None:
    # Runs of 3, 1, 2 s (eager) and 5, 4, 6 s (exported), taking turns.
    calls, clock = [], iter([0, 3, 3, 8, 8, 9, 9, 13, 13, 15, 15, 21])
    monkeypatch.setattr(export.time, "perf_counter", lambda: next(clock))
    timings = export.timings_ms([lambda: calls.append("eager"), lambda: calls.append("exported")], 3)
    assert timings == [(2000, 1000), (5000, 4000)]  # (median, fastest)
    assert calls == ["eager", "exported"] * 4  # a warm-up run of each, then 3 turns


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


def test_missing_runtime_library_is_one_line(files, tmp_path, capsys, monkeypatch) -> None:
    load_cpu_kernel()  # the C++ kernels are there (built with the real compiler), the ONNX Runtime library is not
    capsys.readouterr()
    monkeypatch.setattr(ort_bimamba, "_path", None)
    monkeypatch.setenv("VIDEOMAMBA_ORT_OPS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert main(_args(files, "--onnx", str(tmp_path / "m.onnx"))) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "export.py: error: --onnx: no C++ compiler 'no-such-compiler' found (install g++, or set $CXX); --portable "
        "exports standard operators without it"]
    assert not (tmp_path / "m.onnx").exists()


def test_onnxruntime_threads_wait_as_openmp_is_told(monkeypatch) -> None:
    library = ort_bimamba.library_path()
    for policy, spinning in (("passive", "0"), ("active", "1")):
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
        options = export.session_options(library)
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == spinning
        assert options.intra_op_num_threads == torch.get_num_threads()
