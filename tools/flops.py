"""Parameters and GFLOPs per view of the VideoMamba models, in the convention of the paper's tables.

Convention (fvcore, which the official code used): one multiply-add counts as one FLOP. The dense part
(Linear, matmul, Conv3d patch embedding) is counted by ``torch.utils.flop_counter.FlopCounterMode``
(which counts 2 per multiply-add, so it is halved). The mixer's fused inner op (in_proj to out_proj) is opaque to
such counters, so during counting it is replaced by its composed
reference, `models.ops.bimamba_inner_ref`, and the selective scan and the depthwise causal conv1d inside that are
replaced by shape recorders and counted explicitly, per call (one call = one direction of one layer):

* scan: 9·B·D·L·N (discretisation exp(δA), δ·B·u, the state update and the C readout), plus B·D·L for
  the D skip and B·D·L for a z gate when the scan is given one: the formula of the fvcore handles used by
  Vim/VMamba (state-spaces/mamba issue #110). Our mixer gates the sum of its two directions once, outside
  the scan: like every elementwise op, that product is not counted;
* causal conv1d: B·D·L·W multiply-adds (kernel width W).

The official fvcore numbers saw only ``in_proj``, ``out_proj``, the patch embedding and the head (the
official fused Mamba inner function hid the rest); the "paper" column reproduces that subset, e.g. VideoMamba-Ti
1.1G at 1x224 (ImageNet table) and 17G at 16x224.

    python tools/flops.py                            # Ti/S/M at 8x224
    python tools/flops.py --frames 8 16 32 64 --models videomamba_tiny
    python tools/flops.py --frames 8 64 --baselines   # with the joint-attention ViT-Ti/S (models/vit_joint.py)
"""
import sys
from pathlib import Path

# Make the repository root importable when run as `python tools/flops.py`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from models import ops

SCAN_FLOPS_PER_STATE = 9
# Modules whose cost the official fvcore count included, besides the mixers' in_proj and out_proj (counted inside
# the inner op).
PAPER_MODULE_NAMES = ("patch_embed", "head")


def selective_scan_flops(batch: int, d_inner: int, seqlen: int, d_state: int, with_d: bool = True,
                         with_z: bool = False) -> int:
    """FLOPs of one selective scan u (B, D, L) with state size N: 9·B·D·L·N (+ B·D·L for D, + B·D·L for z)."""
    flops = SCAN_FLOPS_PER_STATE * batch * d_inner * seqlen * d_state
    if with_d:
        flops += batch * d_inner * seqlen
    if with_z:
        flops += batch * d_inner * seqlen
    return flops


def causal_conv1d_flops(batch: int, dim: int, seqlen: int, width: int) -> int:
    """Multiply-adds of a depthwise causal conv1d x (B, D, L) with kernel (D, W): B·D·L·W."""
    return batch * dim * seqlen * width


@dataclass
class FlopReport:
    """Counts for one forward pass (multiply-add = 1 FLOP)."""

    params: int
    dense: int  # Linear / matmul / conv seen by FlopCounterMode
    scan: int
    conv1d: int
    paper: int  # in_proj + out_proj + patch embedding + head: the subset the official fvcore count saw
    scan_calls: int

    @property
    def total(self) -> int:
        return self.dense + self.scan + self.conv1d


class _ExplicitOps:
    """Swap the scan and conv1d for zero-returning shape recorders in ``models.*`` while counting."""

    def __init__(self) -> None:
        self.scan = 0
        self.conv1d = 0
        self.scan_calls = 0
        self.projections = 0  # multiply-adds of in_proj and out_proj inside the mixer's inner op

    def bimamba_inner_fn(self, hidden: Tensor, params: ops.InnerParams, backend: str | None = None) -> Tensor:
        """The composed reference of the inner op (its scan and conv calls reach the recorders); records the
        in_proj and out_proj multiply-adds, which the per-module count cannot attribute to those modules inside
        the op."""
        batch, length, _ = hidden.shape
        self.projections += batch * length * (params.in_proj_weight.numel() + params.out_proj_weight.numel())
        return ops.bimamba_inner_ref(hidden, params, backend=backend)

    def selective_scan_fn(self, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                          z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                          return_last_state: bool = False,
                          backend: str | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Record one scan u (B, D, L), A (D, N); return zeros (B, D, L) (and a (B, D, N) last state)."""
        batch, d_inner, seqlen = u.shape
        self.scan += selective_scan_flops(batch, d_inner, seqlen, A.shape[-1], D is not None, z is not None)
        self.scan_calls += 1
        out = u.new_zeros(u.shape)
        return (out, u.new_zeros(batch, d_inner, A.shape[-1])) if return_last_state else out

    def causal_conv1d_fn(self, x: Tensor, weight: Tensor, bias: Tensor | None = None,
                         activation: str | None = None, reverse: bool = False, backend: str | None = None) -> Tensor:
        """Record one conv x (B, D, L), weight (D, W); return zeros (B, D, L)."""
        batch, dim, seqlen = x.shape
        self.conv1d += causal_conv1d_flops(batch, dim, seqlen, weight.shape[-1])
        return x.new_zeros(x.shape)

    @contextlib.contextmanager
    def installed(self) -> Iterator["_ExplicitOps"]:
        """Replace every ``models.*`` module attribute bound to the real ops; restore them on exit."""
        originals = {"selective_scan_fn": ops.selective_scan_fn, "causal_conv1d_fn": ops.causal_conv1d_fn,
                     "bimamba_inner_fn": ops.bimamba_inner_fn}
        swapped = []
        for mod_name, module in list(sys.modules.items()):
            if module is None or not (mod_name == "models" or mod_name.startswith("models.")):
                continue
            for attr, real in originals.items():
                if getattr(module, attr, None) is real:
                    swapped.append((module, attr, real))
                    setattr(module, attr, getattr(self, attr))
        if not swapped:
            raise RuntimeError("no module under models.* imports models.ops.selective_scan_fn / causal_conv1d_fn / "
                               "bimamba_inner_fn; the scan cannot be counted explicitly")
        try:
            yield self
        finally:
            for module, attr, real in swapped:
                setattr(module, attr, real)


def _paper_part(counts: dict[str, dict]) -> int:
    """Sum the counter's per-module totals over the modules the official fvcore count included."""
    total = 0
    for key, per_op in counts.items():
        name = key.split(".", 1)[1] if "." in key else ""
        if name in PAPER_MODULE_NAMES:
            total += sum(per_op.values())
    return total


def count_flops(model: nn.Module, x: torch.Tensor) -> FlopReport:
    """Count one forward of ``model`` on ``x`` (works on the meta device: only shapes matter)."""
    explicit = _ExplicitOps()
    # Grad mode on: the mixer's autograd path calls in_proj as one module (its lean no-grad path splits it),
    # which is what the per-module paper-convention count needs. On the meta device nothing is computed.
    with explicit.installed(), torch.enable_grad(), FlopCounterMode(display=False, depth=None) as counter:
        model(x)
    return FlopReport(
        params=sum(p.numel() for p in model.parameters()),
        dense=counter.get_total_flops() // 2,
        scan=explicit.scan,
        conv1d=explicit.conv1d,
        paper=_paper_part(counter.get_flop_counts()) // 2 + explicit.projections,
        scan_calls=explicit.scan_calls,
    )


def build_on_meta(arch: str, frames: int, img_size: int, **kwargs) -> nn.Module:
    """Build a registered VideoMamba on CPU and move it to the meta device, where counting needs no compute."""
    import timm

    model = timm.create_model(arch, img_size=img_size, num_frames=frames, num_classes=400, **kwargs)
    return model.to("meta").eval()


def _row(name: str, frames: int, img_size: int, report: FlopReport, paper: bool) -> list[str]:
    return [name, f"{frames}x{img_size}", f"{report.params / 1e6:.1f}", f"{report.dense / 1e9:.2f}",
            f"{report.conv1d / 1e9:.3f}", f"{report.scan / 1e9:.2f}", f"{report.total / 1e9:.2f}",
            f"{report.paper / 1e9:.2f}" if paper else "-"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Parameters and GFLOPs per view of VideoMamba models.")
    parser.add_argument("--models", nargs="+", default=["videomamba_tiny", "videomamba_small", "videomamba_middle"])
    parser.add_argument("--frames", nargs="+", type=int, default=[8])
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--baselines", action="store_true",
                        help="also count the joint space-time ViT-Ti/S baselines (models/vit_joint.py)")
    args = parser.parse_args(argv)

    import timm

    import models  # noqa: F401  (registers the architectures)
    from models.vit_joint import VIT_JOINT_SIZES, vit_joint
    from utils.table import format_table

    unknown = [m for m in args.models if not timm.is_model(m)]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; registered: {timm.list_models('videomamba_*')}")
    rows = []
    for arch in args.models:
        for frames in args.frames:
            model = build_on_meta(arch, frames, args.img_size)
            report = count_flops(model, torch.empty(1, 3, frames, args.img_size, args.img_size, device="meta"))
            rows.append(_row(arch, frames, args.img_size, report, paper=True))
    if args.baselines:
        for arch in VIT_JOINT_SIZES:
            for frames in args.frames:
                with torch.device("meta"):  # shapes only: no weights are initialised
                    model = vit_joint(arch, frames, args.img_size).eval()
                report = count_flops(model, torch.empty(1, 3, frames, args.img_size, args.img_size, device="meta"))
                rows.append(_row(arch, frames, args.img_size, report, paper=False))
    print("GFLOPs per view (batch 1), fvcore convention: 1 multiply-add = 1 FLOP; "
          "scan = 9·B·D·L·N + B·D·L (D) per direction per layer (+ B·D·L when a z gate is passed).")
    print(format_table(["model", "frames x size", "params (M)", "dense G", "conv1d G", "scan G", "total G",
                        "paper-convention G"], rows))
    print("paper-convention = in_proj + out_proj + patch embedding + head (what fvcore saw in the official code).")


if __name__ == "__main__":
    main()
