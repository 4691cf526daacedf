"""Fine-tune and evaluate VideoMamba for video classification or regression (``--task regression``).

Examples (from the repository root):
  python run_class_finetuning.py --model videomamba_tiny --data_path lists/ --nb_classes 400 --output_dir out/ ...
  python run_class_finetuning.py ... --eval --resume out/checkpoint-best.pth     # validation + multi-view test
Launch on GPUs with ``torchrun --nproc_per_node N`` or slurm ``srun``; add ``--enable_deepspeed`` for DeepSpeed.

As in the official script, training always ends with the multi-view test (of ``checkpoint-best`` with
``--test_best``, else of the final weights), logged to ``log.txt`` as ``{"Final top-1": ..., "Final Top-5": ...}``
(regression: ``"Final MSE Loss"``). ``--eval`` tests ``checkpoint-best`` with ``--test_best``, else ``--resume``,
else the newest checkpoint of ``--output_dir`` (not with ``--no_auto_resume``), else the ``--finetune`` weights.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import timm
import torch

import models  # noqa: F401  (registers the VideoMamba models with timm)
from datasets.build import DATA_SETS, build_dataset
from datasets.collate import multiple_samples_collate
from datasets.mixup import build_mixup_fn
from engines import checkpoint as ckpt
from engines.cli import (add_data_args, add_ignored, add_model_size_args, add_optim_args, add_runtime_args,
                         check_paths, report_ignored, run_entry)
from engines.evaluate import evaluate
from engines.fit import append_log, build_ema, build_runtime, fit, resume, scale_lrs
from engines.multiview import multiview_test
from engines.session import make_loader, start_run
from engines.tasks import ClassificationTask, RegressionTask
from models.build import check_model_name
from models.checkpoint import load_finetune_checkpoint, read_label_map
from utils.distributed import DistInfo
from utils.errors import UsageError

logger = logging.getLogger(__name__)

PATH_FLAGS = {"--data_path": "folder", "--prefix": "folder", "--finetune": "file", "--resume": "any",
              "--label_map": "file"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("VideoMamba fine-tuning and evaluation", allow_abbrev=False)
    parser.add_argument("--task", default="classification", choices=["classification", "regression"],
                        help="regression: one real-valued output (--nb_classes 1), MSE loss and metric")
    parser.add_argument("--epochs", default=30, type=int)
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="videomamba_tiny", type=str)
    model.add_argument("--orig_t_size", type=int, default=8)
    model.add_argument("--fc_drop_rate", type=float, default=0.0)
    model.add_argument("--drop", type=float, default=0.0,
                       help="dropout after the position embeddings (the official script parses but ignores it)")
    model.add_argument("--drop_path", type=float, default=0.1)
    model.add_argument("--disable_eval_during_finetuning", action="store_true", default=False)
    model.add_argument("--model_ema", action="store_true", default=False)
    model.add_argument("--model_ema_decay", type=float, default=0.9999)
    model.add_argument("--model_ema_force_cpu", action="store_true", default=False)
    add_ignored(model, "--attn_drop_rate", type=float, default=0.0)
    add_ignored(model, "--use_learnable_pos_emb", switch=True)
    add_ignored(model, "--init_scale", type=float, default=0.001)
    add_ignored(model, "--use_mean_pooling", switch=True, default=True)
    add_ignored(model, "--use_cls", switch=False, dest="use_mean_pooling")
    add_model_size_args(parser)
    add_optim_args(parser, lr=1e-3, min_lr=1e-6, warmup_epochs=5, layer_decay=0.75)
    aug = parser.add_argument_group("augmentation")
    aug.add_argument("--num_sample", type=int, default=2, help="repeated augmentation")
    aug.add_argument("--aa", type=str, default="rand-m7-n4-mstd0.5-inc1")
    aug.add_argument("--smoothing", type=float, default=0.1)
    aug.add_argument("--train_crop_scale", type=float, nargs=2, default=(0.08, 1.0), metavar=("MIN", "MAX"),
                     help="area range of the training random resized crop (timm's --scale)")
    add_ignored(aug, "--color_jitter", type=float, default=0.4)
    add_ignored(aug, "--crop_pct", type=float, default=None)
    aug.add_argument("--short_side_size", type=int, default=224)
    aug.add_argument("--test_num_segment", type=int, default=5)
    aug.add_argument("--test_num_crop", type=int, default=3)
    aug.add_argument("--reprob", type=float, default=0.25)
    aug.add_argument("--remode", type=str, default="pixel")
    aug.add_argument("--recount", type=int, default=1)
    add_ignored(aug, "--resplit", switch=True)
    aug.add_argument("--mixup", type=float, default=0.8)
    aug.add_argument("--cutmix", type=float, default=1.0)
    aug.add_argument("--cutmix_minmax", type=float, nargs="+", default=None)
    aug.add_argument("--mixup_prob", type=float, default=1.0)
    aug.add_argument("--mixup_switch_prob", type=float, default=0.5)
    aug.add_argument("--mixup_mode", type=str, default="batch")
    ft = parser.add_argument_group("initial weights")
    ft.add_argument("--finetune", default="", help="pretrained checkpoint to start from")
    ft.add_argument("--delete_head", action="store_true")
    ft.add_argument("--model_key", default="model|module", type=str)
    ft.add_argument("--model_prefix", default="", type=str)
    ft.add_argument("--label_map", default=None, type=str,
                    help="JSON list of the checkpoint's head rows to keep, in class order (710-class checkpoints "
                         "fine-tuned to 600/700 classes: the official k710/label_mixto600.json / ...700.json)")
    add_data_args(parser, num_frames=16, sampling_rate=4)
    data = parser.add_argument_group("data set")
    data.add_argument("--data_set", default="Kinetics", type=str, help=", ".join(DATA_SETS))
    data.add_argument("--filename_tmpl", default="img_{:05}.jpg", type=str)
    data.add_argument("--use_decord", action="store_true", default=True)
    data.add_argument("--no_use_decord", action="store_false", dest="use_decord",
                      help="SSV2 from extracted frame folders (line format: folder, frame count, label)")
    add_ignored(data, "--eval_data_path", type=str, default=None)
    add_ignored(data, "--num_segments", type=int, default=1)
    data.add_argument("--nb_classes", default=400, type=int)
    data.add_argument("--trimmed", type=int, default=60)
    data.add_argument("--time_stride", type=int, default=16)
    add_runtime_args(parser, save_ckpt_freq=100)
    run = parser.add_argument_group("evaluation")
    run.add_argument("--test_best", action="store_true",
                     help="the final multi-view test (and --eval) uses checkpoint-best instead of the final weights")
    run.add_argument("--eval", action="store_true",
                     help="only evaluate: checkpoint-best with --test_best, else --resume, else the newest checkpoint "
                          "of --output_dir (unless --no_auto_resume), else --finetune")
    run.add_argument("--dist_eval", action="store_true", default=False, help="shard validation over ranks")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Flag combinations (``UsageError``); sets the regression defaults."""
    if args.task == "regression" and args.nb_classes != 1:
        raise UsageError(f"--task regression needs --nb_classes 1, got {args.nb_classes}")
    if args.task == "classification" and args.nb_classes < 2:
        raise UsageError("--nb_classes 1 is regression: pass --task regression (or use run_regression_finetuning.py)")
    if args.task == "regression":
        args.mixup = args.cutmix = 0.0
        args.cutmix_minmax = None
        args.smoothing = 0.0


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    check_model_name(args.model, "videomamba")
    kwargs: dict[str, Any] = dict(img_size=args.input_size, num_frames=args.num_frames, kernel_size=args.tubelet_size,
                                  num_classes=args.nb_classes, drop_rate=args.drop, fc_drop_rate=args.fc_drop_rate,
                                  drop_path_rate=args.drop_path, use_checkpoint=args.use_checkpoint,
                                  checkpoint_num=args.checkpoint_num)
    if args.depth is not None:
        kwargs["depth"] = args.depth
    if args.embed_dim is not None:
        kwargs["embed_dim"] = args.embed_dim
    model = timm.create_model(args.model, **kwargs)
    if args.finetune:
        label_map = read_label_map(args.label_map) if args.label_map else None
        load_finetune_checkpoint(model, args.finetune, model_key=args.model_key, model_prefix=args.model_prefix,
                                 delete_head=args.delete_head, orig_t_size=args.orig_t_size, label_map=label_map)
    logger.info("model %s: %d parameters", args.model, sum(p.numel() for p in model.parameters()))
    return model


def final_record(task_name: str, result: dict[str, Any], weights: str) -> dict[str, Any]:
    """The log.txt line of a multi-view test: the official keys ("Final top-1", "Final Top-5" or
    "Final MSE Loss") followed by ours (``test_*``, the weights tested)."""
    if task_name == "classification":
        record: dict[str, Any] = {"Final top-1": result.get("acc1"), "Final Top-5": result.get("acc5")}
    else:
        record = {"Final MSE Loss": result.get("mse")}
    record.update({f"test_{k}": v for k, v in result.items() if k not in ("incomplete", "missing_ids")})
    record["test_weights"] = weights
    return record


def run_test(args: argparse.Namespace, runtime: Any, task: Any, info: DistInfo, dataset: Any, weights: Path | None,
             description: str) -> dict | None:
    """Multi-view test (``--test_num_segment`` × ``--test_num_crop`` views per window) of ``weights`` (None: the
    weights the runtime holds, named by ``description``) on the test ``dataset``; unreadable videos are named."""
    if weights is not None:
        runtime.load(weights, model_only=True)
        description = str(weights)
    logger.info("multi-view test of %s", description)
    loader = make_loader(dataset, args, info, train=False, batch_size=args.batch_size, shard=True)
    out = Path(args.output_dir) if args.output_dir else None
    result = multiview_test(runtime, task, loader, info.world_size, info.rank,
                            args.test_num_segment * args.test_num_crop, out)
    if result is not None:
        key = "acc1" if task.name == "classification" else "mse"
        summary = (f"top-1 {result['acc1']:.2f}%  top-5 {result['acc5']:.2f}%" if key == "acc1" and key in result
                   else f"MSE {result.get('mse', float('nan')):.4f}")
        print(f"multi-view test: {summary} over {result['num_videos']} videos "
              f"({result['missing']} missing, {len(result['incomplete'])} incomplete windows)")
        if result["missing_ids"]:
            logger.warning("multi-view test: %d videos could not be decoded and are not scored: %s",
                           result["missing"], ", ".join(dataset.entries[i].path for i in result["missing_ids"]))
        append_log(args.output_dir, final_record(task.name, result, description))
    return result


def evaluate_only(args: argparse.Namespace, model: torch.nn.Module, task: Any, info: DistInfo,
                  val_loader: Any, test_set: Any) -> dict[str, Any]:
    """``--eval``: validation (unless --disable_eval_during_finetuning) and the multi-view test of the weights
    chosen by ``checkpoint_to_evaluate`` (else the --finetune weights)."""
    weights = ckpt.checkpoint_to_evaluate(args.output_dir, args.resume, args.test_best, args.enable_deepspeed,
                                          search=args.auto_resume)
    if weights is not None:
        description = str(weights)
    elif args.finetune:
        description = f"--finetune {args.finetune}"
    else:
        description = "randomly initialised weights (no --resume, checkpoint in --output_dir or --finetune)"
    logger.info("--eval: evaluating %s", description)
    runtime = build_runtime(args, model, info)
    if weights is not None:
        runtime.load(weights, model_only=True)
    results: dict[str, Any] = {"weights": description}
    if val_loader is not None:
        results["val"] = evaluate(runtime, task, val_loader, reduce=args.dist_eval)
        logger.info("validation: %s", results["val"])
        if info.is_main:
            append_log(args.output_dir, {f"eval_val_{k}": v for k, v in results["val"].items()})
    results["test"] = run_test(args, runtime, task, info, test_set, None, description)
    return results


def main(args: argparse.Namespace) -> dict[str, Any]:
    check_args(args)
    info, writer = start_run(args)
    report_ignored(args)
    check_paths(args, PATH_FLAGS)
    task: Any
    if args.task == "regression":
        task = RegressionTask()
    else:
        task = ClassificationTask(args.nb_classes, args.smoothing, build_mixup_fn(args))
    logger.info("task: %s", task.name)
    model = build_model(args)
    val_loader = None
    if not args.disable_eval_during_finetuning:
        val_set, _ = build_dataset(is_train=False, test_mode=False, args=args)
        val_loader = make_loader(val_set, args, info, train=False, batch_size=int(1.5 * args.batch_size),
                                 shard=args.dist_eval)
    test_set, _ = build_dataset(is_train=False, test_mode=True, args=args)  # read now: list errors fail fast
    if args.eval:
        return evaluate_only(args, model, task, info, val_loader, test_set)
    train_set, _ = build_dataset(is_train=True, test_mode=False, args=args, seed=args.seed)
    collate = multiple_samples_collate if args.num_sample > 1 else None
    train_loader = make_loader(train_set, args, info, train=True, batch_size=args.batch_size, shard=True,
                               collate_fn=collate)
    steps_per_epoch = len(train_loader) // args.update_freq
    if steps_per_epoch == 0:
        raise UsageError(f"{args.data_path}: {len(train_set)} training videos are fewer than one step of "
                         f"batch_size {args.batch_size} × update_freq {args.update_freq} × {info.world_size} ranks")
    scale_lrs(args, info.world_size)
    runtime = build_runtime(args, model, info)
    ema = build_ema(args, runtime.module)
    state = resume(args, runtime, ema)
    validate = (lambda: evaluate(runtime, task, val_loader, reduce=args.dist_eval)) if val_loader is not None else None
    state = fit(args, runtime, task, train_loader, steps_per_epoch, info, ema, validate, writer, state)
    results: dict[str, Any] = {"best": state.best, "history": state.history}
    best = None
    if args.test_best:
        best = ckpt.best_checkpoint(Path(args.output_dir), args.enable_deepspeed) if args.output_dir else None
        if best is None:
            logger.warning("--test_best: no checkpoint-best to test; testing the final weights")
    results["test"] = run_test(args, runtime, task, info, test_set, best, "the final weights")
    if writer is not None:
        writer.close()
    return results


if __name__ == "__main__":
    run_entry(main, get_args_parser())
