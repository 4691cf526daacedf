"""End-to-end masked distillation through run_mask_pretrain.py with a tiny random teacher, then fine-tuning from it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import run_class_finetuning
from models.factory import build_classifier
from utils.config import finetune_config
import run_mask_pretrain

ROOT = Path(__file__).resolve().parents[1]


def _build_model(args):
    """The classifier run_class_finetuning.py builds for these parsed flags."""
    return build_classifier(finetune_config(args).model)


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
        argv += ["--warmup_epochs", "1", "--warmup_lr", "1e-3"]
    args = run_mask_pretrain.get_args_parser().parse_args(argv)
    history = run_mask_pretrain.main(args)["history"]
    losses = [r["train_loss"] for r in history]
    assert losses[-1] < 0.8 * losses[0]
    saved = torch.load(out / "checkpoint-latest.pth", weights_only=False)
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
    if mask_type != "attention":
        return
    ft_argv = ["--model", "videomamba_tiny", "--depth", "2", "--embed_dim", "32", "--data_set", "Kinetics_sparse",
               "--data_path", str(video_set), "--prefix", str(video_set), "--nb_classes", "4", "--num_frames", "4",
               "--input_size", "32", "--short_side_size", "32", "--batch_size", "4", "--num_sample", "1",
               "--epochs", "1", "--device", "cpu", "--num_workers", "0", "--aa", "none", "--reprob", "0",
               "--mixup", "0", "--cutmix", "0", "--finetune", str(out / "checkpoint-latest.pth"),
               "--output_dir", str(tmp_path / "ft"), "--disable_eval_during_finetuning"]
    ft_args = run_class_finetuning.get_args_parser().parse_args(ft_argv)
    model = _build_model(ft_args)
    torch.testing.assert_close(model.state_dict()["layers.1.mixer.A_log"], saved["model"]["layers.1.mixer.A_log"])
    result = run_class_finetuning.main(ft_args)
    assert torch.isfinite(torch.tensor(result["history"][0]["train_loss"]))
