"""tools/flops.py: the explicit scan/conv counts and the dense count match hand computations on a tiny model."""

import timm
import torch

import models  # noqa: F401  (registers the architectures)
import models.mamba_mixer as mamba_mixer
from models import ops
from models.ops import bimamba_inner
from models.vit_joint import VIT_JOINT_SIZES, vit_joint
from tools.flops import build_on_meta, causal_conv1d_flops, count_flops, selective_scan_flops
from tools.flops import main as flops_main

# Tiny VideoMamba: 2 layers of width 192 (d_inner 384, N 16, dt_rank 12, conv width 4), 2 frames of 32x32
# -> 2 x 2 x 2 patches + cls = 9 tokens.
DEPTH, DIM, D_INNER, N, RANK, WIDTH, FRAMES, IMG, CLASSES = 2, 192, 384, 16, 12, 4, 2, 32, 5
L = 1 + FRAMES * (IMG // 16) ** 2


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("videomamba_tiny", img_size=IMG, num_frames=FRAMES, depth=DEPTH,
                             num_classes=CLASSES).eval()


def test_scan_and_conv_formulas_by_hand():
    # 9·B·D·L·N + B·D·L per optional D / z, with B=2, D=3, L=5, N=4.
    assert selective_scan_flops(2, 3, 5, 4, with_d=False, with_z=False) == 9 * 2 * 3 * 5 * 4 == 1080
    assert selective_scan_flops(2, 3, 5, 4, with_d=True, with_z=False) == 1080 + 30
    assert selective_scan_flops(2, 3, 5, 4, with_d=True, with_z=True) == 1080 + 60
    assert causal_conv1d_flops(2, 3, 5, 4) == 120


def test_count_matches_hand_computation_and_restores_ops():
    report = count_flops(tiny_model(), torch.randn(1, 3, FRAMES, IMG, IMG))

    calls = DEPTH * 2  # two directions per layer
    assert report.scan_calls == calls
    assert report.scan == calls * (9 * D_INNER * L * N + D_INNER * L)  # the mixer passes D; it gates the sum itself
    assert report.conv1d == calls * D_INNER * L * WIDTH

    in_proj, out_proj = DIM * 2 * D_INNER, D_INNER * DIM
    x_proj, dt_proj = D_INNER * (RANK + 2 * N), RANK * D_INNER
    per_layer = L * (in_proj + out_proj + 2 * x_proj + 2 * dt_proj)
    patch_embed = FRAMES * (IMG // 16) ** 2 * 3 * 16 * 16 * DIM
    head = DIM * CLASSES
    assert report.dense == DEPTH * per_layer + patch_embed + head
    assert report.paper == DEPTH * L * (in_proj + out_proj) + patch_embed + head
    assert report.total == report.dense + report.scan + report.conv1d
    assert report.params == sum(p.numel() for p in tiny_model().parameters())

    # The real ops are back in place after counting.
    assert mamba_mixer.bimamba_inner_fn is ops.bimamba_inner_fn
    assert bimamba_inner.selective_scan_fn is ops.selective_scan_fn
    assert bimamba_inner.causal_conv1d_fn is ops.causal_conv1d_fn


def test_meta_device_count_equals_cpu_count():
    cpu = count_flops(tiny_model(), torch.randn(1, 3, FRAMES, IMG, IMG))
    meta_model = build_on_meta("videomamba_tiny", FRAMES, IMG, depth=DEPTH)
    meta = count_flops(meta_model, torch.empty(1, 3, FRAMES, IMG, IMG, device="meta"))
    # Same architecture except the 400-class head of build_on_meta.
    assert meta.scan == cpu.scan and meta.conv1d == cpu.conv1d
    assert meta.dense - cpu.dense == DIM * (400 - CLASSES)


def test_baselines_are_counted_without_the_benchmarks(capsys):
    """``--baselines`` counts the joint-attention ViTs of ``models/vit_joint.py`` (``tests/test_imports.py``: and
    ``tools/`` does not import ``benchmarks/``, which imports it)."""
    flops_main(["--models", "videomamba_tiny", "--frames", "2", "--img_size", "32", "--baselines"])
    rows = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in capsys.readouterr().out.splitlines()
            if line.startswith("| vit_") or line.startswith("| videomamba_")}
    assert set(rows) == {"videomamba_tiny", "vit_tiny_joint", "vit_small_joint"}
    for name in VIT_JOINT_SIZES:  # the parameter column
        with torch.device("meta"):
            params = sum(p.numel() for p in vit_joint(name, 2, 32).parameters())
        assert rows[name] == f"{params / 1e6:.1f}" and params > 5e6
