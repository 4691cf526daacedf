"""Official checkpoints: an official ``checkpoint-latest.pth`` (keys model, optimizer, epoch, scaler, args,
model_ema) resumes with ``--resume`` (weights, every parameter's AdamW state, the group hyper-parameters, the epoch
and the EMA), ``--eval`` chooses its weights as documented, and official DeepSpeed folders are recognised.

The "official" optimiser is built here independently of ``engines.optim``: the parameter names in the official
VisionMamba ``named_parameters()`` order (head before the blocks; the mixer's own A_log, D, A_b_log, D_b before its
sub-modules) grouped by the official rule written out below.
"""
import argparse
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import run_class_finetuning
from engines.checkpoint import (DEEPSPEED_MODEL_STATES, best_checkpoint, checkpoint_to_evaluate, find_latest,
                                install_folder, is_complete, staging_folder)
from engines.fit import build_ema, build_runtime, resume
from engines.runtime import TorchRuntime
from models.factory import build_classifier
from utils.config import finetune_config
from utils.distributed import DistInfo
from utils.errors import BadFileError

DEPTH = 2
LAYER_DECAY = 0.75
MIXER = ["A_log", "D", "A_b_log", "D_b", "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
         "dt_proj.weight", "dt_proj.bias", "conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight", "dt_proj_b.weight",
         "dt_proj_b.bias", "out_proj.weight"]
OFFICIAL_NAMES = (["cls_token", "pos_embed", "temporal_pos_embedding", "patch_embed.proj.weight",
                   "patch_embed.proj.bias", "head.weight", "head.bias"]
                  + [f"layers.{i}.{part}" for i in range(DEPTH)
                     for part in [f"mixer.{m}" for m in MIXER] + ["norm.weight"]]
                  + ["norm_f.weight"])
EMBEDDINGS = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}  # layer id 0
NO_WEIGHT_DECAY = {"cls_token", "pos_embed", "temporal_pos_embedding"}


def _argv(out, *extra):
    return ["--model", "videomamba_tiny", "--depth", str(DEPTH), "--embed_dim", "32", "--nb_classes", "4",
            "--num_frames", "4", "--tubelet_size", "1", "--input_size", "32", "--device", "cpu",
            "--layer_decay", str(LAYER_DECAY), "--weight_decay", "0.05", "--opt_betas", "0.9", "0.999",
            "--output_dir", str(out), "--model_ema", *extra]


def _build_model(args):
    return build_classifier(finetune_config(args).model)


def _plain_layout(output_dir):
    """``TorchRuntime.checkpoint_path`` of a runtime writing into ``output_dir``: ``{tag}.pth`` files."""
    model = torch.nn.Linear(1, 1)
    runtime = TorchRuntime(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"), None, None,
                           False, output_dir=output_dir)
    return runtime.checkpoint_path


def _deepspeed_layout(output_dir):
    """``DeepSpeedRuntime.checkpoint_path``: folders ``{tag}``."""
    return lambda tag: Path(output_dir) / tag


def _official_optimizer(model):
    params = dict(model.named_parameters())
    assert sorted(params) == sorted(OFFICIAL_NAMES)
    groups, order = {}, []
    for name in OFFICIAL_NAMES:
        param = params[name]
        no_decay = param.ndim == 1 or name.endswith(".bias") or name in NO_WEIGHT_DECAY
        layer = 0 if name in EMBEDDINGS else DEPTH + 1
        key = f"layer_{layer}_{'no_decay' if no_decay else 'decay'}"
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else 0.05,
                           "lr_scale": LAYER_DECAY ** (DEPTH + 1 - layer)}
        groups[key]["params"].append(param)
        order.append((key, name))
    keys = list(groups)
    assert keys == ["layer_0_no_decay", f"layer_{DEPTH + 1}_no_decay", "layer_0_decay", f"layer_{DEPTH + 1}_decay"]
    names = [name for key in keys for k, name in order if k == key]  # optimiser state index -> parameter name
    return torch.optim.AdamW(list(groups.values()), lr=1e-3, betas=(0.9, 0.999)), names


def test_official_checkpoint_latest_resumes_optimizer_ema_and_epoch(tmp_path):
    args = run_class_finetuning.get_args_parser().parse_args(_argv(tmp_path / "official"))
    torch.manual_seed(0)
    official = _build_model(args)
    optimizer, index_names = _official_optimizer(official)
    for step in range(3):  # distinct moments for every parameter
        optimizer.zero_grad()
        for i, param in enumerate(official.parameters()):
            param.grad = torch.randn_like(param) * (i + 1 + step)
        optimizer.step()
    ema = {k: v + 0.5 for k, v in official.state_dict().items()}
    scaler = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 7}
    path = tmp_path / "checkpoint-latest.pth"
    torch.save({"model": official.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 11, "scaler": scaler,
                "args": argparse.Namespace(lr=1e-3, layer_decay=LAYER_DECAY), "model_ema": ema}, path)

    ours_args = run_class_finetuning.get_args_parser().parse_args(_argv(tmp_path / "ours", "--resume", str(path)))
    torch.manual_seed(1)
    model = _build_model(ours_args)
    config = finetune_config(ours_args)
    runtime = build_runtime(config.optim, config.runtime, model, DistInfo(0, 1, 0, torch.device("cpu")))
    ema_model = build_ema(config.ema, runtime.module)
    state = resume(config.runtime, runtime, ema_model)

    assert state.start_epoch == 12
    assert runtime.scaler.state_dict() == scaler  # the official NativeScaler state, resumed
    saved = optimizer.state_dict()
    by_name = {name: saved["state"][i] for i, name in enumerate(index_names)}
    ours = dict(runtime.module.named_parameters())
    group_of = {id(p): g for g in runtime.optimizer.param_groups for p in g["params"]}
    for name, param in ours.items():
        torch.testing.assert_close(param.detach(), official.state_dict()[name], rtol=0, atol=0, msg=name)
        moments = runtime.optimizer.state[param]
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(moments[key], by_name[name][key], rtol=0, atol=0, msg=f"{name} {key}")
        assert float(moments["step"]) == 3
        group = group_of[id(param)]
        assert group["lr_scale"] == (LAYER_DECAY ** (DEPTH + 1) if name in EMBEDDINGS else 1.0), name
        decayed = not (param.ndim == 1 or name.endswith(".bias") or name in NO_WEIGHT_DECAY)
        assert group["weight_decay"] == (0.05 if decayed else 0.0), name
    for key, value in ema.items():
        torch.testing.assert_close(ema_model.module.state_dict()[key], value, rtol=0, atol=0, msg=key)
    # checkpoints written before issue 12 keep the EMA under "ema"
    legacy = torch.load(path, weights_only=False)
    legacy["ema"] = {k: v - 1.0 for k, v in legacy.pop("model_ema").items()}
    torch.save(legacy, tmp_path / "legacy.pth")
    resume(replace(config.runtime, resume=str(tmp_path / "legacy.pth")), runtime, ema_model)
    for key, value in legacy["ema"].items():
        torch.testing.assert_close(ema_model.module.state_dict()[key], value, rtol=0, atol=0, msg=key)
    # the resumed optimiser steps
    for param in ours.values():
        param.grad = torch.ones_like(param)
    runtime.optimizer.step()
    assert float(runtime.optimizer.state[ours["head.weight"]]["step"]) == 4
    # weights only (what the official auto_load_model accepts): the weights load, training starts at epoch 0
    torch.save({"model": official.state_dict()}, tmp_path / "weights.pth")
    state = resume(replace(config.runtime, resume=str(tmp_path / "weights.pth")), runtime, ema_model)
    assert state.start_epoch == 0 and state.start_step == 0
    for name, param in runtime.module.named_parameters():
        torch.testing.assert_close(param.detach(), official.state_dict()[name], rtol=0, atol=0, msg=name)
    torch.save({"state_dict": official.state_dict()}, tmp_path / "other.pth")
    with pytest.raises(BadFileError, match="other.pth: no 'model' entry"):
        resume(replace(config.runtime, resume=str(tmp_path / "other.pth")), runtime, ema_model)


def test_eval_weights_best_resume_newest_then_none(tmp_path):
    layout = _plain_layout(tmp_path)
    assert checkpoint_to_evaluate("", _plain_layout(None), "", False, search=True) is None
    assert checkpoint_to_evaluate(str(tmp_path), layout, "", False, search=True) is None
    with pytest.raises(FileNotFoundError, match="--eval --test_best: no complete checkpoint-best"):
        checkpoint_to_evaluate(str(tmp_path), layout, "", True, search=True)
    for i, name in enumerate(("checkpoint-best.pth", "checkpoint-4.pth", "checkpoint-latest.pth")):
        torch.save({"epoch": 4}, tmp_path / name)
        os.utime(tmp_path / name, ns=(10**18 + i * 10**9,) * 2)
    assert checkpoint_to_evaluate(str(tmp_path), layout, "", False, search=True) == tmp_path / "checkpoint-latest.pth"
    assert checkpoint_to_evaluate(str(tmp_path), layout, "", False, search=False) is None  # --no_auto_resume
    # a launcher (always --test_best) with --eval --no_auto_resume: MODEL_PATH (--finetune) or --resume is tested
    assert checkpoint_to_evaluate(str(tmp_path), layout, "", True, search=False) is None
    assert checkpoint_to_evaluate(str(tmp_path), layout, "/x/given.pth", True, search=False).as_posix() == \
        "/x/given.pth"
    given = checkpoint_to_evaluate(str(tmp_path), layout, "/x/given.pth", False, search=True)
    assert given.as_posix() == "/x/given.pth"
    assert checkpoint_to_evaluate(str(tmp_path), layout, "/x/given.pth", True, search=True) == \
        tmp_path / "checkpoint-best.pth"
    (tmp_path / "checkpoint-latest.pth").unlink()
    (tmp_path / "checkpoint-4.pth").unlink()
    assert checkpoint_to_evaluate(str(tmp_path), layout, "", False, search=True) == tmp_path / "checkpoint-best.pth"
    (tmp_path / "checkpoint-best.pth").rename(tmp_path / "checkpoint-best_val.pth")  # official regression name
    assert best_checkpoint(layout) == tmp_path / "checkpoint-best_val.pth"
    assert best_checkpoint(_deepspeed_layout(tmp_path)) is None  # DeepSpeed checkpoints are folders


def test_official_deepspeed_folders_count_as_complete_and_ours_only_when_marked(tmp_path):
    """The official code's DeepSpeed folders have no completion marker: one holding DeepSpeed's model states is
    complete. Ours are written into a hidden staging folder first, so a killed save is never taken for either."""
    def folder(name, age):
        path = tmp_path / name
        path.mkdir()
        (path / DEEPSPEED_MODEL_STATES).write_bytes(b"states")
        os.utime(path / DEEPSPEED_MODEL_STATES, ns=(10**18 + age * 10**9,) * 2)
        return path

    official, best = folder("checkpoint-latest", 1), folder("checkpoint-best", 2)
    (tmp_path / "checkpoint-7").mkdir()  # no model states: not a checkpoint
    assert find_latest(tmp_path) == official
    layout = _deepspeed_layout(tmp_path)
    assert checkpoint_to_evaluate(str(tmp_path), layout, "", False, search=True) == official
    assert checkpoint_to_evaluate(str(tmp_path), layout, "", True, search=True) == best
    staging = staging_folder(tmp_path, "checkpoint-9")  # ours, while DeepSpeed writes: hidden, never a candidate
    staging.mkdir()
    (staging / DEEPSPEED_MODEL_STATES).write_bytes(b"sta")
    assert find_latest(tmp_path) == official
    install_folder(staging, tmp_path / "checkpoint-9")
    assert is_complete(tmp_path / "checkpoint-9") and find_latest(tmp_path) == tmp_path / "checkpoint-9"
