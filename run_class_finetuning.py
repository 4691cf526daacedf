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

from utils.omp import prefer_passive_wait

if __name__ == "__main__":  # before torch starts its OpenMP runtime; importing this module changes nothing
    prefer_passive_wait()

import argparse
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from datasets.build import DATA_SETS, build_video_dataset
from datasets.mixup import build_mixup_fn
from datasets.video_dataset import VideoClsDataset
from engines import checkpoint as ckpt
from engines.cli import (add_data_args, add_ignored, add_model_size_args, add_optim_args, add_runtime_args,
                         check_paths, report_ignored, run_entry)
from engines.contracts import EvalTask, Runtime
from engines.evaluate import evaluate
from engines.fit import append_log, build_ema, build_runtime, fit, resume
from engines.multiview import multiview_test, official_video_name
from engines.session import make_loader, start_run, training_steps_per_epoch
from engines.tasks import ClassificationTask, RegressionTask
from models.factory import build_classifier
from models.hub import check_weights_arg
from models.ops import BACKENDS
from utils.config import FinetuneConfig, checkpoint_args, finetune_config
from utils.distributed import DistInfo
from utils.errors import UsageError

logger = logging.getLogger(__name__)

PATH_FLAGS = {"--data_path": "folder", "--prefix": "folder", "--resume": "any", "--label_map": "file"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("VideoMamba fine-tuning and evaluation", allow_abbrev=False)
    parser.add_argument("--task", default=None, choices=["classification", "regression"],
                        help="regression: one real-valued output, MSE loss and metric (default: regression exactly "
                             "when --nb_classes is 1)")
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
    add_model_size_args(parser, BACKENDS)
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
    ft.add_argument("--finetune", default="",
                    help="weights to start from: a checkpoint file, a URL, a pretrained tag such as "
                         "videomamba_small.in1k_res224 (MODEL_ZOO.md) or hf-hub:<org>/<repo>/<file>")
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


def run_test(config: FinetuneConfig, runtime: Runtime, task: EvalTask, info: DistInfo, dataset: VideoClsDataset,
             weights: Path | None, description: str) -> dict | None:
    """Multi-view test (``--test_num_segment`` × ``--test_num_crop`` views per window) of ``weights`` (None: the
    weights the runtime holds, named by ``description``) on the test ``dataset``; unreadable videos are named. With
    ``--output_dir``, each rank also writes the official ``{rank}.txt`` there."""
    if weights is not None:
        runtime.load(weights, model_only=True)
        description = str(weights)
    logger.info("multi-view test of %s", description)
    run = config.runtime
    loader = make_loader(dataset, run, info, train=False, batch_size=run.batch_size, shard=True,
                         collate_fn=dataset.collate)
    out = Path(run.output_dir) if run.output_dir else None
    names = [official_video_name(entry.path) for entry in dataset.entries]  # the ids of the official {rank}.txt
    result = multiview_test(runtime, task, loader, info.world_size, info.rank,
                            config.data.test_num_segment * config.augment.test_num_crop, out, names)
    if result is not None:
        key = "acc1" if task.name == "classification" else "mse"
        summary = (f"top-1 {result['acc1']:.2f}%  top-5 {result['acc5']:.2f}%" if key == "acc1" and key in result
                   else f"MSE {result.get('mse', float('nan')):.4f}")
        logger.info("multi-view test: %s over %d videos (%d missing, %d incomplete windows)", summary,
                    result["num_videos"], result["missing"], len(result["incomplete"]))
        if result["missing_ids"]:
            logger.warning("multi-view test: %d videos could not be decoded and are not scored: %s",
                           result["missing"], ", ".join(dataset.entries[i].path for i in result["missing_ids"]))
        append_log(run.output_dir, final_record(task.name, result, description))
    return result


def evaluate_only(config: FinetuneConfig, model: torch.nn.Module, task: EvalTask, info: DistInfo,
                  val_loader: Any, test_set: VideoClsDataset) -> dict[str, Any]:
    """``--eval``: validation (unless --disable_eval_during_finetuning) and the multi-view test of the weights
    chosen by ``checkpoint_to_evaluate`` (else the --finetune weights)."""
    run = config.runtime
    runtime = build_runtime(config.optim, run, model, info)
    weights = ckpt.checkpoint_to_evaluate(run.output_dir, runtime.checkpoint_path, run.resume,
                                          config.evaluation.test_best, search=run.auto_resume)
    if weights is not None:
        description = str(weights)
    elif config.model.finetune:
        description = f"--finetune {config.model.finetune}"
    else:
        description = "randomly initialised weights (no --resume, checkpoint in --output_dir or --finetune)"
    logger.info("--eval: evaluating %s", description)
    if weights is not None:
        runtime.load(weights, model_only=True)
    results: dict[str, Any] = {"weights": description}
    if val_loader is not None:
        results["val"] = evaluate(runtime, task, val_loader, reduce=config.evaluation.dist_eval)
        logger.info("validation: %s", results["val"])
        if info.is_main:
            append_log(run.output_dir, {f"eval_val_{k}": v for k, v in results["val"].items()})
    results["test"] = run_test(config, runtime, task, info, test_set, None, description)
    return results


def build_task(config: FinetuneConfig) -> EvalTask:
    """Regression (MSE) or classification (mixup/cutmix and label smoothing from ``--mixup`` ... ``--smoothing``)."""
    if config.task == "regression":
        return RegressionTask()
    mixup = build_mixup_fn(config.augment, config.model.nb_classes)
    return ClassificationTask(config.model.nb_classes, config.augment.smoothing, mixup)


def main(args: argparse.Namespace) -> dict[str, Any]:
    config = finetune_config(args)
    run = config.runtime
    info, writer = start_run(run, vars(args), config)
    report_ignored(args)
    check_paths(args, PATH_FLAGS)
    if args.finetune:
        check_weights_arg(args.finetune, "--finetune")
    if info.world_size > 1 and not run.output_dir:
        raise UsageError("--output_dir is needed with more than one process: the ranks exchange their multi-view "
                         "test predictions through it")
    task = build_task(config)
    logger.info("task: %s", task.name)
    model = build_classifier(config.model)
    val_loader = None
    if config.evaluation.validate:
        val_set = build_video_dataset("validation", config.data, config.augment, run.seed)
        val_loader = make_loader(val_set, run, info, train=False, batch_size=int(1.5 * run.batch_size),
                                 shard=config.evaluation.dist_eval, collate_fn=val_set.collate)
    test_set = build_video_dataset("test", config.data, config.augment, run.seed)  # read now: list errors fail fast
    if config.evaluation.eval:
        return evaluate_only(config, model, task, info, val_loader, test_set)
    train_set = build_video_dataset("train", config.data, config.augment, run.seed)
    train_loader = make_loader(train_set, run, info, train=True, batch_size=run.batch_size, shard=True,
                               collate_fn=train_set.collate)
    steps_per_epoch = training_steps_per_epoch(train_loader, run, info, config.data.data_path)
    runtime = build_runtime(config.optim, run, model, info)
    ema = build_ema(config.ema, runtime.module)
    saved_args = checkpoint_args(args, config)
    state = resume(run, runtime, ema, saved_args)
    validate = ((lambda: evaluate(runtime, task, val_loader, reduce=config.evaluation.dist_eval))
                if val_loader is not None else None)
    state = fit(config.optim, run, runtime, task, train_loader, steps_per_epoch, info, ema=ema, validate=validate,
                log_writer=writer, state=state, saved_with={"args": saved_args, "config": asdict(config)},
                bad_input=train_set.tracker)
    results: dict[str, Any] = {"best": state.best, "history": state.history}
    best = None
    if config.evaluation.test_best:
        best = ckpt.best_checkpoint(runtime.checkpoint_path) if run.output_dir else None
        if best is None:
            logger.warning("--test_best: no checkpoint-best to test; testing the final weights")
    results["test"] = run_test(config, runtime, task, info, test_set, best, "the final weights")
    if writer is not None:
        writer.close()
    return results


if __name__ == "__main__":
    run_entry(main, get_args_parser())
