"""Exact resume (issue 13): real runs SIGKILLed mid-epoch (or inside a checkpoint write) and rerun with the same
command end with bit-identical weights, EMA, optimiser state, log.txt and test predictions to an uninterrupted run.

Fine-tuning uses every random augmentation (RandAugment, random erasing, mixup/cutmix, drop path, --num_sample 2)
with persistent DataLoader workers; one process and two (torchrun, gloo on CPU); masked pretraining once. Every
family's runs go concurrently: the uninterrupted reference beside the kill chains.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from entry_runs import run
from tools.make_synthetic_dataset import make_dataset

SIGKILLED = -9
TINY = ["--depth", "2", "--embed_dim", "32", "--num_frames", "4", "--tubelet_size", "1", "--input_size", "32",
        "--device", "cpu", "--print_freq", "1", "--warmup_epochs", "1", "--lr", "1e-3", "--no_lr_scale"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("resume_data"), num_train=8, num_val=4, num_test=4, size=32,
                        frames=8)


def finetune_argv(data: Path, out: Path, batch_size: int, workers: int, *extra: str) -> list[str]:
    """Two epochs of 4 optimiser steps (8 videos: batch 2 in one process, batch 1 × 2 ranks)."""
    return ["--model", "videomamba_tiny", *TINY, "--data_set", "Kinetics_sparse", "--data_path", str(data),
            "--prefix", str(data), "--nb_classes", "4", "--short_side_size", "32", "--batch_size", str(batch_size),
            "--num_sample", "2", "--epochs", "2", "--num_workers", str(workers), "--aa", "rand-m7-n4-mstd0.5-inc1",
            "--reprob", "0.5", "--mixup", "0.8", "--cutmix", "1.0", "--drop_path", "0.2", "--model_ema",
            "--model_ema_decay", "0.9", "--test_num_segment", "1", "--test_num_crop", "1", "--save_ckpt_freq", "1",
            "--output_dir", str(out), *extra]


def latest(out: Path) -> dict[str, Any]:
    return torch.load(out / "checkpoint-latest.pth", map_location="cpu", weights_only=True)


def assert_same_run(reference: Path, out: Path) -> None:
    """Bit-identical final weights, EMA and optimiser moments; the same log.txt and per-video predictions."""
    a, b = latest(reference), latest(out)
    assert a["epoch"] == b["epoch"]
    for key in ("model", "model_ema"):
        if a[key] is not None:
            assert a[key].keys() == b[key].keys()
            for name, tensor in a[key].items():
                assert torch.equal(tensor, b[key][name]), f"{key} {name}"
    moments_a, moments_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert moments_a.keys() == moments_b.keys()
    for index, moments in moments_a.items():
        for name, value in moments.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(moments_b[index][name])), f"{index} {name}"
    assert (out / "log.txt").read_text() == (reference / "log.txt").read_text()
    if (reference / "test_videos.csv").exists():
        assert (out / "test_videos.csv").read_text() == (reference / "test_videos.csv").read_text()


def concurrently(**chains: Callable[[], Any]) -> dict[str, Any]:
    with ThreadPoolExecutor(max_workers=len(chains)) as pool:
        futures = {name: pool.submit(chain) for name, chain in chains.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def finetune_runs(data, tmp_path_factory) -> dict[str, Any]:
    """One process, 2 DataLoader workers: the reference; a run killed in epoch 1 and rerun; and with
    --save_ckpt_steps 1, a run killed in epoch 1, rerun and killed inside a checkpoint write, rerun again."""
    root = tmp_path_factory.mktemp("finetune_resume")

    def reference() -> Path:
        assert run("run_class_finetuning.py", finetune_argv(data, root / "ref", 2, 2), root / "ref.log") == 0
        return root / "ref"

    def epoch_checkpoints() -> dict[str, Any]:
        out, argv = root / "a", finetune_argv(data, root / "a", 2, 2)
        seen = {"kill": run("run_class_finetuning.py", argv, root / "a1.log", kill_at=7)}  # epoch 1, 3rd step
        seen["after_kill"] = {k: latest(out).get(k) for k in ("epoch", "epoch_step")}
        seen["rerun"] = run("run_class_finetuning.py", argv, root / "a2.log")
        seen["log"] = (root / "a2.log").read_text()
        return seen

    def step_checkpoints() -> dict[str, Any]:
        out, argv = root / "b", finetune_argv(data, root / "b", 2, 2, "--save_ckpt_steps", "1")
        seen = {"kill": run("run_class_finetuning.py", argv, root / "b1.log", kill_at=7)}
        seen["after_kill"] = {k: latest(out).get(k) for k in ("epoch", "epoch_step")}
        seen["kill_in_save"] = run("run_class_finetuning.py", argv, root / "b2.log", kill_in_save=1)
        seen["partial"] = [p.stat().st_size for p in out.glob(".checkpoint-latest.pth.*.tmp")]
        seen["after_save_kill"] = {k: latest(out).get(k) for k in ("epoch", "epoch_step")}
        seen["rerun"] = run("run_class_finetuning.py", argv, root / "b3.log")
        seen["leftovers"] = sorted(p.name for p in out.glob(".*"))
        seen["logs"] = [(root / f"b{i}.log").read_text() for i in (2, 3)]
        return seen

    runs = concurrently(ref=reference, a=epoch_checkpoints, b=step_checkpoints)
    runs.update(ref_dir=root / "ref", a_dir=root / "a", b_dir=root / "b")
    return runs


def test_killed_mid_epoch_rerun_resumes_from_the_epoch_checkpoint_bit_identically(finetune_runs):
    a = finetune_runs["a"]
    assert a["kill"] == SIGKILLED and a["after_kill"] == {"epoch": 0, "epoch_step": None}
    assert a["rerun"] == 0 and "at epoch 1, step 0 of it" in a["log"]
    assert_same_run(finetune_runs["ref_dir"], finetune_runs["a_dir"])


def test_step_checkpoints_resume_inside_the_epoch_and_survive_a_kill_during_the_write(finetune_runs):
    b = finetune_runs["b"]
    assert b["kill"] == SIGKILLED and b["after_kill"] == {"epoch": 0, "epoch_step": 2}  # steps 1 and 2 of epoch 1
    assert "at epoch 1, step 2 of it" in b["logs"][0]
    # killed while writing the checkpoint of step 3: half a temp file, the previous checkpoint still loads
    assert b["kill_in_save"] == SIGKILLED and len(b["partial"]) == 1 and b["partial"][0] > 0
    assert b["after_save_kill"] == {"epoch": 0, "epoch_step": 2}
    assert b["rerun"] == 0 and "at epoch 1, step 2 of it" in b["logs"][1]
    assert "left by an interrupted checkpoint write" in b["logs"][1] and b["leftovers"] == []
    assert_same_run(finetune_runs["ref_dir"], finetune_runs["b_dir"])


def test_two_processes_killed_and_resumed_match_an_uninterrupted_two_process_run(data, tmp_path):
    """torchrun --nproc_per_node 2 (gloo on CPU), one worker each, step checkpoints every 2 steps."""
    argv = lambda out: finetune_argv(data, out, 1, 1, "--save_ckpt_steps", "2")  # noqa: E731

    def chain() -> dict[str, Any]:
        seen = {"kill": run("run_class_finetuning.py", argv(tmp_path / "k"), tmp_path / "k1.log", nproc=2,
                            kill_at=7)}
        seen["after_kill"] = {k: latest(tmp_path / "k").get(k) for k in ("epoch", "epoch_step")}
        seen["rerun"] = run("run_class_finetuning.py", argv(tmp_path / "k"), tmp_path / "k2.log", nproc=2)
        return seen

    runs = concurrently(ref=lambda: run("run_class_finetuning.py", argv(tmp_path / "ref"), tmp_path / "ref.log",
                                        nproc=2), chain=chain)
    assert runs["ref"] == 0, (tmp_path / "ref.log").read_text()[-3000:]
    seen = runs["chain"]
    assert seen["kill"] != 0 and seen["after_kill"] == {"epoch": 0, "epoch_step": 2}
    assert seen["rerun"] == 0 and "at epoch 1, step 2 of it" in (tmp_path / "k2.log").read_text()
    assert_same_run(tmp_path / "ref", tmp_path / "k")


def test_masked_pretraining_resumes_inside_the_epoch_bit_identically(data, tmp_path):
    """Tube masks, flip, colour jitter, drop path and --num_sample 2 with a worker; killed at step 3 of 4."""
    def argv(out: Path) -> list[str]:
        return ["--model", "videomamba_tiny_pretrain", *TINY, "--warmup_epochs", "0", "--data_path",
                str(data / "train.csv"), "--prefix", str(data), "--batch_size", "2", "--num_sample", "2", "--epochs",
                "1", "--num_workers", "1", "--mask_type", "tube", "--mask_ratio", "0.5", "--flip", "True",
                "--color_jitter", "0.4", "--drop_path", "0.2", "--clip_teacher_random", "--clip_teacher_width", "32",
                "--clip_teacher_layers", "1", "--clip_teacher_heads", "2", "--clip_output_dim", "16",
                "--clip_input_resolution", "32", "--clip_return_cls", "--save_ckpt_steps", "1", "--output_dir",
                str(out)]

    def chain() -> tuple[int, dict, int]:
        killed = run("run_mask_pretrain.py", argv(tmp_path / "k"), tmp_path / "k1.log", kill_at=3)
        after = {k: latest(tmp_path / "k").get(k) for k in ("epoch", "epoch_step")}
        return killed, after, run("run_mask_pretrain.py", argv(tmp_path / "k"), tmp_path / "k2.log")

    runs = concurrently(ref=lambda: run("run_mask_pretrain.py", argv(tmp_path / "ref"), tmp_path / "ref.log"),
                        chain=chain)
    assert runs["ref"] == 0, (tmp_path / "ref.log").read_text()[-3000:]
    assert runs["chain"] == (SIGKILLED, {"epoch": -1, "epoch_step": 2}, 0)
    assert "at epoch 0, step 2 of it" in (tmp_path / "k2.log").read_text()
    assert_same_run(tmp_path / "ref", tmp_path / "k")
