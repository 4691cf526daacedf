"""Flags shared by ``run_class_finetuning.py`` and ``run_mask_pretrain.py`` (official names and defaults)."""
from __future__ import annotations

import argparse


def str2bool(value: str | bool) -> bool:
    """``--flip True`` style booleans, as in the official launchers."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("1", "true", "yes", "y"):
        return True
    if value.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def add_model_size_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model size overrides (tiny configs for tests and demos)")
    group.add_argument("--depth", type=int, default=None, help="number of blocks, overrides the model's default")
    group.add_argument("--embed_dim", type=int, default=None, help="width, overrides the model's default")


def add_optim_args(parser: argparse.ArgumentParser, lr: float, min_lr: float, warmup_epochs: int) -> None:
    group = parser.add_argument_group("optimiser and schedule")
    group.add_argument("--opt", default="adamw", type=str)
    group.add_argument("--opt_eps", default=1e-8, type=float)
    group.add_argument("--opt_betas", default=None, type=float, nargs="+")
    group.add_argument("--clip_grad", type=float, default=None)
    group.add_argument("--momentum", type=float, default=0.9)
    group.add_argument("--weight_decay", type=float, default=0.05)
    group.add_argument("--weight_decay_end", type=float, default=None)
    group.add_argument("--lr", type=float, default=lr, help="base lr for a total batch of 256 (scaled linearly)")
    group.add_argument("--layer_decay", type=float, default=1.0)
    group.add_argument("--warmup_lr", type=float, default=1e-6)
    group.add_argument("--min_lr", type=float, default=min_lr)
    group.add_argument("--warmup_epochs", type=int, default=warmup_epochs)
    group.add_argument("--warmup_steps", type=int, default=-1, help="overrides --warmup_epochs when > 0")
    group.add_argument("--no_lr_scale", action="store_true",
                       help="use --lr as given instead of scaling it by total batch size / 256")


def add_runtime_args(parser: argparse.ArgumentParser, save_ckpt_freq: int) -> None:
    group = parser.add_argument_group("runtime, checkpoints and logging")
    group.add_argument("--batch_size", default=64, type=int)
    group.add_argument("--update_freq", default=1, type=int, help="gradient accumulation steps")
    group.add_argument("--save_ckpt_freq", default=save_ckpt_freq, type=int)
    group.add_argument("--output_dir", default="", help="where checkpoints and log.txt go; empty: nothing saved")
    group.add_argument("--log_dir", default=None, help="TensorBoard folder")
    group.add_argument("--device", default="cuda", help="cuda or cpu")
    group.add_argument("--seed", default=0, type=int)
    group.add_argument("--resume", default="", help="checkpoint to resume from")
    group.add_argument("--auto_resume", action="store_true", default=True)
    group.add_argument("--no_auto_resume", action="store_false", dest="auto_resume")
    group.add_argument("--save_ckpt", action="store_true", default=True)
    group.add_argument("--no_save_ckpt", action="store_false", dest="save_ckpt")
    group.add_argument("--start_epoch", default=0, type=int)
    group.add_argument("--num_workers", default=10, type=int)
    group.add_argument("--pin_mem", action="store_true", default=True)
    group.add_argument("--no_pin_mem", action="store_false", dest="pin_mem")
    group.add_argument("--no_amp", action="store_true", default=False)
    group.add_argument("--bf16", action="store_true", default=False)
    group.add_argument("--print_freq", default=10, type=int, help="log a progress line every N steps")
    group.add_argument("--use_checkpoint", action="store_true", default=False)
    group.add_argument("--checkpoint_num", default=0, type=int)
    group.add_argument("--world_size", default=1, type=int, help="informational; taken from the launcher")
    group.add_argument("--local_rank", default=-1, type=int, help="informational; taken from LOCAL_RANK")
    group.add_argument("--dist_url", default="env://")
    group.add_argument("--enable_deepspeed", action="store_true", default=False)
    group.add_argument("--zero_stage", default=0, type=int, choices=[0, 1, 2])


def add_data_args(parser: argparse.ArgumentParser, num_frames: int, sampling_rate: int) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data_path", default="you_data_path", type=str)
    group.add_argument("--eval_data_path", default=None, type=str, help="accepted for the official launchers; unused")
    group.add_argument("--prefix", default="", type=str)
    group.add_argument("--split", default=" ", type=str)
    group.add_argument("--filename_tmpl", default="img_{:05}.jpg", type=str)
    group.add_argument("--video_backend", default="auto", choices=["auto", "decord", "pyav"])
    group.add_argument("--use_decord", action="store_true", default=True)
    group.add_argument("--no_use_decord", action="store_false", dest="use_decord")
    group.add_argument("--num_segments", type=int, default=1, help="accepted for the official launchers; unused")
    group.add_argument("--num_frames", type=int, default=num_frames)
    group.add_argument("--sampling_rate", type=int, default=sampling_rate)
    group.add_argument("--input_size", default=224, type=int)
    group.add_argument("--tubelet_size", type=int, default=1)
    group.add_argument("--train_interpolation", type=str, default="bicubic")
    group.add_argument("--color_jitter", type=float, default=0.4, help="accepted for the official launchers; unused")
    group.add_argument("--imagenet_default_mean_and_std", default=True, action="store_true",
                       help="accepted for the official launchers; clips are always ImageNet-normalised")
