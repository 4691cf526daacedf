"""Layer-wise lr decay groups, weight-decay exclusions and the per-step schedules."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from engines.optim import apply_schedule, build_optimizer, layer_id, param_groups
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


def test_layer_ids_follow_the_rule():
    assert layer_id("cls_token", 24) == 0
    assert layer_id("pos_embed", 24) == 0
    assert layer_id("temporal_pos_embedding", 24) == 0
    assert layer_id("patch_embed.proj.weight", 24) == 0
    assert layer_id("layers.0.mixer.A_log", 24) == 1
    assert layer_id("layers.23.norm.weight", 24) == 24
    assert layer_id("norm_f.weight", 24) == 25
    assert layer_id("head.bias", 24) == 25
    assert layer_id("clip_decoder.0.head.weight", 24) == 25


def test_groups_scales_and_weight_decay():
    model = FakeBackbone(depth=3)
    groups = param_groups(model.named_parameters(), 0.05, depth=3, layer_decay=0.5, skip=model.no_weight_decay())
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


def test_flagged_parameters_get_no_weight_decay():
    model = FakeBackbone(depth=1)
    model.layers[0].weight._no_weight_decay = True
    groups = param_groups(model.named_parameters(), 0.1, depth=1)
    by_name = {name: g for g in groups for name in g["param_names"]}
    assert by_name["layers.0.weight"]["weight_decay"] == 0.0


def test_optimizer_applies_scaled_lr_and_scheduled_wd():
    model = FakeBackbone(depth=3)
    args = SimpleNamespace(opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5, opt_eps=1e-8,
                           opt_betas=[0.9, 0.95], momentum=0.9)
    opt = build_optimizer(args, model)
    apply_schedule(opt, lr=0.2, weight_decay=0.3)
    scales = sorted({round(g["lr"] / 0.2, 12) for g in opt.param_groups})
    assert scales == [0.5**4, 0.5**3, 0.5**2, 0.5**1, 1.0]
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.3}
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


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
