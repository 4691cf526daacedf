"""Flags shared by ``run_class_finetuning.py`` and ``run_mask_pretrain.py`` (official names, types and defaults),
and ``run_entry``, the error handling around both scripts' ``main``.

Official flags that mean nothing for VideoMamba are accepted through ``add_ignored`` so that an official command
line never hits an argparse error; ``report_ignored`` logs the ones a user set, once.
"""
from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Any, Callable

from engines.optim import LAYER_DECAY_MODES
from utils.errors import UserError, require_path
from utils.logging import log_to_files
from utils.safe_load import TRUST_FLAG, TRUST_HELP

logger = logging.getLogger(__name__)

IGNORED = "ignored: not used by VideoMamba"


def str2bool(value: str | bool) -> bool:
    """``--flip True`` style booleans, as in the official launchers."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("1", "true", "yes", "y"):
        return True
    if value.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


class _Ignored(argparse.Action):
    """Stores like a plain option (``nargs=0``: stores ``const``) and records the flag in ``ignored_flags``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        namespace.ignored_flags = (*getattr(namespace, "ignored_flags", ()), option_string)


def add_ignored(group: Any, flag: str, *, switch: bool | None = None, **kwargs: Any) -> None:
    """An official flag with no effect here. ``switch=True/False``: a store_true/store_false style switch."""
    if switch is not None:
        kwargs.update(nargs=0, const=switch)
        kwargs.setdefault("default", not switch)
    group.add_argument(flag, action=_Ignored, help=f"official flag, {IGNORED}", **kwargs)


def set_ignored_default(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(ignored_flags=())


def report_ignored(args: argparse.Namespace) -> list[str]:
    """Log the official flags the command line set that have no effect here; returns them (sorted, unique)."""
    flags = sorted(set(args.ignored_flags))
    if flags:
        logger.warning("%s: %s", ", ".join(flags), IGNORED)
    return flags


def add_model_size_args(parser: argparse.ArgumentParser, scan_backends: tuple[str, ...]) -> None:
    """``--depth`` / ``--embed_dim`` overrides, ``--scan_backend`` (one of ``scan_backends``:
    ``models.ops.BACKENDS``) and ``--mamba_dt_init``."""
    group = parser.add_argument_group("model size overrides (tiny configs for tests and demos), kernels, init")
    group.add_argument("--depth", type=int, default=None, help="number of blocks, overrides the model's default")
    group.add_argument("--embed_dim", type=int, default=None, help="width, overrides the model's default")
    group.add_argument("--scan_backend", default=None, choices=scan_backends,
                       help="selective-scan and causal-conv implementation (default: $VIDEOMAMBA_SCAN_BACKEND, "
                            "else auto: the CUDA kernels on GPU, the fused C++ kernel on CPU)")
    group.add_argument("--mamba_dt_init", action="store_true", default=False,
                       help="from scratch, keep Mamba's init of the SSM dt projections (dt_proj bias = "
                            "softplus^-1 of a dt in [1e-3, 0.1]); default: the official init, whose blanket Linear "
                            "init gives them std 0.02 weights and zero biases")


def add_optim_args(parser: argparse.ArgumentParser, lr: float, min_lr: float, warmup_epochs: int,
                   layer_decay: float) -> None:
    group = parser.add_argument_group("optimiser and schedule")
    group.add_argument("--opt", default="adamw", type=str)
    group.add_argument("--opt_eps", default=1e-8, type=float)
    group.add_argument("--opt_betas", default=None, type=float, nargs="+")
    group.add_argument("--clip_grad", type=float, default=None)
    group.add_argument("--momentum", type=float, default=0.9)
    group.add_argument("--weight_decay", type=float, default=0.05)
    group.add_argument("--weight_decay_end", type=float, default=None)
    group.add_argument("--lr", type=float, default=lr, help="base lr for a total batch of 256 (scaled linearly)")
    group.add_argument("--layer_decay", type=float, default=layer_decay,
                       help="layer-wise lr decay, active below 1 (see --layer_decay_mode)")
    group.add_argument("--layer_decay_mode", default="official", choices=LAYER_DECAY_MODES,
                       help="official: only cls_token/pos_embed/patch_embed get layer_decay**(depth+1), as the "
                            "official code does for VideoMamba; blocks: true per-block decay")
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
    group.add_argument("--save_ckpt_freq", default=save_ckpt_freq, type=int,
                       help="also keep checkpoint-{epoch} every N epochs (checkpoint-latest is written every epoch)")
    group.add_argument("--save_ckpt_steps", default=0, type=int,
                       help="also write checkpoint-latest every N optimiser steps, inside epochs; a resumed run "
                            "continues at the next sample (0: off)")
    group.add_argument("--save_ckpt_minutes", default=0.0, type=float,
                       help="also write checkpoint-latest inside an epoch when M minutes have passed since the last "
                            "checkpoint (0: off)")
    group.add_argument("--output_dir", default="", help="where checkpoints and log.txt go; empty: nothing saved")
    group.add_argument("--log_dir", default=None, help="TensorBoard folder")
    group.add_argument("--device", default="cuda", help="cuda or cpu")
    group.add_argument("--seed", default=0, type=int)
    group.add_argument("--resume", default="", help="checkpoint to resume from")
    group.add_argument(TRUST_FLAG, action="store_true", help=f"{TRUST_HELP} (every checkpoint this run reads)")
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
    group.add_argument("--debug", action="store_true",
                       help="print the full traceback of user errors (once the run's log file "
                       "output_dir/train.log is open, it always goes there)")
    group.add_argument("--use_checkpoint", action="store_true", default=False)
    group.add_argument("--checkpoint_num", default=0, type=int)
    group.add_argument("--world_size", default=1, type=int, help="informational; taken from the launcher")
    group.add_argument("--local_rank", default=-1, type=int, help="informational; taken from LOCAL_RANK")
    group.add_argument("--dist_on_itp", action="store_true", default=False,
                       help="take rank and world size from OpenMPI (OMPI_COMM_WORLD_*) with MASTER_ADDR/PORT")
    group.add_argument("--dist_url", default="env://")
    group.add_argument("--enable_deepspeed", action="store_true", default=False)
    group.add_argument("--zero_stage", default=0, type=int, choices=[0, 1, 2])
    # deepspeed.add_config_arguments: the DeepSpeed config is built from the flags above instead.
    add_ignored(group, "--deepspeed", switch=True)
    add_ignored(group, "--deepspeed_config", type=str, default=None)
    add_ignored(group, "--deepscale", switch=True)
    add_ignored(group, "--deepscale_config", type=str, default=None)
    set_ignored_default(parser)


def add_data_args(parser: argparse.ArgumentParser, num_frames: int, sampling_rate: int) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data_path", default="you_data_path", type=str)
    group.add_argument("--prefix", default="", type=str)
    group.add_argument("--split", default=" ", type=str)
    group.add_argument("--video_backend", default="auto", choices=["auto", "decord", "pyav"])
    group.add_argument("--num_frames", type=int, default=num_frames)
    group.add_argument("--sampling_rate", type=int, default=sampling_rate)
    group.add_argument("--input_size", default=224, type=int)
    group.add_argument("--tubelet_size", type=int, default=2,
                       help="temporal patch size (official default 2; every VideoMamba recipe passes 1)")
    group.add_argument("--train_interpolation", type=str, default="bicubic")
    group.add_argument("--max_bad_fraction", type=float, default=0.1,
                       help="training stops (BadInputError) once more than this fraction of the list's videos "
                            "are unreadable; the others are replaced by random readable ones")
    group.add_argument("--max_retries", type=int, default=10,
                       help="training stops after this many failed replacements of an unreadable video in a row")
    add_ignored(group, "--imagenet_default_mean_and_std", switch=True, default=True)


def check_paths(args: argparse.Namespace, flags: dict[str, str]) -> None:
    """Fail fast, with one line, on a path flag that is set but names nothing (or a placeholder).

    ``flags``: ``{"--flag": "file" | "folder" | "any"}``; URLs are left to the code that downloads them.
    """
    for flag, kind in flags.items():
        value = vars(args)[flag.lstrip("-")]
        if value and "://" not in str(value):
            require_path(value, flag, kind)


def user_message(err: BaseException) -> str:
    """The message of ``err``; for an error raised in a DataLoader worker (which torch re-raises as
    "Caught X in DataLoader worker process N. Original Traceback ..."), the original message alone."""
    text = str(err)
    marker = f"{type(err).__module__}.{type(err).__qualname__}: "
    if "Original Traceback" in text and marker in text:
        return text.rsplit(marker, 1)[1].rstrip()
    return text


def run_entry(main: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser,
              argv: list[str] | None = None) -> None:
    """Parse ``argv`` and run ``main``; a ``UserError`` exits with its status (2 usage, 1 other) after printing
    ``error: <message>`` on stderr, its traceback going to ``train.log`` when the run's log file is open (rank 0 with
    ``--output_dir``, after the configuration was built) and to stderr with ``--debug``. Other exceptions are bugs:
    their traceback goes to ``train.log`` the same way and they propagate unchanged."""
    args = parser.parse_args(argv)
    try:
        main(args)
    except UserError as err:
        log_to_files(logging.ERROR, f"error: {user_message(err)}", sys.exc_info())
        if args.debug:
            traceback.print_exc()
        print(f"error: {user_message(err)}", file=sys.stderr)
        sys.exit(err.exit_status)
    except Exception:
        log_to_files(logging.ERROR, "unexpected error", sys.exc_info())
        raise
