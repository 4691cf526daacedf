"""The fused mixer in ONNX (models/ops/ort_bimamba.py): the exporter's translation into the videomamba custom ops and
the ONNX Runtime library that runs them, against the composed reference; the ops' checks; the library's build."""
import logging

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper

from models.ops import InnerParams, bimamba_inner_fn, bimamba_inner_ref, ort_bimamba
from models.ops.ort_bimamba import DOMAIN, OrtLibraryError, library_path, translation_table


class Inner(nn.Module):
    """bimamba_inner_fn with fixed parameters (None where a bias is absent)."""

    def __init__(self, params: InnerParams) -> None:
        super().__init__()
        self.present = [t is not None for t in params.flat()]
        self.tensors = nn.ParameterList([t for t in params.flat() if t is not None])

    def params(self) -> InnerParams:
        tensors = iter(self.tensors)
        return InnerParams.from_flat([next(tensors) if present else None for present in self.present])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return bimamba_inner_fn(hidden, self.params(), backend="cpp")


def random_params(d_model, d_inner, n_state, rank, width, conv_bias, proj_bias, seed=0) -> InnerParams:
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=0.3):
        return torch.randn(*shape, generator=gen) * scale

    def direction():
        return (randn(d_inner, width), randn(d_inner) if conv_bias else None, randn(rank + 2 * n_state, d_inner),
                randn(d_inner, rank), randn(d_inner, scale=0.5) - 1.0,
                -torch.exp(randn(d_inner, n_state, scale=0.5)), randn(d_inner))

    flat = (randn(2 * d_inner, d_model), randn(2 * d_inner) if proj_bias else None, *direction(), *direction(),
            randn(d_model, d_inner), randn(d_model) if proj_bias else None)
    return InnerParams.from_flat(flat)


def session(path, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.register_custom_ops_library(str(library_path()))
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


CASES = {
    # channels not a multiple of the vector width, N off the specialised 16, no conv bias: one thread's work
    "small": dict(batch=1, length=70, d_model=8, d_inner=20, n_state=5, rank=3, width=3, conv_bias=False,
                  proj_bias=True),
    # large enough for both ops to split their work over ONNX Runtime's threads; several scan chunks, 2 clips
    "threaded": dict(batch=2, length=200, d_model=24, d_inner=100, n_state=16, rank=4, width=4, conv_bias=True,
                     proj_bias=False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_exported_mixer_matches_the_composed_reference(case, tmp_path):
    c = CASES[case]
    params = random_params(c["d_model"], c["d_inner"], c["n_state"], c["rank"], c["width"], c["conv_bias"],
                           c["proj_bias"])
    module = Inner(params).eval()
    hidden = torch.randn(c["batch"], c["length"], c["d_model"], generator=torch.Generator().manual_seed(1))
    path = tmp_path / "mixer.onnx"
    with torch.no_grad():
        torch.onnx.export(module, (hidden,), str(path), dynamo=True, opset_version=18, input_names=["hidden"],
                          external_data=False, optimize=False, verbose=False,
                          custom_translation_table=translation_table())
        want = bimamba_inner_ref(hidden.double(), InnerParams.from_flat(
            [None if t is None else t.double() for t in params.flat()]), backend="ref").float()
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    custom = sorted(n.op_type for n in graph.graph.node if n.domain == DOMAIN)
    assert custom == ["CausalConvSilu", "CausalConvSilu", "SelectiveScan", "SelectiveScan"]
    assert not {"Loop", "Scan"} & {n.op_type for n in graph.graph.node}
    [one] = session(path, 1).run(None, {"hidden": hidden.numpy()})
    [two] = session(path, 2).run(None, {"hidden": hidden.numpy()})
    np.testing.assert_array_equal(one, two)  # each work item is computed alone: the split changes nothing
    np.testing.assert_allclose(one, want.numpy(), rtol=0, atol=2e-5 * float(want.abs().max()))


def scan_model(path, with_gate: bool) -> None:
    """One SelectiveScan node whose inputs are graph inputs (y_in and the gate only `with_gate`)."""
    names = ["u", "proj", "dt_weight", "dt_bias", "A", "D"] + (["y_in", "gate"] if with_gate else [])
    node = helper.make_node("SelectiveScan", names, ["y"], domain=DOMAIN, reverse=1)
    graph = helper.make_graph([node], "scan", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                               for n in names],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)])
    onnx.save(model, str(path))


def scan_inputs(batch=1, length=9, dim=6, n_state=4, rank=2, seed=0) -> dict:
    gen = np.random.default_rng(seed)
    f = np.float32
    return {"u": gen.normal(size=(batch, length, dim)).astype(f),
            "proj": gen.normal(size=(batch, length, rank + 2 * n_state)).astype(f),
            "dt_weight": gen.normal(size=(dim, rank)).astype(f), "dt_bias": gen.normal(size=dim).astype(f),
            "A": -np.exp(gen.normal(size=(dim, n_state))).astype(f), "D": gen.normal(size=dim).astype(f)}


def reference_scan(x: dict, reverse: bool) -> np.ndarray:
    """The recurrence, step by step in fp64: h = exp(delta A) h + delta u B, y = C.h + D u."""
    u, proj = x["u"].astype(np.float64), x["proj"].astype(np.float64)
    rank, n_state = x["dt_weight"].shape[1], x["A"].shape[1]
    y = np.zeros_like(u)
    for b in range(u.shape[0]):
        h = np.zeros((u.shape[2], n_state))
        for t in (reversed(range(u.shape[1])) if reverse else range(u.shape[1])):
            dt_low, B, C = proj[b, t, :rank], proj[b, t, rank:rank + n_state], proj[b, t, rank + n_state:]
            delta = np.logaddexp(0.0, x["dt_weight"] @ dt_low + x["dt_bias"])
            h = np.exp(delta[:, None] * x["A"]) * h + (delta * u[b, t])[:, None] * B[None]
            y[b, t] = h @ C + x["D"] * u[b, t]
    return y


def test_scan_adds_y_in_and_applies_the_gate(tmp_path):
    scan_model(tmp_path / "gated.onnx", with_gate=True)
    scan_model(tmp_path / "plain.onnx", with_gate=False)
    x = scan_inputs()
    y_in = np.random.default_rng(5).normal(size=x["u"].shape).astype(np.float32)
    gate = np.random.default_rng(6).normal(size=x["u"].shape).astype(np.float32)
    [plain] = session(tmp_path / "plain.onnx", 1).run(None, x)
    [gated] = session(tmp_path / "gated.onnx", 1).run(None, {**x, "y_in": y_in, "gate": gate})
    scanned = reference_scan(x, reverse=True)
    np.testing.assert_allclose(plain, scanned, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gated, (y_in + scanned) * gate / (1 + np.exp(-gate)), rtol=1e-5, atol=1e-5)


def test_bad_inputs_fail_with_the_ops_message(tmp_path):
    scan_model(tmp_path / "plain.onnx", with_gate=False)
    run = session(tmp_path / "plain.onnx", 1).run
    x = scan_inputs()
    with pytest.raises(Exception, match="videomamba.SelectiveScan: A must be <= 0"):
        run(None, {**x, "A": -x["A"]})
    with pytest.raises(Exception, match=r"videomamba.SelectiveScan: proj must be \(batch, L, rank \+ 2N\), got "
                                        r"\(1, 9, 9\)"):
        run(None, {**x, "proj": x["proj"][..., :9]})


def test_library_is_compiled_once_into_its_cache(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(ort_bimamba, "_path", None)
    monkeypatch.setenv("VIDEOMAMBA_ORT_OPS_DIR", str(tmp_path))
    with caplog.at_level(logging.INFO, logger="models.ops.ort_bimamba"):
        built = library_path()
        assert library_path() == built
    assert built == tmp_path / f"libvideomamba_ort_ops-{ort_bimamba.build_key()}.so" and built.is_file()
    assert [r.getMessage().split(" into ")[0] for r in caplog.records] == [
        "compiling the ONNX Runtime custom-op library"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [built.name]  # no scratch file left behind


def test_a_missing_compiler_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(ort_bimamba, "_path", None)
    monkeypatch.setenv("VIDEOMAMBA_ORT_OPS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    with pytest.raises(OrtLibraryError) as info:
        library_path()
    assert str(info.value) == f"no C++ compiler '{tmp_path / 'no-such-c++'}' found (install g++, or set $CXX)"
    assert not (tmp_path / "cache").exists()
