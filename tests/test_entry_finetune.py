"""End-to-end fine-tuning through run_class_finetuning.py on a tiny synthetic video set (CPU, tiny model)."""
import json
import math
import shutil
import socket
import statistics
from dataclasses import asdict
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import run_class_finetuning
from models.factory import build_classifier
from models.ops import bimamba_cpu
from official_merge import official_merge
from tensorboard_events import read_scalars
from utils.config import checkpoint_args, finetune_config
from utils.errors import MissingPathError, UsageError
from entry_runs import environment
from untrusted import TouchOnLoad

ROOT = Path(__file__).resolve().parents[1]


def _build_model(args):
    """The classifier run_class_finetuning.py builds for these parsed flags."""
    return build_classifier(finetune_config(args).model)


@pytest.fixture(scope="module")
def video_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_synthetic_dataset.py"), "--out", str(out),
                    "--num_train", "16", "--num_val", "8", "--num_test", "4", "--size", "32", "--frames", "8"],
                   check=True, capture_output=True)
    return out


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", "videomamba_tiny", "--depth", "2", "--embed_dim", "32", "--data_set", "Kinetics_sparse",
            "--data_path", str(data), "--prefix", str(data), "--nb_classes", "4", "--num_frames", "4",
            "--input_size", "32", "--short_side_size", "32", "--batch_size", "4", "--num_sample", "1",
            "--warmup_epochs", "0", "--lr", "2e-3", "--min_lr", "1e-4", "--no_lr_scale", "--device", "cpu",
            "--num_workers", "0", "--aa", "none", "--reprob", "0", "--mixup", "0", "--cutmix", "0", "--smoothing", "0",
            "--drop_path", "0", "--output_dir", str(out), "--test_num_segment", "2", "--test_num_crop", "2",
            "--save_ckpt_freq", "1", "--print_freq", "100", *extra]


def _run(argv: list[str]) -> dict:
    return run_class_finetuning.main(run_class_finetuning.get_args_parser().parse_args(argv))


def test_finetune_lowers_loss_then_eval_reproduces_and_test_best(video_set, tmp_path):
    out = tmp_path / "run"
    argv = _argv(video_set, out, "--epochs", "4", "--test_best", "--log_dir", str(tmp_path / "tb"))
    result = _run(argv)
    losses = [r["train_loss"] for r in result["history"]]
    assert losses[-1] < losses[0]
    best_acc = max(r["val_acc1"] for r in result["history"])
    assert result["best"] == best_acc
    assert (out / "checkpoint-best.pth").is_file() and (out / "args.json").is_file()
    args = run_class_finetuning.get_args_parser().parse_args(argv)
    assert json.loads((out / "args.json").read_text()) == json.loads(json.dumps(vars(args)))
    saved = torch.load(out / "checkpoint-best.pth", weights_only=True)
    assert saved["args"] == checkpoint_args(args, finetune_config(args))  # the official key: the flags
    assert saved["config"] == asdict(finetune_config(args))  # ours: the typed configuration as a plain dict
    test = result["test"]
    assert test["num_videos"] == 4 and test["missing"] == 0 and test["duplicates"] == 0
    assert len((out / "test_videos.csv").read_text().splitlines()) == 1 + 4
    # the official per-rank file: a first line, then 4 videos × 2 segments × 2 crops; the official merge agrees
    assert len((out / "0.txt").read_text().splitlines()) == 1 + 16
    assert official_merge(out, 1) == (pytest.approx(test["acc1"]), pytest.approx(test["acc5"]))
    logged = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    epochs = [r for r in logged if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3]
    official_keys = {"train_lr", "train_min_lr", "train_weight_decay", "train_loss", "train_class_acc",
                     "train_loss_scale", "train_grad_norm", "val_loss", "val_acc1", "val_acc5", "epoch", "n_parameters"}
    assert all(official_keys <= set(r) for r in epochs)
    model = _build_model(run_class_finetuning.get_args_parser().parse_args(_argv(video_set, out)))
    assert epochs[0]["n_parameters"] == sum(p.numel() for p in model.parameters())
    assert epochs[0]["train_min_lr"] < epochs[0]["train_lr"]  # layer decay 0.75 on the embeddings
    assert 0 <= epochs[-1]["train_class_acc"] <= 1
    assert logged[-1]["test_acc1"] == test["acc1"]
    assert logged[-1]["Final top-1"] == test["acc1"] and logged[-1]["Final Top-5"] == test["acc5"]
    assert logged[-1]["test_weights"] == str(out / "checkpoint-best.pth")
    per_class = json.loads((out / "test_per_class.json").read_text())  # the end-of-training test's report too
    assert per_class["num_videos"] == 4 and logged[-1]["test_mean_class_acc"] == per_class["mean_class_accuracy"]
    # TensorBoard: the official fine-tuning scalars, every step (4 per epoch), validation per epoch
    scalars = read_scalars(tmp_path / "tb")
    per_step = {"loss/loss", "loss/class_acc", "opt/loss_scale", "opt/lr", "opt/min_lr", "opt/weight_decay",
                "opt/grad_norm"}
    assert set(scalars) == per_step | {"perf/val_acc1", "perf/val_acc5", "perf/val_loss"}
    assert all([step for step, _ in scalars[tag]] == list(range(16)) for tag in per_step)
    assert scalars["perf/val_acc1"] == [(e, pytest.approx(r["val_acc1"])) for e, r in enumerate(epochs)]

    evaluated = _run(_argv(video_set, tmp_path / "eval", "--eval", "--resume", str(out / "checkpoint-best.pth")))
    assert evaluated["val"]["acc1"] == pytest.approx(best_acc)
    best_epoch = next(r for r in result["history"] if r["val_acc1"] == best_acc)  # checkpoint-best: the first
    assert evaluated["val"]["loss"] == pytest.approx(best_epoch["val_loss"], rel=1e-5)  # the accuracy alone is coarse
    assert evaluated["test"]["acc1"] == pytest.approx(test["acc1"])
    assert evaluated["weights"] == str(out / "checkpoint-best.pth")
    # the final test of the training run scored checkpoint-best (measured: epoch 0 of 4): the same per-video scores
    assert (tmp_path / "eval" / "test_videos.csv").read_text() == (out / "test_videos.csv").read_text()

    # --eval --test_best: checkpoint-best of --output_dir; --disable_eval_during_finetuning skips validation
    best_only = _run(_argv(video_set, out, "--eval", "--test_best", "--disable_eval_during_finetuning"))
    assert "val" not in best_only and best_only["weights"] == str(out / "checkpoint-best.pth")
    assert best_only["test"]["acc1"] == pytest.approx(test["acc1"])
    last = json.loads((out / "log.txt").read_text().splitlines()[-1])
    assert last["Final top-1"] == best_only["test"]["acc1"] and last["test_weights"] == best_only["weights"]
    # --eval alone: the newest complete checkpoint of --output_dir
    newest = _run(_argv(video_set, out, "--eval", "--disable_eval_during_finetuning"))
    assert newest["weights"] in (str(out / "checkpoint-latest.pth"), str(out / "checkpoint-3.pth"))
    with pytest.raises(MissingPathError, match="checkpoint-best"):
        _run(_argv(video_set, tmp_path / "empty", "--eval", "--test_best"))


def test_bf16_fine_tuning_on_cpu_trains_through_the_fused_mixer(video_set, tmp_path, monkeypatch):
    """--bf16, the flag of every published launcher, on CPU: the fused C++ mixer under bf16 autocast trains (the
    loss goes down), validates and runs the multi-view test."""
    seen = set()
    fused_forward = bimamba_cpu.forward

    def spy(ext, hidden, params, save):
        seen.add((hidden.dtype, save))
        return fused_forward(ext, hidden, params, save)

    monkeypatch.setattr(bimamba_cpu, "forward", spy)
    result = _run(_argv(video_set, tmp_path / "bf16", "--epochs", "4", "--bf16", "--scan_backend", "cpp"))
    assert seen == {(torch.bfloat16, True), (torch.bfloat16, False)}  # training, and evaluation without residuals
    losses = [r["train_loss"] for r in result["history"]]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert all(0 <= r["val_acc1"] <= 100 for r in result["history"])
    assert result["test"]["num_videos"] == 4 and result["test"]["missing"] == 0


def test_auto_resume_after_interruption_matches_uninterrupted_run(video_set, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _run(_argv(video_set, full, "--epochs", "3", "--disable_eval_during_finetuning", "--model_ema"))
    resumed.mkdir()
    shutil.copy(full / "checkpoint-0.pth", resumed / "checkpoint-0.pth")  # what a run killed in epoch 1 leaves
    result = _run(_argv(video_set, resumed, "--epochs", "3", "--disable_eval_during_finetuning", "--model_ema"))
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    # without --test_best the final weights get the multi-view test, logged with the official keys
    last = json.loads((resumed / "log.txt").read_text().splitlines()[-1])
    assert last["Final top-1"] == result["test"]["acc1"] and last["test_weights"] == "the final weights"
    a = torch.load(full / "checkpoint-latest.pth", weights_only=True)
    b = torch.load(resumed / "checkpoint-latest.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)
    assert "ema" not in a  # the official key
    for key, value in a["model_ema"].items():
        torch.testing.assert_close(b["model_ema"][key], value, rtol=0, atol=0, msg=key)


def test_deepspeed_and_plain_paths_train_the_same(video_set, tmp_path, monkeypatch):
    with socket.socket() as free:  # a free port: other test runs may share the machine
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    # the variables init_distributed exports for DeepSpeed's one-process group, set here so that they are removed
    # afterwards (left behind, they would make the next in-process run start a process group of its own)
    for name, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port)), ("RANK", "0"),
                        ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    common = ("--epochs", "1", "--disable_eval_during_finetuning", "--clip_grad", "1.0", "--update_freq", "2")
    plain = _run(_argv(video_set, tmp_path / "plain", *common))
    try:
        ds = _run(_argv(video_set, tmp_path / "ds", *common, "--enable_deepspeed"))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert (tmp_path / "ds" / "checkpoint-latest" / "complete").is_file()
    assert ds["history"][0]["train_loss"] == pytest.approx(plain["history"][0]["train_loss"], rel=1e-4)
    a = torch.load(tmp_path / "plain" / "checkpoint-latest.pth", weights_only=True)["model"]
    states = tmp_path / "ds" / "checkpoint-latest" / "mp_rank_00_model_states.pt"
    b = torch.load(states, weights_only=True)["module"]
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=1e-4, atol=1e-5, msg=key)

    # DeepSpeed reads its files with a full unpickle; ours replaces that reader: code in a file is refused (a new
    # process each: DeepSpeed keeps its process groups for the life of a process)
    torch.save({**torch.load(states, weights_only=True), "args": TouchOnLoad(tmp_path / "code_ran")}, states)
    evaluate = [sys.executable, "run_class_finetuning.py", *_argv(video_set, tmp_path / "ds_eval", *common), "--eval",
                "--resume", str(tmp_path / "ds" / "checkpoint-latest"), "--enable_deepspeed"]
    env = environment(MASTER_ADDR="127.0.0.1", MASTER_PORT="29632")
    refused = subprocess.run(evaluate, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and not (tmp_path / "code_ran").exists(), refused.stderr[-3000:]
    assert refused.stderr.splitlines()[-1].startswith(f"error: {states} is not a weights-only checkpoint")
    trusted = subprocess.run([*evaluate, "--trust_checkpoint"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
    assert trusted.returncode == 0 and (tmp_path / "code_ran").exists(), trusted.stderr[-3000:]


@pytest.fixture(scope="module")
def brightness_set(tmp_path_factory):
    """Regression videos whose label in [-1, 1] sets their grey level (evenly spread labels: variance ≈ 1/3)."""
    out = tmp_path_factory.mktemp("brightness")
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_synthetic_dataset.py"), "--out", str(out),
                    "--mode", "brightness", "--num_train", "48", "--num_val", "12", "--num_test", "12", "--size", "32",
                    "--frames", "8"], check=True, capture_output=True)
    return out


def _label_variance(path: Path) -> float:
    return statistics.pvariance([float(line.split()[1]) for line in path.read_text().splitlines()])


def test_regression_learns_a_real_valued_target(brightness_set, tmp_path):
    """The regression head learns the brightness: validation and multi-view test MSE end well below the labels'
    variance (what predicting the mean scores; predicting only the sign scores half of it)."""
    argv = _argv(brightness_set, tmp_path / "out", "--epochs", "8", "--lr", "4e-3", "--test_best",
                 "--task", "regression")
    argv[argv.index("--nb_classes") + 1] = "1"
    result = _run(argv)
    val_mse = [r["val_mse"] for r in result["history"]]
    assert min(val_mse) >= 0 and result["test"]["mse"] >= 0
    assert val_mse[-1] < 0.5 * _label_variance(brightness_set / "val.csv")
    assert result["test"]["mse"] < 0.5 * _label_variance(brightness_set / "test.csv")
    last = json.loads((tmp_path / "out" / "log.txt").read_text().splitlines()[-1])
    assert last["Final MSE Loss"] == result["test"]["mse"] and "Final top-1" not in last
    assert "test_mean_class_acc" not in last and not (tmp_path / "out" / "test_per_class.json").exists()
    assert official_merge(tmp_path / "out", 1, "regression") == (pytest.approx(result["test"]["mse"], rel=1e-5),)
    assert result["best"] == min(val_mse)
    with pytest.raises(UsageError, match="--task classification needs --nb_classes >= 2"):
        _run(_argv(brightness_set, tmp_path / "bad", "--epochs", "1", "--task", "classification", "--nb_classes", "1"))


def test_k710_checkpoint_into_600_classes_needs_label_map(tmp_path):
    """--finetune of a Kinetics-710 checkpoint: 400 classes keep the first rows, 600 need --label_map."""
    base = ["--model", "videomamba_tiny", "--depth", "1", "--embed_dim", "16", "--num_frames", "2",
            "--input_size", "32", "--tubelet_size", "1", "--finetune", str(tmp_path / "k710.pth")]
    parse = run_class_finetuning.get_args_parser().parse_args
    source = _build_model(parse(base[:-2] + ["--nb_classes", "710"]))
    torch.save({"model": source.state_dict()}, tmp_path / "k710.pth")
    head = source.head.weight.detach()
    k400 = _build_model(parse(base + ["--nb_classes", "400"]))
    assert torch.equal(k400.head.weight.detach(), head[:400])
    with pytest.raises(ValueError, match="needs --label_map"):
        _build_model(parse(base + ["--nb_classes", "600"]))
    rows = list(range(110, 710))
    (tmp_path / "label_mixto600.json").write_text(json.dumps(rows))
    k600 = _build_model(parse(base + ["--nb_classes", "600", "--label_map",
                                                          str(tmp_path / "label_mixto600.json")]))
    assert torch.equal(k600.head.weight.detach(), head[110:])
