"""Parameter groups (the official rule by default, true per-block decay as an option) and the per-step schedules."""
import math
import re

import numpy as np
import pytest
import timm
import torch
from torch import nn

import models  # noqa: F401  (registers the VideoMamba models with timm)
import run_class_finetuning
from engines.optim import apply_schedule, build_optimizer, layer_id, official_order, param_groups
from engines.schedule import cosine_schedule


class FakeBackbone(nn.Module):
    """Parameter names laid out like VideoMamba's (3 blocks)."""

    def __init__(self, depth: int = 3) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, 2, 4))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(3, 4, (1, 2, 2), stride=(1, 2, 2))
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(depth)])
        self.norm_f = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def get_num_layers(self) -> int:
        return len(self.layers)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "temporal_pos_embedding"}


def _args(**overrides):
    """run_class_finetuning.py's parsed flags with these values (``build_optimizer`` takes the parsed flags)."""
    base = dict(opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5, layer_decay_mode="official", opt_eps=1e-8,
                opt_betas=[0.9, 0.95], momentum=0.9)
    args = run_class_finetuning.get_args_parser().parse_args([])
    vars(args).update(base, **overrides)
    return args


# The official rule for VideoMamba, written out: name pattern -> (lr scale is layer_decay**(depth+1)?, decayed?).
# Everything but cls_token / pos_embed / patch_embed.* trains at the full lr; A_log and A_b_log are decayed.
OFFICIAL_RULE = [
    (r"cls_token", True, False),
    (r"pos_embed", True, False),
    (r"temporal_pos_embedding", False, False),
    (r"patch_embed\.proj\.weight", True, True),
    (r"patch_embed\.proj\.bias", True, False),
    (r"head\.weight", False, True),
    (r"head\.bias", False, False),
    (r"norm_f\.weight", False, False),
    (r"layers\.\d+\.mixer\.A_log", False, True),
    (r"layers\.\d+\.mixer\.A_b_log", False, True),
    (r"layers\.\d+\.mixer\.D", False, False),
    (r"layers\.\d+\.mixer\.D_b", False, False),
    (r"layers\.\d+\.mixer\.in_proj\.weight", False, True),
    (r"layers\.\d+\.mixer\.conv1d(_b)?\.weight", False, True),
    (r"layers\.\d+\.mixer\.conv1d(_b)?\.bias", False, False),
    (r"layers\.\d+\.mixer\.x_proj(_b)?\.weight", False, True),
    (r"layers\.\d+\.mixer\.dt_proj(_b)?\.weight", False, True),
    (r"layers\.\d+\.mixer\.dt_proj(_b)?\.bias", False, False),
    (r"layers\.\d+\.mixer\.out_proj\.weight", False, True),
    (r"layers\.\d+\.norm\.weight", False, False),
]


@pytest.mark.parametrize("name, depth, decay", [("videomamba_tiny", 24, 0.75), ("videomamba_middle", 32, 0.8)])
def test_official_rule_for_every_parameter_of_ti_and_m(name, depth, decay):
    with torch.device("meta"):
        model = timm.create_model(name, img_size=32, num_frames=2, num_classes=7)
    assert model.get_num_layers() == depth
    assert model.no_weight_decay() == {"pos_embed", "cls_token", "temporal_pos_embedding"}
    optimizer = build_optimizer(_args(weight_decay=0.05, layer_decay=decay), model)
    apply_schedule(optimizer, lr=1.0, weight_decay=0.3)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    names = [n for n, _ in model.named_parameters()]
    assert len(group_of) == len(names)
    for pname, param in model.named_parameters():
        rule = [(scaled, decayed) for pattern, scaled, decayed in OFFICIAL_RULE if re.fullmatch(pattern, pname)]
        assert len(rule) == 1, pname
        scaled, decayed = rule[0]
        group = group_of[id(param)]
        assert group["lr"] == pytest.approx(decay ** (depth + 1) if scaled else 1.0, rel=1e-12), pname
        assert group["weight_decay"] == (0.3 if decayed else 0.0), pname
    # the official group order: first appearance in the official named_parameters()
    assert [round(g["lr_scale"], 12) for g in optimizer.param_groups] == [
        round(decay ** (depth + 1), 12), 1.0, round(decay ** (depth + 1), 12), 1.0]
    assert [g["weight_decay"] > 0 for g in optimizer.param_groups] == [False, False, True, True]


def test_official_order_puts_head_before_layers_and_mixer_parameters_first():
    names = [n for n, _ in official_order((n, None) for n in [
        "cls_token", "pos_embed", "temporal_pos_embedding", "patch_embed.proj.weight", "patch_embed.proj.bias",
        "layers.0.mixer.A_log", "layers.0.mixer.D", "layers.0.mixer.A_b_log", "layers.0.mixer.D_b",
        "layers.0.mixer.in_proj.weight", "layers.0.mixer.conv1d.weight", "layers.0.mixer.out_proj.weight",
        "layers.0.norm.weight", "layers.10.norm.weight", "layers.2.mixer.A_log", "head.weight", "head.bias",
        "norm_f.weight"])]
    assert names == [
        "cls_token", "pos_embed", "temporal_pos_embedding", "patch_embed.proj.weight", "patch_embed.proj.bias",
        "head.weight", "head.bias", "layers.0.mixer.A_log", "layers.0.mixer.D", "layers.0.mixer.A_b_log",
        "layers.0.mixer.D_b", "layers.0.mixer.in_proj.weight", "layers.0.mixer.conv1d.weight",
        "layers.0.mixer.out_proj.weight", "layers.0.norm.weight", "layers.2.mixer.A_log", "layers.10.norm.weight",
        "norm_f.weight"]


def test_official_layer_ids():
    for name in ("cls_token", "mask_token", "pos_embed", "patch_embed.proj.weight"):
        assert layer_id(name, 24) == 0
    for name in ("temporal_pos_embedding", "layers.0.mixer.A_log", "layers.23.norm.weight", "norm_f.weight",
                 "head.bias", "clip_decoder.0.head.weight"):
        assert layer_id(name, 24) == 25
    with pytest.raises(ValueError, match="layer_decay_mode"):
        layer_id("head.bias", 24, "per_block")


def test_block_mode_layer_ids_follow_the_rule():
    assert layer_id("cls_token", 24, "blocks") == 0
    assert layer_id("pos_embed", 24, "blocks") == 0
    assert layer_id("temporal_pos_embedding", 24, "blocks") == 0
    assert layer_id("patch_embed.proj.weight", 24, "blocks") == 0
    assert layer_id("layers.0.mixer.A_log", 24, "blocks") == 1
    assert layer_id("layers.23.norm.weight", 24, "blocks") == 24
    assert layer_id("norm_f.weight", 24, "blocks") == 25
    assert layer_id("head.bias", 24, "blocks") == 25
    assert layer_id("clip_decoder.0.head.weight", 24, "blocks") == 25


def test_block_mode_groups_scales_and_weight_decay():
    model = FakeBackbone(depth=3)
    groups = param_groups(model.named_parameters(), 0.05, depth=3, layer_decay=0.5, skip=model.no_weight_decay(),
                          mode="blocks")
    by_name = {name: g for g in groups for name in g["param_names"]}
    assert by_name["cls_token"]["lr_scale"] == 0.5**4
    assert by_name["patch_embed.proj.weight"]["lr_scale"] == 0.5**4
    assert by_name["layers.0.weight"]["lr_scale"] == 0.5**3
    assert by_name["layers.2.weight"]["lr_scale"] == 0.5**1
    assert by_name["head.weight"]["lr_scale"] == 1.0
    assert by_name["norm_f.weight"]["lr_scale"] == 1.0
    decayed = {n for n, g in by_name.items() if g["weight_decay"] > 0}
    assert decayed == {"patch_embed.proj.weight", "layers.0.weight", "layers.1.weight", "layers.2.weight",
                       "head.weight"}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_mamba_no_weight_decay_flag_is_not_the_official_rule():
    model = FakeBackbone(depth=1)
    model.layers[0].weight._no_weight_decay = True  # Mamba's marker (A_log, D): the official optimiser ignores it
    groups = param_groups(model.named_parameters(), 0.1, depth=1, skip=model.no_weight_decay())
    by_name = {name: g for g in groups for name in g["param_names"]}
    assert by_name["layers.0.weight"]["weight_decay"] == 0.1
    assert [g["group_name"] for g in groups] == ["no_decay", "decay"]  # layer_decay 1: no layer split


def test_block_mode_optimizer_applies_scaled_lr_and_scheduled_wd():
    model = FakeBackbone(depth=3)
    opt = build_optimizer(_args(layer_decay_mode="blocks", opt_eps=1e-6), model)
    apply_schedule(opt, lr=0.2, weight_decay=0.3)
    scales = sorted({round(g["lr"] / 0.2, 12) for g in opt.param_groups})
    assert scales == [0.5**4, 0.5**3, 0.5**2, 0.5**1, 1.0]
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.3}
    assert opt.param_groups[0]["betas"] == (0.9, 0.95) and opt.param_groups[0]["eps"] == 1e-6  # not the defaults


@pytest.mark.parametrize("opt, nesterov", [("sgd", True), ("nesterov", True), ("momentum", False), ("sgdp", True),
                                           ("rmsprop", None), ("rmsproptf", None), ("lookahead_sgd", True)])
def test_momentum_reaches_every_optimiser_that_takes_it(opt, nesterov):
    """As the official factory: --momentum for sgd (Nesterov), nesterov, momentum, sgdp, rmsprop, rmsproptf."""
    optimizer = build_optimizer(_args(opt=opt, momentum=0.5), FakeBackbone(depth=3))
    group = getattr(optimizer, "base_optimizer", optimizer).param_groups[0]
    assert group["momentum"] == 0.5 and group.get("nesterov") == nesterov


def test_zero_weight_decay_is_one_group_without_layer_decay_except_under_deepspeed():
    model = FakeBackbone(depth=3)
    opt = build_optimizer(_args(weight_decay=0.0), model)
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == len(list(model.parameters()))
    apply_schedule(opt, lr=0.2, weight_decay=0.3)
    assert opt.param_groups[0]["lr"] == 0.2 and opt.param_groups[0]["weight_decay"] == 0.0
    groups = build_optimizer(_args(weight_decay=0.0), model, deepspeed=True).param_groups
    assert [g["lr_scale"] for g in groups] == [0.5**4, 1.0, 0.5**4, 1.0]


def test_cosine_schedule_with_epoch_warmup_is_exact():
    values = cosine_schedule(1.0, 0.0, epochs=3, steps_per_epoch=2, warmup_epochs=1, start_warmup_value=0.5)
    expected = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(4)]
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-15)


def test_warmup_steps_override_epochs_and_constant_schedule():
    values = cosine_schedule(2.0, 1.0, epochs=2, steps_per_epoch=3, warmup_epochs=1, warmup_steps=2)
    assert len(values) == 6
    np.testing.assert_allclose(values[:2], [0.0, 2.0])
    np.testing.assert_allclose(values[2:], [1 + 0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(4)])
    np.testing.assert_allclose(cosine_schedule(0.05, 0.05, 2, 3), [0.05] * 6)


def test_empty_schedule_is_an_error():
    with pytest.raises(ValueError, match="epochs"):
        cosine_schedule(1.0, 0.0, epochs=0, steps_per_epoch=3)
