"""benchmarks/throughput.py's plan and goal lines (the timing itself is measured, never asserted, in tests)."""
from benchmarks.common import MIB, cpu_identity
from benchmarks.throughput import archs_to_run, parse_args, plan
from benchmarks.throughput_report import GOALS, Row, goal_lines, results_table


def _result(seconds, step_mib):
    return {"median_s": seconds, "peak_rss": (1000 + step_mib) * MIB, "setup_rss": 1000 * MIB}


def test_goal_lines_pass_and_fail_on_the_measured_ratios():
    vm, vit = "videomamba_tiny", "vit_tiny_joint"
    results = {
        (vm, 16, "train", "idle"): _result(1.0, 400), (vit, 16, "train", "idle"): _result(3.0, 500),
        (vm, 64, "infer", "idle"): _result(2.0, 100), (vit, 64, "infer", "idle"): _result(10.0, 150),
        (vm, 8, "infer", "idle"): _result(0.2, 40),
        (vm, 16, "train", "bf16"): _result(1.2, 400), (vm, 64, "infer", "bf16"): _result(1.5, 90),
    }
    lines = dict(zip([g.text for g in GOALS], goal_lines(results)))
    assert lines["Ti training step 16x224: >= 2.5x faster than ViT-Ti"].endswith("= 3.00x (PASS)")
    assert lines["Ti training step 16x224: step memory <= 0.75x ViT-Ti's"].endswith("= 0.80 (FAIL)")
    assert lines["Ti inference 64x224: >= 5.5x faster than ViT-Ti"].endswith("= 5.00x (FAIL)")
    assert lines["Ti inference 64x224: peak memory above set-up <= ViT-Ti's"].endswith("(PASS)")
    assert "= 10.00x (FAIL)" in lines["Ti inference time 8 -> 64 frames: <= 8.5x (linear: 8x)"]
    assert lines["Ti training step 16x224 under bf16 autocast: not slower than fp32"].endswith("= 1.20x (FAIL)")
    assert lines["Ti inference 64x224 under bf16 autocast: not slower than fp32"].endswith("= 0.75x (PASS)")
    assert lines["Ti inference 64x224 beside one busy process: >= 4x faster than ViT-Ti"].endswith("not measured")


def test_bf16_rows_compare_both_models_in_bf16_and_note_videomamba_fp32():
    vm, vit = "videomamba_tiny", "vit_tiny_joint"
    results = {(vm, 16, "train", "idle"): _result(2.0, 400), (vit, 16, "train", "idle"): _result(3.0, 500),
               (vm, 16, "train", "bf16"): _result(1.0, 300), (vit, 16, "train", "bf16"): _result(1.5, 450)}
    flops = {(vm, 16): 29.0, (vit, 16): 62.5}
    table = results_table(results, [Row("tiny", "train", 16, "bf16")], {"tiny": (vm, vit)}, flops, peak=100.0)
    cells = [c.strip() for c in table.splitlines()[-1].strip("|").split("|")]
    assert cells[3:7] == ["bf16", "1.000", "1.500", "1.50"] and cells[-1] == "fp32 2.000 s"
    assert cells[8] == "125.0 (125%)" and cells[10:12] == ["450", "0.67"]  # the ViT's bf16 rate and memory
    assert archs_to_run(Row("tiny", "train", 16, "bf16"), quick=True) == (vm, vit)
    assert archs_to_run(Row("tiny", "train", 16, "compiled"), quick=False) == (vm,)


def test_quick_plans_every_goal_row_but_busy_and_compiled():
    rows = {(r.mode, r.frames, r.condition) for r in plan(parse_args(["--quick"]))}
    assert rows == {("train", 16, "idle"), ("infer", 8, "idle"), ("infer", 64, "idle"), ("train", 16, "bf16"),
                    ("infer", 64, "bf16")}
    full = {(r.mode, r.frames, r.condition) for r in plan(parse_args([]))}
    assert ("infer", 64, "busy") in full and ("train", 16, "compiled") in full and rows < full


def test_cpu_identity_names_the_vector_isa():
    text = cpu_identity()
    assert any(isa in text for isa in ("AVX-512", "AVX2", "no AVX2"))
