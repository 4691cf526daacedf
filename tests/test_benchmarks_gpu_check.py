"""benchmarks/gpu_check.py without a GPU: the one-line skip (a real run of the script), its checks on CPU through the
CUDA glue over the kernels' CPU stand-ins (tests/cuda_standins.py), failure handling of the per-check processes, and
the report."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.gpu_check_cases import ModelRun, agreement, check_mixer, run_model, tokens
from models.ops import bimamba_inner_fn, bimamba_inner_ref
from models.ops.cuda_glue import load_fused_kernels

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def test_without_a_gpu_it_prints_one_line_and_exits_0(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    run = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--json", str(tmp_path / "r.json")], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    reason = "no CUDA device (torch.cuda.is_available() is False)"
    assert run.stdout.splitlines() == [f"gpu_check: skipped: {reason}"]
    assert json.loads((tmp_path / "r.json").read_text()) == {"skipped": reason, "exit_status": 0}


def test_skip_names_the_missing_kernels_and_the_install_command():
    reason = gpu_check.skip_reason(True, load_fused_kernels)  # the kernels are not installed here
    assert "ModuleNotFoundError: No module named" in reason
    assert reason.endswith("install them with `pip install --no-build-isolation -r requirements-cuda.txt`")
    assert gpu_check.skip_reason(True, lambda: None) is None


# ---- the mixer check, on CPU through the CUDA glue over the stand-in kernels ------------------------------------

def standin_fused(hidden, params):
    """The fused op as a GPU runs it (the `cuda_glue_on_cpu` fixture routes it through the CUDA glue and the
    stand-in kernels): autocast at its boundary, the backward outside autocast (after the region, as in training)."""
    return bimamba_inner_fn(hidden, params, backend="cpp")


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


def broken_fused(hidden, params):
    """The composed path with the gradient of the backward direction's A doubled."""
    broken = params._replace(backward=params.backward._replace(A=_ScaleGrad.apply(params.backward.A)))
    return bimamba_inner_ref(hidden, broken, backend="torch")


# d_model 16: d_inner 32, so the conv gets the channels-last view of the in_proj output, as at every real width.
@pytest.mark.parametrize("length, precision, d_state", [(23, "fp32", 16), (23, "bf16", 16), (2049, "fp32", 4)])
def test_mixer_check_passes_through_the_cuda_glue(length, precision, d_state, cuda_glue_on_cpu):
    result = check_mixer(16, length, 1 if length > 2048 else 2, precision, CPU, fused=standin_fused, d_state=d_state)
    assert result["status"] == "PASS", result["reason"]
    names = {"out", "d hidden", "d in_proj_weight", "d out_proj_weight"} | {
        f"d {d}.{p}" for d in ("forward", "backward")
        for p in ("conv_weight", "conv_bias", "x_proj_weight", "dt_proj_weight", "dt_proj_bias", "A", "D")}
    assert set(result["errors"]) == set(result["composed_errors"]) == names
    assert max(result["errors"].values()) < gpu_check.TOLERANCES[precision]


def test_a_wrong_gradient_fails_the_check_and_the_exit_status():
    result = check_mixer(16, 23, 2, "fp32", CPU, fused=broken_fused)
    assert result["status"] == "FAIL"
    assert result["reason"].startswith("d backward.A: rel err 1.00e+00 > 0.0001")
    assert result["errors"]["d forward.A"] < 1e-4  # the other gradients are still right
    upcast = check_mixer(16, 23, 2, "bf16", CPU, fused=lambda h, p: bimamba_inner_ref(h, p, "torch").float())
    assert upcast["status"] == "FAIL"
    assert upcast["reason"] == "output dtype torch.float32, the composed path gives torch.bfloat16"
    rows = [{"id": "mixer-x", **result}]
    assert gpu_check.exit_status(rows) == 1
    assert "FAIL mixer-x: d backward.A: rel err 1.00e+00" in gpu_check.report(HEAD, rows, [])


# ---- the per-check processes --------------------------------------------------------------------------------------

def python(code):
    return [sys.executable, "-c", code]


def test_child_results_crashes_and_timeouts_become_rows():
    ok = gpu_check.run_child(python(f"print('noise'); print({gpu_check.RESULT_PREFIX!r} + "
                                    f"{json.dumps(json.dumps({'status': 'PASS', 'reason': ''}))})"), timeout=60)
    assert ok["status"] == "PASS"
    crash = gpu_check.run_child(python("import sys; print('x', file=sys.stderr); "
                                       "sys.exit('RuntimeError: CUDA error: misaligned address')"), timeout=60)
    assert crash["status"] == "FAIL"
    assert crash["reason"] == "exit status 1: RuntimeError: CUDA error: misaligned address"
    # A hung check that started a worker (as torch.compile does) holding the output pipe: both are killed.
    hang = gpu_check.run_child(python("import subprocess, sys, time; "
                                      "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                                      "time.sleep(60)"), timeout=0.5)
    assert hang["status"] == "FAIL" and hang["reason"] == "timed out after 0.5 s"
    assert hang["wall_s"] < 30  # not waited for


def test_a_check_process_reports_an_exception_as_its_first_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", torch.backends.cudnn.allow_tf32)  # run_one sets it

    def fault(check, device):
        raise RuntimeError("CUDA error: misaligned address\nCUDA kernel errors might be asynchronously reported")

    monkeypatch.setattr(gpu_check, "run_check", fault)
    gpu_check.run_one("mixer-Ti-8x224-bf16")
    result = gpu_check.parse_result(capsys.readouterr().out)
    assert result == {"status": "FAIL", "reason": "RuntimeError: CUDA error: misaligned address"}


def test_plan_covers_the_issue_sizes():
    ids = [gpu_check.check_id(c) for c in gpu_check.plan()]
    assert len(ids) == len(set(ids)) == 26
    assert tokens(8) == 1569 and tokens(64) == 12545  # 64 frames: 7 scan chunks of 2048
    assert {f"mixer-{s}-{f}x224-{p}" for s in ("Ti", "S") for f in (8, 64) for p in ("fp32", "fp16", "bf16")} < set(ids)
    assert "train-videomamba_tiny-16x224-b8-fused-bf16-compiled" in ids
    quick = [gpu_check.check_id(c) for c in gpu_check.plan(quick=True)]
    assert quick == [f"mixer-Ti-8x224-{p}" for p in ("fp32", "fp16", "bf16")] + [
        f"train-videomamba_tiny-16x224-b8-fused-{p}" for p in ("fp32", "bf16")]


# ---- whole-model runs and the report --------------------------------------------------------------------------------

TINY = dict(depth=2, embed_dim=64)


def test_model_runs_on_cpu_and_agree_across_precisions():
    runs = [ModelRun("videomamba_tiny", "train", 2, 2, p, "composed", img_size=32) for p in ("fp32", "bf16")]
    fp32, bf16 = (run_model(r, CPU, repeats=1, warmup=0, **TINY) for r in runs)
    for result in (fp32, bf16):
        assert result["status"] == "PASS" and result["time_ms"] > 0 and result["peak_mib"] is None
        assert len(result["logits"]) == 2 * 400 and len(result["grad"]) == 512
    assert agreement(bf16, fp32, "bf16")["status"] == "PASS"
    wrong = {**fp32, "grad": [2 * g for g in fp32["grad"]]}
    checked = agreement(bf16, wrong, "bf16")
    assert checked["status"] == "FAIL" and checked["reason"].startswith("grad differ from the reference run by")
    vit = run_model(ModelRun("vit_tiny_joint", "infer", 2, 2, "bf16", img_size=32), CPU, repeats=1, warmup=0,
                    depth=2)
    assert vit["status"] == "PASS" and len(vit["logits"]) == 800 and "grad" not in vit


HEAD = {"gpu": "NVIDIA H200, sm_90, 140 GiB", "driver": "570.1", "cuda_runtime": "13.0", "torch": "2.11.0",
        "python": "3.12.3", "mamba_ssm": "2.3.2.post1", "selective_scan_cuda": "/b/s.so",
        "causal_conv1d": "1.7.0", "causal_conv1d_cuda": "/b/c.so", "cpu": "AMD EPYC, 16 logical CPUs"}


def model_result(time_ms, peak_mib, logits, status="PASS"):
    return {"status": status, "reason": "", "time_ms": time_ms, "compile_s": None, "peak_mib": peak_mib,
            "logits": logits}


def test_report_agreement_and_goals():
    vm, vit = "videomamba_tiny", "vit_tiny_joint"
    checks = [gpu_check.MixerCase("Ti", 8, "bf16"),
              ModelRun(vm, "train", 16, 8, "fp32", "composed"), ModelRun(vm, "train", 16, 8, "bf16", "fused"),
              ModelRun(vit, "train", 16, 8, "bf16"), ModelRun(vm, "infer", 64, 4, "bf16", "fused"),
              ModelRun(vit, "infer", 64, 4, "bf16")]
    mixer = {"status": "PASS", "reason": "", "tol": 0.05,
             "errors": {"out": 1e-3, "d hidden": 2e-3, "d forward.A": 4e-3},
             "composed_errors": {"out": 1e-3, "d forward.A": 3e-3}}
    results = [mixer, model_result(150.0, 3000.0, [1.0, 2.0]), model_result(60.0, 1900.0, [1.0, 2.1]),
               model_result(34.6, 2000.0, [0.0]), model_result(25.0, 200.0, [0.0]),
               model_result(19.6, 268.0, [0.0])]
    results = [{"id": gpu_check.check_id(c), **r} for c, r in zip(checks, results)]
    results = gpu_check.with_agreement(checks, results)
    assert results[1]["note"] == "reference"
    assert results[2]["status"] == "PASS" and results[2]["errors"]["logits"] == pytest.approx(0.05)
    assert results[2]["note"] == "vs composed fp32"
    assert "errors" not in results[4]  # no fp32 reference run for inference
    goals = gpu_check.goal_lines(checks, results)
    assert goals == ["training step 16x224: bf16 fused <= 2x ViT-Ti bf16 time: PASS (60.0 vs 34.6 ms)",
                     "training step 16x224: bf16 fused <= ViT-Ti bf16 peak memory: PASS (1900 vs 2000 MiB)",
                     "inference 64x224: bf16 fused faster than ViT-Ti bf16 time: FAIL (25.0 vs 19.6 ms)",
                     "inference 64x224: bf16 fused <= ViT-Ti bf16 peak memory: PASS (200 vs 268 MiB)"]
    assert gpu_check.goal_lines(checks[:3], results[:3]) == [
        "training step 16x224: bf16 fused <= 2x ViT-Ti bf16 time: n/a (a run is missing or failed)",
        "inference 64x224: bf16 fused faster than ViT-Ti bf16 time: n/a (a run is missing or failed)"]
    text = gpu_check.report(HEAD, results, goals)
    lines = text.splitlines()
    assert lines[0] == "GPU: NVIDIA H200, sm_90, 140 GiB; driver 570.1, CUDA runtime 13.0, torch 2.11.0, Python 3.12.3"
    assert "mamba-ssm 2.3.2.post1, selective_scan_cuda /b/s.so; causal-conv1d 1.7.0" in lines[1]
    row = next(line for line in lines if line.startswith("| mixer-Ti-8x224-bf16"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["mixer-Ti-8x224-bf16", "PASS", "1.0e-03", "4.0e-03 (forward.A)", "3.0e-03", "0.05", "-", "-", ""]
    row = next(line for line in lines if line.startswith("| train-videomamba_tiny-16x224-b8-fused-bf16"))
    assert [c.strip() for c in row.strip("|").split("|")][1:] == [
        "PASS", "5.0e-02", "-", "-", "0.1", "60.0 ms", "1900 MiB", "vs composed fp32"]
    assert lines[-1] == "all 6 checks passed or were skipped: exit status 0"
    assert "Goals of issue 23 (reported, not part of the exit status):" in lines


def test_kernel_versions_from_a_source_folder(tmp_path, monkeypatch):
    package = tmp_path / "fake_kernel_pkg"
    package.mkdir()
    (package / "__init__.py").write_text('__version__ = "1.7.0"\nraise ImportError("never imported")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert gpu_check.package_version("fake-kernel-pkg", "fake_kernel_pkg") == f"1.7.0 (from {package})"
    assert gpu_check.package_version("no-such-dist", "no_such_module") == "not found"


def test_main_runs_every_check_in_a_child_and_exits_1_on_a_failure(monkeypatch, tmp_path, capsys):
    commands = []

    def child(cmd, timeout):
        commands.append(cmd)
        name = cmd[-1]
        if name == "mixer-Ti-8x224-bf16":
            return {"status": "FAIL", "reason": "RuntimeError: CUDA error: misaligned address"}
        if name.startswith("mixer"):
            return {"status": "PASS", "reason": "", "tol": 1e-4, "errors": {"out": 1e-7, "d hidden": 1e-6},
                    "composed_errors": {"out": 1e-7}}
        return {**model_result(50.0, 1000.0, [1.0, 2.0]), "grad": [1.0]}

    monkeypatch.setattr(gpu_check, "skip_reason", lambda available, load: None)
    monkeypatch.setattr(gpu_check, "header", lambda: HEAD)
    monkeypatch.setattr(gpu_check, "run_child", child)
    assert gpu_check.main(["--quick", "--json", str(tmp_path / "out.json"), "--timeout", "7"]) == 1
    ids = [gpu_check.check_id(c) for c in gpu_check.plan(quick=True)]
    assert sorted(c[-1] for c in commands[:3]) == sorted(ids[:3])  # the mixer checks, side by side
    assert [c[-2:] for c in commands[3:]] == [["--one", name] for name in ids[3:]]  # then the timed runs, in order
    assert commands[0][:2] == [sys.executable, str(REPO / "benchmarks" / "gpu_check.py")]
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["exit_status"] == 1 and len(saved["results"]) == 5 and saved["header"] == HEAD
    assert "logits" not in saved["results"][-1]
    out = capsys.readouterr().out
    assert "FAIL mixer-Ti-8x224-bf16: RuntimeError: CUDA error: misaligned address" in out
    assert out.rstrip().endswith("1 of 5 checks failed: exit status 1")
