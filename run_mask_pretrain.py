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

from utils.omp import prefer_passive_wait

if __name__ == "__main__":  # before torch starts its OpenMP runtime; importing this module changes nothing
    prefer_passive_wait()

import argparse
import logging
from dataclasses import asdict
from typing import Any

from datasets.build import build_pretraining_dataset
from datasets.masking import MASK_TYPES, mask_window_size
from engines.cli import (add_data_args, add_ignored, add_model_size_args, add_optim_args, add_runtime_args,
                         check_paths, report_ignored, run_entry, str2bool)
from engines.fit import build_runtime, fit, resume
from engines.session import make_loader, start_run, training_steps_per_epoch
from engines.tasks import DistillationTask
from models.clip_teacher import CLIP_VARIANTS
from models.factory import build_student, build_teacher
from models.ops import BACKENDS
from utils.config import checkpoint_args, pretrain_config

logger = logging.getLogger(__name__)

PATH_FLAGS = {"--data_path": "any", "--prefix": "folder", "--resume": "any"}  # the teacher's file: build_teacher


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
    add_model_size_args(parser, BACKENDS)
    clip = parser.add_argument_group("CLIP teacher and distillation")
    clip.add_argument("--clip_teacher", default="clip_b16", choices=sorted(CLIP_VARIANTS))
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


def main(args: argparse.Namespace) -> dict[str, Any]:
    config = pretrain_config(args)
    run = config.runtime
    info, writer = start_run(run, vars(args), config)
    report_ignored(args)
    check_paths(args, PATH_FLAGS)
    teacher = build_teacher(config.teacher).to(info.device)  # first: a missing teacher file fails before the student
    student = build_student(config.model)
    distill = config.distill
    task = DistillationTask(teacher, distill.mask_type, distill.mask_ratio, distill.clip_loss_type,
                            distill.clip_loss_ratio, distill.clip_input_resolution, distill.clip_input_norm,
                            align_cls=distill.clip_return_cls)
    # The token grid the masks cover, from the student's real patch size (as the official script does).
    window = mask_window_size(config.data.num_frames, config.model.tubelet_size, config.model.input_size,
                              student.patch_embed.patch_size[0])
    dataset = build_pretraining_dataset(config.data, config.augment, mask_type=distill.mask_type,
                                        mask_ratio=distill.mask_ratio, mask_window=window, seed=run.seed)
    loader = make_loader(dataset, run, info, train=True, batch_size=run.batch_size, shard=True,
                         collate_fn=dataset.collate)
    steps_per_epoch = training_steps_per_epoch(loader, run, info, config.data.data_path)
    runtime = build_runtime(config.optim, run, student, info, find_unused_parameters=True)
    saved_args = checkpoint_args(args, config)
    state = resume(run, runtime, None, saved_args)
    state = fit(config.optim, run, runtime, task, loader, steps_per_epoch, info, log_writer=writer, state=state,
                saved_with={"args": saved_args, "config": asdict(config)}, bad_input=dataset.tracker)
    if writer is not None:
        writer.close()
    return {"history": state.history}


if __name__ == "__main__":
    run_entry(main, get_args_parser())
