"""Masked pretraining of a VideoMamba student by distilling a frozen CLIP teacher (UMT-style).

Example (from the repository root):
  python run_mask_pretrain.py --model videomamba_middle_pretrain --clip_teacher clip_b16 \\
      --clip_teacher_path /weights/vit_b16.pth --mask_type attention --mask_ratio 0.8 --data_path train.csv ...
Teacher weights come from ``--clip_teacher_path`` or ``$VIDEOMAMBA_CLIP_DIR``; ``--clip_teacher_random`` builds a
randomly initialised teacher (demos and tests only: it teaches nothing useful).
As in the official ``run_videomamba_pretraining.py`` (an alias of this script), the lr warm-up starts from 0
(``--warmup_lr`` is not used) and there is no layer decay; ``log.txt`` records ``loss_clip`` per epoch.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

import timm
import torch

import models
from datasets.build import build_pretraining_dataset
from datasets.collate import multiple_samples_collate
from datasets.masking import MASK_TYPES
from engines.cli import (add_data_args, add_ignored, add_model_size_args, add_optim_args, add_runtime_args,
                         check_paths, report_ignored, run_entry, str2bool)
from engines.fit import build_runtime, fit, resume, scale_lrs
from engines.session import make_loader, start_run
from engines.tasks import DistillationTask
from models.build import check_model_name
from utils.errors import UsageError

logger = logging.getLogger(__name__)

PATH_FLAGS = {"--data_path": "any", "--prefix": "folder", "--resume": "any"}  # the teacher's file: build_teacher
TEACHERS = {"clip_b16": models.clip_b16, "clip_l14": models.clip_l14, "clip_l14_336": models.clip_l14_336}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("VideoMamba masked pretraining with a CLIP teacher", allow_abbrev=False)
    parser.add_argument("--epochs", default=800, type=int)
    model = parser.add_argument_group("student")
    model.add_argument("--model", default="videomamba_middle_pretrain", type=str)
    model.add_argument("--drop_path", type=float, default=0.0)
    model.add_argument("--mask_type", default="tube", choices=MASK_TYPES)
    model.add_argument("--mask_ratio", default=0.75, type=float)
    add_ignored(model, "--decoder_depth", type=int, default=4)
    add_ignored(model, "--normlize_target", type=bool, default=True)
    add_ignored(model, "--use_learnable_pos_emb", switch=True)
    add_model_size_args(parser)
    clip = parser.add_argument_group("CLIP teacher and distillation")
    clip.add_argument("--clip_teacher", default="clip_b16", choices=sorted(TEACHERS))
    clip.add_argument("--clip_teacher_path", default=None,
                      help="converted teacher weights (default: $VIDEOMAMBA_CLIP_DIR/<canonical name>)")
    clip.add_argument("--clip_teacher_random", action="store_true",
                      help="randomly initialised teacher, for demos and tests")
    clip.add_argument("--clip_teacher_width", type=int, default=None, help="teacher width override (demos/tests)")
    clip.add_argument("--clip_teacher_layers", type=int, default=None, help="teacher depth override (demos/tests)")
    clip.add_argument("--clip_teacher_heads", type=int, default=None, help="teacher heads override (demos/tests)")
    clip.add_argument("--clip_input_resolution", default=224, type=int)
    clip.add_argument("--clip_input_norm", default="imagenet", choices=["imagenet", "clip"],
                      help="imagenet: the student's clip as is (official); clip: re-normalise with CLIP mean/std")
    clip.add_argument("--clip_loss_ratio", default=1.0, type=float)
    clip.add_argument("--clip_loss_type", default="l2", choices=["l2", "mse", "smooth_l1"])
    clip.add_argument("--clip_decoder_embed_dim", default=None, type=int,
                      help="must equal the student's width; default: that width")
    clip.add_argument("--clip_output_dim", default=768, type=int, help="the teacher's output width (B/16: 512)")
    add_ignored(clip, "--clip_decoder_type", type=str, default="SA_Decoder")
    clip.add_argument("--clip_norm_type", default="l2", choices=["l2", "none"])
    clip.add_argument("--clip_return_attn", action="store_true", default=False)
    clip.add_argument("--clip_return_layer", default=1, type=int)
    clip.add_argument("--clip_return_interval", default=1, type=float)
    clip.add_argument("--clip_student_return_interval", default=1, type=float,
                      help="student layer k of --clip_return_layer is depth - 1 - int(k * interval)")
    clip.add_argument("--clip_return_cls", action="store_true", default=False)
    add_optim_args(parser, lr=1.5e-4, min_lr=1e-5, warmup_epochs=40, layer_decay=1.0)
    add_data_args(parser, num_frames=16, sampling_rate=4)
    data = parser.add_argument_group("pretraining clips")
    data.add_argument("--num_segments", type=int, default=1,
                      help="> 1: one random frame from each of this many equal segments (must equal --num_frames); "
                           "1: --num_frames frames --sampling_rate apart from a random start")
    add_ignored(data, "--use_decord", default=True)
    aug = parser.add_argument_group("augmentation")
    aug.add_argument("--num_sample", type=int, default=1, help="repeated augmentation: clips per decoded video")
    aug.add_argument("--flip", type=str2bool, default=False)
    aug.add_argument("--color_jitter", type=float, default=0.0,
                     help="> 0: brightness/contrast/saturation jitter of this strength, drawn per frame")
    add_runtime_args(parser, save_ckpt_freq=50)
    add_ignored(parser, "--test_best", switch=True)
    return parser


def build_student(args: argparse.Namespace) -> torch.nn.Module:
    check_model_name(args.model, "videomamba_pretrain")
    kwargs: dict[str, Any] = dict(
        img_size=args.input_size, num_frames=args.num_frames, kernel_size=args.tubelet_size,
        drop_path_rate=args.drop_path, use_checkpoint=args.use_checkpoint, checkpoint_num=args.checkpoint_num,
        clip_decoder_embed_dim=args.clip_decoder_embed_dim, clip_output_dim=args.clip_output_dim,
        clip_norm_type=args.clip_norm_type, clip_return_layer=args.clip_return_layer,
        clip_student_return_interval=args.clip_student_return_interval)
    if args.depth is not None:
        kwargs["depth"] = args.depth
    if args.embed_dim is not None:
        kwargs["embed_dim"] = args.embed_dim
    return timm.create_model(args.model, **kwargs)


def build_teacher(args: argparse.Namespace) -> torch.nn.Module:
    """The frozen teacher; size overrides also set its output width to ``--clip_output_dim``."""
    kwargs: dict[str, Any] = dict(
        clip_norm_type=args.clip_norm_type, input_resolution=args.clip_input_resolution,
        kernel_size=args.tubelet_size, return_attn=args.clip_return_attn or args.mask_type == "attention",
        clip_return_layer=args.clip_return_layer, clip_return_interval=args.clip_return_interval,
        clip_return_cls=args.clip_return_cls)
    sizes = {"width": args.clip_teacher_width, "layers": args.clip_teacher_layers, "heads": args.clip_teacher_heads}
    overrides = {k: v for k, v in sizes.items() if v is not None}
    if overrides:
        kwargs.update(overrides, output_dim=args.clip_output_dim)
    if args.clip_teacher_random:
        logger.warning("--clip_teacher_random: the teacher is randomly initialised (demo/test only)")
        weights: Any = None
    else:
        weights = args.clip_teacher_path or True
    return TEACHERS[args.clip_teacher](pretrained=weights, **kwargs)


def main(args: argparse.Namespace) -> dict[str, Any]:
    info, writer = start_run(args)
    report_ignored(args)
    check_paths(args, PATH_FLAGS)
    teacher = build_teacher(args).to(info.device)  # first: a missing teacher file fails before the student is built
    student = build_student(args)
    task = DistillationTask(teacher, args.mask_type, args.mask_ratio, args.clip_loss_type, args.clip_loss_ratio,
                            args.clip_input_resolution, args.clip_input_norm)
    dataset = build_pretraining_dataset(args, seed=args.seed)
    collate = multiple_samples_collate if args.num_sample > 1 else None
    loader = make_loader(dataset, args, info, train=True, batch_size=args.batch_size, shard=True, collate_fn=collate)
    steps_per_epoch = len(loader) // args.update_freq
    if steps_per_epoch == 0:
        raise UsageError(f"{args.data_path}: {len(dataset)} videos are fewer than one step of batch_size "
                         f"{args.batch_size} × update_freq {args.update_freq} × {info.world_size} ranks")
    scale_lrs(args, info.world_size)
    runtime = build_runtime(args, student, info, find_unused_parameters=True)
    state = resume(args, runtime, None)
    state = fit(args, runtime, task, loader, steps_per_epoch, info, None, None, writer, state, warmup_start=0.0)
    if writer is not None:
        writer.close()
    return {"history": state.history}


if __name__ == "__main__":
    run_entry(main, get_args_parser())
