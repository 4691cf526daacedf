"""The typed configuration: every derived value computed once from the parsed flags, the environment variables as
fallbacks of real flags, the official ``args`` entry of checkpoints, and the batch types' contract."""
import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import run_class_finetuning
import run_mask_pretrain
import run_regression_finetuning
from datasets.collate import collate_eval, collate_masked, collate_train
from engines.fit import build_runtime, samples_per_step
from engines.runtime import deepspeed_config
from models.clip_teacher import CLIP_DIR_ENV, default_clip_weights
from models.factory import build_classifier, build_student, build_teacher
from models.ops import get_backend
from models.ops.backend import ENV_VAR as SCAN_BACKEND_ENV
from utils.batch import EvalBatch, MaskedBatch, TrainBatch
from utils.config import (RUN_ONLY_FLAGS, FinetuneConfig, PretrainConfig, changed_flags, checkpoint_args,
                          finetune_config, pretrain_config)
from utils.distributed import DistInfo, launcher_env
from utils.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", SCAN_BACKEND_ENV, CLIP_DIR_ENV)


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch):
    """No launcher and no VideoMamba variables: a plain single process."""
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)


def finetune(*argv: str) -> FinetuneConfig:
    return finetune_config(run_class_finetuning.get_args_parser().parse_args(list(argv)))


def pretrain(*argv: str) -> PretrainConfig:
    return pretrain_config(run_mask_pretrain.get_args_parser().parse_args(list(argv)))


def test_lr_is_scaled_once_by_the_total_batch_and_num_sample(monkeypatch):
    config = finetune("--batch_size", "16", "--update_freq", "2", "--num_sample", "2", "--lr", "1e-3")
    assert config.runtime.world_size == 1
    assert config.optim.lr_scale == 16 * 2 * 2 / 256
    assert config.optim.lr == pytest.approx(1e-3 * 0.25) and config.optim.min_lr == pytest.approx(1e-6 * 0.25)
    assert config.optim.warmup_start == config.optim.warmup_lr == pytest.approx(1e-6 * 0.25)
    assert finetune("--no_lr_scale", "--lr", "1e-3").optim.lr == 1e-3
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "8")  # torchrun's variables: the world size of the lr rule
    scaled = finetune("--batch_size", "16", "--num_sample", "2", "--lr", "1e-3")
    assert scaled.runtime.world_size == 8 and scaled.optim.lr == pytest.approx(1e-3 * 16 * 8 * 2 / 256)


def test_the_launchers_world_size_is_the_runs_everywhere(monkeypatch):
    """8 torchrun ranks, before (or without) a process group: the lr rule, the samples per step that a mid-epoch
    resume compares, DeepSpeed's batch and the checkpoint's official ``args`` all count 8 processes."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "8")
    args = run_class_finetuning.get_args_parser().parse_args(["--batch_size", "4", "--update_freq", "2"])
    config = finetune_config(args)
    assert config.runtime.world_size == 8 and args.world_size == 1  # the flag is informational
    assert samples_per_step(config.runtime) == 4 * 2 * 8
    assert deepspeed_config(config.optim, config.runtime)["train_batch_size"] == 4 * 2 * 8
    assert checkpoint_args(args, config)["world_size"] == 8


def test_slurm_variables_and_torchrun_first(monkeypatch):
    """srun: rank, world size and local rank from SLURM_*; under torchrun inside a slurm job torchrun's win."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for name, value in (("SLURM_PROCID", "3"), ("SLURM_NTASKS", "8"), ("SLURM_LOCALID", "1")):
        monkeypatch.setenv(name, value)
    assert launcher_env() == (3, 8, 1) and finetune().runtime.world_size == 8
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launcher_env() == (1, 2, 0) and finetune().runtime.world_size == 2


def test_pretraining_warms_up_from_zero_and_resolves_weight_decay_end():
    config = pretrain("--warmup_lr", "1e-3", "--batch_size", "32")
    assert config.optim.warmup_start == 0.0 and config.optim.warmup_lr == pytest.approx(1e-3 * 32 / 256)
    assert config.optim.weight_decay_end == config.optim.weight_decay == 0.05
    assert finetune("--weight_decay_end", "0.1").optim.weight_decay_end == 0.1
    assert finetune("--opt_betas", "0.9", "0.999").optim.opt_betas == (0.9, 0.999)


def test_regression_is_decided_once_from_task_and_nb_classes():
    regression = finetune("--task", "regression", "--nb_classes", "1", "--mixup", "0.8", "--smoothing", "0.1")
    assert regression.task == "regression" and regression.data.regression
    augment = regression.augment
    assert (augment.mixup, augment.cutmix, augment.cutmix_minmax, augment.smoothing) == (0.0, 0.0, None, 0.0)
    alias = run_regression_finetuning.get_args_parser().parse_args([])
    assert finetune_config(alias).task == "regression"
    classification = finetune("--nb_classes", "10")
    assert classification.task == "classification" and not classification.data.regression
    assert classification.augment.mixup == 0.8 and classification.augment.smoothing == 0.1
    with pytest.raises(UsageError, match="--task regression needs --nb_classes 1"):
        finetune("--task", "regression", "--nb_classes", "400")
    implied = finetune("--nb_classes", "1", "--mixup", "0.8")
    assert implied.task == "regression" and implied.data.regression and implied.augment.mixup == 0.0
    with pytest.raises(UsageError, match="--task classification needs --nb_classes >= 2"):
        finetune("--task", "classification", "--nb_classes", "1")


def test_aa_spellings_and_frame_folders():
    assert finetune("--aa", "none").augment.aa is None and finetune("--aa", "").augment.aa is None
    assert finetune().augment.aa == "rand-m7-n4-mstd0.5-inc1"
    assert finetune("--no_use_decord").data.frame_folders and not finetune().data.frame_folders
    # the parser's values, not a builder's own fallback: --reprob 0.25, --test_num_crop 3
    assert (finetune().augment.reprob, finetune().augment.test_num_crop) == (0.25, 3)


def test_grad_scaler_as_the_official_scripts_fine_tuning_unless_no_amp_pretraining_always():
    assert finetune().runtime.loss_scaler and finetune("--bf16").runtime.loss_scaler
    assert not finetune("--no_amp").runtime.loss_scaler
    assert pretrain().runtime.loss_scaler and pretrain("--no_amp").runtime.loss_scaler
    cpu = DistInfo(0, 1, 0, torch.device("cpu"))
    for config, enabled in ((finetune("--bf16", "--device", "cpu"), True), (finetune("--no_amp"), False),
                            (pretrain("--no_amp"), True)):
        runtime = build_runtime(config.optim, config.runtime, torch.nn.Linear(2, 2), cpu)
        assert runtime.scaler.is_enabled() is enabled
        assert runtime.loss_scale == (65536.0 if enabled else 0.0)  # the official log value without a scaler: 0


TINY = ("--depth", "2", "--embed_dim", "16", "--num_frames", "2", "--input_size", "32")


def test_scan_backend_flag_with_the_environment_as_fallback(monkeypatch):
    """Every mixer gets ``--scan_backend``, else ``$VIDEOMAMBA_SCAN_BACKEND`` (read by models.ops only), else auto."""
    def backends(*argv: str) -> set[str]:
        classifier = build_classifier(finetune(*TINY, "--nb_classes", "3", *argv).model)
        student = build_student(pretrain(*TINY, *argv).model)
        return {layer.mixer.backend for model in (classifier, student) for layer in model.layers}

    assert finetune().model.scan_backend is None and backends() == {"auto"}
    monkeypatch.setenv(SCAN_BACKEND_ENV, "ref")
    assert backends() == {"ref"}
    assert backends("--scan_backend", "torch") == {"torch"}
    with pytest.raises(SystemExit):
        run_class_finetuning.get_args_parser().parse_args(["--scan_backend", "gpu"])


def test_the_run_gives_its_scan_backend_to_every_mixer_not_to_the_process():
    previous = get_backend()
    config = finetune("--scan_backend", "ref", *TINY, "--nb_classes", "3")
    model = build_classifier(config.model)
    assert [layer.mixer.backend for layer in model.layers] == ["ref", "ref"]
    assert get_backend() == previous


def test_model_flags_reach_the_classifier_and_the_student():
    """--drop, --fc_drop_rate, --drop_path, --tubelet_size and the checkpointing flags, built as the scripts do."""
    flags = ("--drop_path", "0.4", "--tubelet_size", "2", "--use_checkpoint", "--checkpoint_num", "1")
    classifier = build_classifier(finetune(*TINY, *flags, "--nb_classes", "3", "--drop", "0.3",
                                           "--fc_drop_rate", "0.2").model)
    student = build_student(pretrain(*TINY, *flags).model)
    assert (classifier.pos_drop.p, classifier.head_drop.p) == (0.3, 0.2)
    for model in (classifier, student):
        assert model.drop_path.drop_prob == pytest.approx(0.4) and model.patch_embed.proj.kernel_size[0] == 2
        assert (model.use_checkpoint, model.checkpoint_num) == (True, 1)


def test_clip_teacher_path_with_the_clip_folder_as_fallback(monkeypatch, tmp_path):
    assert pretrain("--clip_teacher_path", "/w/b16.pth").teacher.clip_teacher_path == "/w/b16.pth"
    with pytest.raises(FileNotFoundError, match="--clip_teacher_path.*VIDEOMAMBA_CLIP_DIR"):
        build_teacher(pretrain().teacher)
    monkeypatch.setenv(CLIP_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"weights not found at {tmp_path / 'vit_b16.pth'}"):
        build_teacher(pretrain().teacher)
    assert default_clip_weights("ViT-L/14") == tmp_path / "vit_l14.pth"
    teacher = pretrain().teacher
    assert not teacher.clip_return_attn and pretrain("--mask_type", "attention").teacher.clip_return_attn


def test_checkpoint_args_are_the_official_namespace_and_the_config_a_plain_dict():
    args = run_class_finetuning.get_args_parser().parse_args(["--task", "regression", "--nb_classes", "1",
                                                             "--lr", "1e-3", "--batch_size", "128"])
    config = finetune_config(args)
    saved = checkpoint_args(args, config)
    assert saved["lr"] == pytest.approx(1e-3) and config.optim.lr_scale == 1.0  # 128 × 2 samples / 256
    assert (saved["mixup"], saved["cutmix"], saved["smoothing"]) == (0.0, 0.0, 0.0)
    assert {k: v for k, v in saved.items() if k not in ("lr", "min_lr", "warmup_lr", "mixup", "cutmix",
                                                          "cutmix_minmax", "smoothing")} == \
        {k: v for k, v in vars(args).items() if k not in ("lr", "min_lr", "warmup_lr", "mixup", "cutmix",
                                                          "cutmix_minmax", "smoothing")}
    plain = dataclasses.asdict(config)
    assert plain["optim"]["lr"] == config.optim.lr and plain["data"]["regression"] is True
    json.dumps(plain)  # plain values only
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optim.lr = 1.0  # type: ignore[misc]


def test_changed_flags_are_those_that_change_what_is_trained():
    parser = run_class_finetuning.get_args_parser()
    before = parser.parse_args(["--num_frames", "8", "--train_crop_scale", "0.5", "1", "--num_workers", "4"])
    now = parser.parse_args(["--num_frames", "16", "--train_crop_scale", "0.5", "1.0", "--num_workers", "8",
                             "--output_dir", "elsewhere", "--eval", "--resume", "x.pth"])
    saved = checkpoint_args(before, finetune_config(before))
    current = checkpoint_args(now, finetune_config(now))
    assert changed_flags(saved, current) == {"num_frames": (8, 16)}
    official = argparse.Namespace(**saved)  # the official checkpoints hold the Namespace (scaled lr written back)
    assert changed_flags(official, current) == {"num_frames": (8, 16)}
    saved["tuple_as_list"] = current["tuple_as_list"] = None
    saved["train_crop_scale"] = list(saved["train_crop_scale"])  # a list and a tuple of equal values are equal
    assert changed_flags(saved, current) == {"num_frames": (8, 16)}
    assert changed_flags(None, current) == {} and changed_flags({"only_old": 1}, current) == {}
    assert RUN_ONLY_FLAGS <= set(current)  # every flag left out is a real flag of the script


def test_every_official_launcher_command_line_converts():
    data = json.loads((REPO / "tests" / "data" / "official_flags.json").read_text())
    parsers = {"run_class_finetuning.py": (run_class_finetuning.get_args_parser(), finetune_config),
               "run_regression_finetuning.py": (run_regression_finetuning.get_args_parser(), finetune_config),
               "run_videomamba_pretraining.py": (run_mask_pretrain.get_args_parser(), pretrain_config)}
    for launcher in data["launchers"]:
        parser, convert = parsers[launcher["entry"]]
        config = convert(parser.parse_args(launcher["argv"]))
        assert config.runtime.output_dir == "OUTPUT_DIR" and config.model.tubelet_size == 1, launcher["launcher"]


def test_batches_are_typed_and_pinnable_tensor_containers():
    train = collate_train([{"video": torch.zeros(3, 2, 4, 4), "label": torch.tensor(1), "index": 5}] * 2, 1)
    assert isinstance(train, TrainBatch) and train.index.tolist() == [5, 5] and train.label.dtype == torch.int64
    view = {"video": torch.zeros(3, 2, 4, 4), "label": torch.tensor(0.5), "video_id": 3, "window": 1, "segment": 0,
            "crop": 2, "valid": False}
    evaluation = collate_eval([view])
    assert isinstance(evaluation, EvalBatch) and evaluation.valid.dtype == torch.bool and not evaluation.valid.any()
    masked = collate_masked([{"video": torch.zeros(2, 3, 2, 4, 4), "mask": torch.ones(2, 8, dtype=torch.bool)}], 2)
    assert isinstance(masked, MaskedBatch) and masked.mask.shape == (2, 8) and masked.video.shape[0] == 2
    assert collate_masked([{"video": torch.zeros(3, 2, 4, 4)}], 1).mask is None
    if torch.cuda.is_available():  # what the DataLoader calls with --pin_mem
        pinned = train.pin_memory()
        assert isinstance(pinned, TrainBatch) and pinned.video.is_pinned() and pinned.index.is_pinned()
