"""End-to-end masked distillation through run_mask_pretrain.py with a tiny random teacher; fine-tuning from a student
distilled from a teacher that knows the class beats a random start."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

import run_class_finetuning
from tensorboard_events import read_scalars
from models.factory import build_classifier
from utils.config import finetune_config
import run_mask_pretrain

ROOT = Path(__file__).resolve().parents[1]


def _build_model(args):
    """The classifier run_class_finetuning.py builds for these parsed flags."""
    return build_classifier(finetune_config(args).model)


def assert_finetune_loaded(args: argparse.Namespace, pretrained: dict) -> None:
    """The ``--finetune`` weights reach the classifier: a randomly initialised parameter that pretraining changed
    equals the pretrained one, and a model built without ``--finetune`` differs from it (so no init can match)."""
    name = "layers.1.mixer.in_proj.weight"
    torch.testing.assert_close(_build_model(args).state_dict()[name], pretrained[name], rtol=0, atol=0)
    fresh = _build_model(argparse.Namespace(**{**vars(args), "finetune": ""})).state_dict()[name]
    assert (fresh - pretrained[name]).abs().max() > 1e-3


@pytest.fixture(scope="module")
def video_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic_pt")
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_synthetic_dataset.py"), "--out", str(out),
                    "--num_train", "8", "--num_val", "4", "--num_test", "4", "--size", "32", "--frames", "8"],
                   check=True, capture_output=True)
    return out


def _pretrain_argv(data: Path, out: Path, mask_type: str) -> list[str]:
    return ["--model", "videomamba_tiny_pretrain", "--depth", "2", "--embed_dim", "32",
            "--data_path", str(data / "train.csv"), "--prefix", str(data), "--num_frames", "4", "--input_size", "32",
            "--batch_size", "4", "--epochs", "4", "--warmup_epochs", "0", "--lr", "2e-3", "--min_lr", "1e-4",
            "--no_lr_scale", "--device", "cpu", "--num_workers", "0", "--mask_type", mask_type, "--mask_ratio", "0.5",
            "--clip_teacher_random", "--clip_teacher_width", "32", "--clip_teacher_layers", "1",
            "--clip_teacher_heads", "2", "--clip_output_dim", "16", "--clip_input_resolution", "32",
            "--clip_return_cls", "--clip_return_attn", "--output_dir", str(out), "--print_freq", "100"]


@pytest.mark.parametrize("mask_type", ["attention", "tube", "random_row"])
def test_mask_pretraining_lowers_loss_and_feeds_finetuning(video_set, tmp_path, mask_type):
    torch.manual_seed(0)
    out = tmp_path / "pt"
    argv = _pretrain_argv(video_set, out, mask_type)
    if mask_type == "tube":  # the official warm-up: from 0, whatever --warmup_lr says (2 steps per epoch here)
        argv += ["--warmup_epochs", "1", "--warmup_lr", "1e-3", "--log_dir", str(tmp_path / "tb")]
    args = run_mask_pretrain.get_args_parser().parse_args(argv)
    history = run_mask_pretrain.main(args)["history"]
    losses = [r["train_loss"] for r in history]
    assert losses[-1] < 0.8 * losses[0]
    saved = torch.load(out / "checkpoint-latest.pth", weights_only=True)
    assert saved["epoch"] == 3 and "clip_decoder.0.head.weight" in saved["model"]
    logged = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in logged] == [0, 1, 2, 3]
    for record in logged:  # the official engine's per-epoch keys; the loss is loss_pixel + ratio * loss_clip
        assert {"train_loss_clip", "train_loss_pixel", "train_lr", "train_min_lr", "train_weight_decay",
                "train_grad_norm", "train_loss_scale", "n_parameters"} <= set(record)
        assert record["train_loss_pixel"] == 0 and record["train_loss"] == pytest.approx(record["train_loss_clip"])
        assert record["train_min_lr"] == record["train_lr"]  # no layer decay in pretraining
    if mask_type == "tube":
        assert logged[0]["train_lr"] == pytest.approx(0.5 * (0.0 + 2e-3))  # mean of linspace(0, lr, 2)
        scalars = read_scalars(tmp_path / "tb")  # the official pretraining scalars, every step (2 per epoch)
        assert set(scalars) == {"loss/loss", "loss_pixel/loss_pixel", "loss_clip/loss_clip", "opt/loss_scale",
                                "opt/lr", "opt/min_lr", "opt/weight_decay", "opt/grad_norm"}
        assert all([step for step, _ in values] == list(range(8)) for values in scalars.values())
        assert scalars["opt/lr"][:2] == [(0, 0.0), (1, pytest.approx(2e-3))]
    if mask_type != "attention":
        return
    ft_argv = ["--model", "videomamba_tiny", "--depth", "2", "--embed_dim", "32", "--data_set", "Kinetics_sparse",
               "--data_path", str(video_set), "--prefix", str(video_set), "--nb_classes", "4", "--num_frames", "4",
               "--input_size", "32", "--short_side_size", "32", "--finetune", str(out / "checkpoint-latest.pth")]
    assert_finetune_loaded(run_class_finetuning.get_args_parser().parse_args(ft_argv), saved["model"])


class ChromaTeacher(nn.Module):
    """A teacher whose features carry the class of the ``colour`` set: every token's feature (the cls first, then
    each 16-pixel patch of each frame) is a fixed embedding of the clip's mean chroma (RGB minus its grey level),
    which only the coloured square contributes to."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(3, dim, generator=g))
        self.register_buffer("bias", 0.2 * torch.randn(dim, generator=g))
        self.register_buffer("mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, T, H, W) ImageNet-normalised -> features (1, B, 1 + T·(H/16)·(W/16), dim)."""
        rgb = (x * self.std + self.mean).mean(dim=(2, 3, 4))
        chroma = rgb - rgb.mean(dim=1, keepdim=True)
        feature = nn.functional.normalize(5 * chroma @ self.proj + self.bias, dim=-1)
        tokens = 1 + x.shape[2] * (x.shape[3] // 16) * (x.shape[4] // 16)
        return feature[None, :, None].expand(1, -1, tokens, -1)


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("colour")
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_synthetic_dataset.py"), "--out", str(out),
                    "--mode", "colour", "--num_train", "32", "--num_val", "16", "--num_test", "4", "--size", "32",
                    "--frames", "8"], check=True, capture_output=True)
    return out


def test_pretrained_student_fine_tunes_better_than_a_random_start(colour_set, tmp_path, monkeypatch):
    """Masked distillation of a teacher that knows the class, then the same fine-tuning budget (2 epochs, same seed)
    from the distilled student and from a random start: the pretrained start ends with clearly lower losses."""
    monkeypatch.setattr(run_mask_pretrain, "build_teacher", lambda config: ChromaTeacher(config.clip_output_dim))
    pt_argv = ["--model", "videomamba_tiny_pretrain", "--depth", "2", "--embed_dim", "32",
               "--data_path", str(colour_set / "train.csv"), "--prefix", str(colour_set), "--num_frames", "4",
               "--tubelet_size", "1", "--input_size", "32", "--batch_size", "4", "--epochs", "8", "--warmup_epochs",
               "0", "--lr", "6e-3", "--min_lr", "1e-4", "--no_lr_scale", "--device", "cpu", "--num_workers", "0",
               "--mask_type", "tube", "--mask_ratio", "0.5", "--clip_output_dim", "16", "--clip_input_resolution",
               "32", "--clip_return_cls", "--output_dir", str(tmp_path / "pt"), "--print_freq", "100"]
    losses = [r["train_loss"] for r in run_mask_pretrain.main(run_mask_pretrain.get_args_parser().parse_args(pt_argv))
              ["history"]]
    assert losses[-1] < 0.5 * losses[0]
    pretrained = tmp_path / "pt" / "checkpoint-latest.pth"

    def fine_tune(name: str, *init: str) -> list[dict]:
        argv = ["--model", "videomamba_tiny", "--depth", "2", "--embed_dim", "32", "--data_set", "Kinetics_sparse",
                "--data_path", str(colour_set), "--prefix", str(colour_set), "--nb_classes", "4", "--num_frames", "4",
                "--tubelet_size", "1", "--input_size", "32", "--short_side_size", "32", "--batch_size", "4",
                "--num_sample", "1", "--epochs", "2", "--warmup_epochs", "0", "--lr", "5e-3", "--no_lr_scale",
                "--device", "cpu", "--num_workers", "0", "--aa", "none", "--reprob", "0", "--mixup", "0", "--cutmix",
                "0", "--smoothing", "0", "--seed", "0", "--test_num_segment", "1", "--test_num_crop", "1",
                "--output_dir", str(tmp_path / name), "--print_freq", "100", *init]
        args = run_class_finetuning.get_args_parser().parse_args(argv)
        if init:
            assert_finetune_loaded(args, torch.load(pretrained, weights_only=False)["model"])
        return run_class_finetuning.main(args)["history"]

    warm, cold = fine_tune("warm", "--finetune", str(pretrained)), fine_tune("cold")
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in warm + cold)
    # measured: train loss 0.97 vs 1.35, validation loss 1.06 vs 1.36, accuracy 69 % vs 31 % (chance: 25 %)
    assert warm[-1]["train_loss"] < 0.85 * cold[-1]["train_loss"]
    assert warm[-1]["val_loss"] < 0.9 * cold[-1]["val_loss"]
    assert warm[-1]["val_acc1"] > cold[-1]["val_acc1"]
