"""The checks of `benchmarks/gpu_check.py`, as functions of a device, so that they also run on CPU (the tests drive
them there over the CPU stand-ins of the CUDA kernels, at tiny sizes).

- `check_mixer`: the fused mixer op (forward and every gradient) against an fp64 composed reference.
- `run_model`: one training step or inference of VideoMamba or the ViT baseline: time, peak memory, and the first
  step's logits and one gradient, which `agreement` compares with a reference configuration's.

Each returns a JSON-ready dict with "status" ("PASS", "FAIL" or "SKIP") and, when not PASS, a one-line "reason".
The project packages and timm are imported inside the functions, so `gpu_check.py` can skip quickly without them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.common import MIB, time_call

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Relative error max|got - want| / max|want| per tensor against the fp64 composed reference. fp32: the bound issue 21
# asks for (rounding and summation order alone gave 1.1e-5 at 3137 tokens on an H200). fp16 and bf16 autocast: every
# GEMM input is rounded to the dtype (unit roundoff 2^-11 and 2^-8) and the in_proj, conv, x_proj, Δ, scan and
# out_proj stages round in turn, so a few units of roundoff, relative to the largest entry, are expected; a wrong
# gradient (a lost scan chunk, a dropped term) is off by far more.
TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
# Whole-model agreement (logits, one gradient) with the fp32 eager reference configuration: 24 blocks of rounding.
MODEL_TOLERANCES = {"fp32": 1e-3, "fp16": 1e-1, "bf16": 1e-1}
NUM_CLASSES = 400
PROBE_SIZE = 512  # gradient entries kept for the agreement check
PATCH = 16


def tokens(frames: int, img_size: int = 224) -> int:
    """Sequence length of VideoMamba for a clip: the cls token and one token per 16×16 patch per frame."""
    return 1 + frames * (img_size // PATCH) ** 2


def rel_err(got: Tensor, want: Tensor) -> float:
    """max|got - want| / max|want| (NaN when got has a NaN)."""
    want = want.double()
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def fused_cuda(hidden: Tensor, params) -> Tensor:
    """The fused CUDA path under test: the custom op `videomamba::bimamba_inner` over the stock kernels."""
    from models.ops import bimamba_inner_fn

    return bimamba_inner_fn(hidden, params, backend="cuda")


def _named_leaves(hidden: Tensor, params) -> list[tuple[str, Tensor]]:
    """("hidden", hidden) and every InnerParams tensor that is not None, named like "forward.conv_weight"."""
    named = [("hidden", hidden)]
    for field, value in zip(params._fields, params):
        parts = zip(value._fields, value) if hasattr(value, "_fields") else [("", value)]
        named += [(f"{field}.{sub}" if sub else field, t) for sub, t in parts if t is not None]
    return named


def _run_inner(fn: Callable, hidden: Tensor, params, dout: Tensor, precision: str) -> tuple[Tensor, list[Tensor]]:
    """fn's output under the precision's autocast and the gradients of every leaf; backward outside autocast,
    as a training loop runs it."""
    leaves = [t for _, t in _named_leaves(hidden, params)]
    with torch.autocast(hidden.device.type, dtype=DTYPES[precision], enabled=precision != "fp32"):
        out = fn(hidden, params)
    grads = torch.autograd.grad(out, leaves, dout.to(out.dtype))
    return out.detach(), list(grads)


def _mixer_inputs(d_model: int, length: int, batch: int, device: torch.device, seed: int, **mixer_kwargs):
    """Leaves (hidden, InnerParams) from a freshly initialised `BiMambaMixer`, and the output gradient."""
    from models.mamba_mixer import BiMambaMixer
    from models.ops.bimamba_params import map_params

    torch.manual_seed(seed)
    mixer = BiMambaMixer(d_model, **mixer_kwargs)
    params = map_params(lambda t: t.detach().to(device).clone().requires_grad_(), mixer.inner_params())
    gen = torch.Generator().manual_seed(seed + 1)
    hidden = torch.randn(batch, length, d_model, generator=gen).to(device).requires_grad_()
    dout = torch.randn(batch, length, d_model, generator=gen).to(device)
    return hidden, params, dout


def check_mixer(d_model: int, length: int, batch: int, precision: str, device: torch.device,
                fused: Optional[Callable] = None, seed: int = 0, **mixer_kwargs) -> dict:
    """`fused(hidden, params)` (default `fused_cuda`) under `precision` against the composed reference in fp64 on
    `device`: output and every gradient. The composed path in the same precision ("composed") is run too, as a
    yardstick of what the precision alone costs."""
    from models.ops import bimamba_inner_ref
    from models.ops.bimamba_params import map_params

    composed = functools.partial(bimamba_inner_ref, backend="torch")
    hidden, params, dout = _mixer_inputs(d_model, length, batch, device, seed, **mixer_kwargs)
    want_out, want_grads = _run_inner(composed, _fp64_leaf(hidden), map_params(_fp64_leaf, params), dout.double(),
                                      "fp32")
    names = [name for name, _ in _named_leaves(hidden, params)]
    result = {"status": "PASS", "reason": "", "tol": TOLERANCES[precision], "length": length}
    ref_out, ref_grads = _run_inner(composed, hidden, params, dout, precision)
    result["composed_errors"] = _errors(names, ref_out, ref_grads, want_out, want_grads)
    out, grads = _run_inner(fused or fused_cuda, hidden, params, dout, precision)
    result["errors"] = errors = _errors(names, out, grads, want_out, want_grads)
    worst, err = worst_error(errors, prefix="")
    problems = [f"{worst}: rel err {err:.2e} > {result['tol']:g}"] if not err <= result["tol"] else []  # NaN too
    if out.dtype != ref_out.dtype:  # a drop-in for the composed ops returns what they return
        problems.append(f"output dtype {out.dtype}, the composed path gives {ref_out.dtype}")
    if problems:
        result.update(status="FAIL", reason="; ".join(problems))
    return result


def _fp64_leaf(t: Tensor) -> Tensor:
    return t.detach().double().requires_grad_()


def _errors(names: list[str], out: Tensor, grads: list[Tensor], want_out: Tensor,
            want_grads: list[Tensor]) -> dict[str, float]:
    errors = {"out": rel_err(out, want_out)}
    errors.update({f"d {name}": rel_err(g, w) for name, g, w in zip(names, grads, want_grads)})
    return errors


def _nan_last(value: float) -> float:
    return float("inf") if value != value else value


def worst_error(errors: dict[str, float], prefix: str = "d ") -> tuple[str, float]:
    """(name, error) of the largest error among the entries starting with `prefix` (NaN counts as largest)."""
    name = max((k for k in errors if k.startswith(prefix)), key=lambda k: _nan_last(errors[k]))
    return name, errors[name]


# ---- whole models ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelRun:
    """One timed configuration. `path`: "fused" (the mixers' fused op) or "composed" (the standalone scan and conv
    ops that the fused op replaces), "-" for the ViT baseline."""

    arch: str  # "videomamba_tiny" or models.vit_joint's "vit_tiny_joint"
    mode: str  # "train" (forward + cross-entropy + backward + AdamW step) or "infer"
    frames: int
    batch: int
    precision: str  # "fp32" or an autocast dtype, "bf16" / "fp16"
    path: str = "-"
    compiled: bool = False
    img_size: int = 224

    @property
    def is_videomamba(self) -> bool:
        return self.arch.startswith("videomamba")


def use_composed_ops(model: torch.nn.Module, scan_backend: str) -> None:
    """Run every mixer of `model` through the composed reference ops (`bimamba_inner_ref`) over `scan_backend`'s
    standalone scan and conv (the stock kernels' Python wrappers for "cuda")."""
    from models.mamba_mixer import BiMambaMixer
    from models.ops import bimamba_inner_ref

    def composed_forward(mixer: BiMambaMixer, hidden: Tensor) -> Tensor:
        return bimamba_inner_ref(hidden, mixer.inner_params(), backend=scan_backend)

    for module in model.modules():
        if isinstance(module, BiMambaMixer):
            module.forward = functools.partial(composed_forward, module)


def build_model(run: ModelRun, device: torch.device, **overrides) -> torch.nn.Module:
    """VideoMamba through timm's registry with the run's mixer path, or the joint space-time ViT of
    `models.vit_joint`; `overrides` (e.g. depth, embed_dim) change the architecture's defaults, for tests."""
    torch.manual_seed(0)
    if not run.is_videomamba:
        from models.vit_joint import VIT_JOINT_SIZES, JointSpaceTimeViT

        model = JointSpaceTimeViT(run.frames, run.img_size, **{**VIT_JOINT_SIZES[run.arch], **overrides},
                                  num_classes=NUM_CLASSES)
        return model.to(device)
    import timm

    import models  # noqa: F401  (registers the VideoMamba architectures with timm)

    on_cuda = device.type == "cuda"
    backend = ("cuda" if on_cuda else "cpp") if run.path == "fused" else "torch"
    model = timm.create_model(run.arch, img_size=run.img_size, num_frames=run.frames, num_classes=NUM_CLASSES,
                              drop_path_rate=0.0, ssm_cfg={"backend": backend}, **overrides)
    if run.path == "composed":
        use_composed_ops(model, "cuda" if on_cuda else "torch")
    return model.to(device)


def _composed_unavailable(run: ModelRun, device: torch.device) -> Optional[str]:
    """Why the composed path cannot run on CUDA (the stock packages' Python wrappers fail to import), or None."""
    if run.path != "composed" or device.type != "cuda":
        return None
    from models.ops.cuda_glue import load_causal_conv1d, load_mamba_scan

    try:
        load_mamba_scan()
        load_causal_conv1d()
    except ImportError as exc:
        cause = exc.__cause__ or exc
        return f"composed path needs the mamba_ssm and causal_conv1d packages ({type(cause).__name__}: {cause})"
    return None


def run_model(run: ModelRun, device: torch.device, repeats: int = 5, warmup: int = 2, **overrides) -> dict:
    """Time `run` on `device`: median of `repeats` steps after `warmup` (the first call compiles when compiled,
    timed apart). Peak memory (CUDA only) is the allocator's peak during the timed steps above what was allocated
    before them (model, optimizer state, input). Also returns the first step's logits and, for training, the first
    PROBE_SIZE entries of the gradient of the first parameter that has as many (VideoMamba's position embedding:
    its gradient has been through every block's backward)."""
    reason = _composed_unavailable(run, device)
    if reason:
        return {"status": "SKIP", "reason": reason}
    model = build_model(run, device, **overrides)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(run.batch, 3, run.frames, run.img_size, run.img_size, generator=gen).to(device)
    target = torch.randint(0, NUM_CLASSES, (run.batch,), generator=gen).to(device)
    forward = torch.compile(model) if run.compiled else model
    probe: dict = {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if run.mode == "train" else None
    model.train(run.mode == "train")

    def step() -> None:
        with torch.set_grad_enabled(optimizer is not None), \
                torch.autocast(device.type, dtype=DTYPES[run.precision], enabled=run.precision != "fp32"):
            logits = forward(x)
        probe.setdefault("logits", logits.detach().float().flatten().tolist())
        if optimizer is not None:
            F.cross_entropy(logits.float(), target).backward()
            grad = next(p.grad for p in model.parameters() if p.grad is not None and p.numel() >= PROBE_SIZE)
            probe.setdefault("grad", grad.detach().float().flatten()[:PROBE_SIZE].tolist())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    compile_s = time_call(step, repeats=1, warmup=0).median if run.compiled else None
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    timing = time_call(step, repeats=repeats, warmup=0)
    peak = (torch.cuda.max_memory_allocated(device) - base) / MIB if device.type == "cuda" else None
    return {"status": "PASS", "reason": "", "time_ms": timing.median * 1e3, "compile_s": compile_s,
            "peak_mib": peak, **probe}


def agreement(result: dict, reference: dict, precision: str) -> dict:
    """`result` with its logits (and gradient probe) compared with `reference`'s: "errors" added, FAIL beyond the
    precision's MODEL_TOLERANCES."""
    errors = {key: rel_err(torch.tensor(result[key]), torch.tensor(reference[key]))
              for key in ("logits", "grad") if key in result and key in reference}
    tol = MODEL_TOLERANCES[precision]
    updated = {**result, "errors": errors, "tol": tol}
    bad = [f"{key} differ from the reference run by {err:.2e} > {tol:g}" for key, err in errors.items()
           if not err <= tol]
    if bad and result["status"] == "PASS":
        updated.update(status="FAIL", reason="; ".join(bad))
    return updated
