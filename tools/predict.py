"""Classify one video with a fine-tuned VideoMamba checkpoint and print the top-5 classes.

The video is decoded with ``datasets.readers`` (decord or PyAV), cut into ``--test_num_segment`` temporal
segments × ``--test_num_crop`` spatial crops with the same sampling and test transform as the multi-view test
of ``run_class_finetuning.py``, and the softmax is averaged over those views. The architecture (depth, width,
classes, frames, resolution, tubelet) is read from the checkpoint, so any size trained from ``--model``'s family
loads; command-line values override the frames and resolution (position tables are resampled).

Example:
    python tools/predict.py --model videomamba_small --checkpoint videomamba_s16_k400_f8_res224.pth \\
        --video clip.mp4 --labels k400_labels.txt --num_frames 8
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python tools/x.py` from the repo root

import timm
import torch

import models  # noqa: F401  (registers the VideoMamba models with timm)
from datasets.readers import BACKENDS, VideoDecodeError, open_video
from datasets.sampling import clip_indices
from datasets.transforms import build_test_transform
from models.checkpoint import extract_state_dict, load_finetune_checkpoint, read_checkpoint, strip_prefixes
from utils.logging import setup_logging

logger = logging.getLogger(__name__)

SAMPLINGS = ("sparse", "dense", "ssv2")


class PredictError(RuntimeError):
    """A problem with the user's input, reported as one line without a traceback."""


@dataclass(frozen=True)
class CheckpointShape:
    """Architecture facts read from a VideoMamba classification state dict."""

    embed_dim: int
    depth: int
    num_classes: int
    kernel_size: int
    num_frames: int
    img_size: int


def infer_shape(state_dict: Mapping[str, torch.Tensor], path: str) -> CheckpointShape:
    """Depth, width, classes, tubelet, frames and resolution of a VideoMamba classifier state dict."""
    required = ("cls_token", "pos_embed", "temporal_pos_embedding", "patch_embed.proj.weight", "head.weight")
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise PredictError(f"{path}: not a VideoMamba classification checkpoint (missing {', '.join(missing)})")
    layers = {int(m.group(1)) for key in state_dict if (m := re.match(r"layers\.(\d+)\.", key))}
    if not layers:
        raise PredictError(f"{path}: not a VideoMamba checkpoint (no layers.N.* tensors)")
    patch = state_dict["patch_embed.proj.weight"]
    kernel = int(patch.shape[2]) if patch.ndim == 5 else 1
    grid = math.isqrt(int(state_dict["pos_embed"].shape[1]) - 1)
    return CheckpointShape(embed_dim=int(state_dict["cls_token"].shape[-1]), depth=max(layers) + 1,
                           num_classes=int(state_dict["head.weight"].shape[0]), kernel_size=kernel,
                           num_frames=int(state_dict["temporal_pos_embedding"].shape[1]) * kernel,
                           img_size=grid * int(patch.shape[-1]))


def read_labels(path: str | None, num_classes: int) -> list[str]:
    """Class names, one per line of ``path`` (blank lines ignored), or the indices when no file is given."""
    if path is None:
        return [str(i) for i in range(num_classes)]
    file = Path(path)
    if not file.is_file():
        raise PredictError(f"--labels {path}: no such file")
    names = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != num_classes:
        raise PredictError(f"--labels {path}: {len(names)} class names for a checkpoint with {num_classes} classes")
    return names


def build_model(args: argparse.Namespace) -> tuple[torch.nn.Module, CheckpointShape]:
    """The ``--model`` network shaped after the checkpoint, with its weights loaded, in eval mode."""
    state_dict = strip_prefixes(extract_state_dict(read_checkpoint(args.checkpoint), args.model_key, args.checkpoint))
    shape = infer_shape(state_dict, args.checkpoint)
    del state_dict
    num_frames = args.num_frames or shape.num_frames
    img_size = args.input_size or shape.img_size
    model = timm.create_model(args.model, img_size=img_size, num_frames=num_frames, kernel_size=shape.kernel_size,
                              num_classes=shape.num_classes, depth=shape.depth, embed_dim=shape.embed_dim)
    report = load_finetune_checkpoint(model, args.checkpoint, model_key=args.model_key)
    if report["missing_keys"]:
        raise PredictError(f"{args.checkpoint}: does not fit --model {args.model} "
                           f"(missing {', '.join(report['missing_keys'][:5])})")
    logger.info("%s: depth %d, width %d, %d classes, %d frames at %d px", args.model, shape.depth, shape.embed_dim,
                shape.num_classes, num_frames, img_size)
    return model.eval(), shape


def sample_views(args: argparse.Namespace, num_frames: int, size: int) -> torch.Tensor:
    """All test views of ``args.video`` as (segments · crops, 3, num_frames, size, size), segment-major."""
    transform = build_test_transform(argparse.Namespace(short_side_size=size, test_num_crop=args.test_num_crop))
    reader = open_video(args.video, backend=args.video_backend)
    views = []
    try:
        for segment in range(args.test_num_segment):
            indices = clip_indices(args.sampling, "test", reader.num_frames, num_frames, segment=segment,
                                   num_segments=args.test_num_segment, rate=args.sampling_rate)
            frames = reader.get_frames(indices)
            views.extend(transform(frames, crop) for crop in range(args.test_num_crop))
    finally:
        reader.close()
    return torch.stack(views)


@torch.no_grad()
def predict(model: torch.nn.Module, views: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Class probabilities (num_classes,): the softmax of every view, averaged over the views."""
    model.to(device)
    probs = [model(chunk.to(device)).float().softmax(dim=-1).cpu() for chunk in views.split(batch_size)]
    return torch.cat(probs).mean(dim=0)


def top_k(probs: torch.Tensor, labels: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable classes as [{"rank", "index", "label", "probability"}], best first."""
    values, indices = probs.topk(min(k, probs.numel()))
    return [{"rank": rank + 1, "index": int(i), "label": labels[int(i)], "probability": float(p)}
            for rank, (p, i) in enumerate(zip(values.tolist(), indices.tolist()))]


def get_parser() -> argparse.ArgumentParser:
    """Command-line flags; the data flags keep the names of ``run_class_finetuning.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="registered name, e.g. videomamba_small")
    parser.add_argument("--checkpoint", required=True, help="fine-tuned checkpoint (.pth or .safetensors)")
    parser.add_argument("--video", required=True, help="video file to classify")
    parser.add_argument("--labels", default=None, help="class names, one per line (default: class indices)")
    parser.add_argument("--num_frames", type=int, default=None, help="frames per view (default: the checkpoint's)")
    parser.add_argument("--input_size", type=int, default=None, help="crop size (default: the checkpoint's)")
    parser.add_argument("--short_side_size", type=int, default=None,
                        help="short side before cropping; test crops are short_side² so it must equal --input_size")
    parser.add_argument("--test_num_segment", type=int, default=4, help="temporal views")
    parser.add_argument("--test_num_crop", type=int, default=3, help="spatial views")
    parser.add_argument("--sampling", choices=SAMPLINGS, default="sparse",
                        help="frame sampling: sparse (Kinetics/Breakfast/COIN/LVU), ssv2, or dense")
    parser.add_argument("--sampling_rate", type=int, default=4, help="frame stride of dense sampling")
    parser.add_argument("--video_backend", choices=BACKENDS, default="auto")
    parser.add_argument("--model_key", default="model|module", help="'|'-separated keys holding the state dict")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=4, help="views per forward pass")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load, decode, predict; the JSON-ready result."""
    if not Path(args.checkpoint).is_file():
        raise PredictError(f"--checkpoint {args.checkpoint}: no such file")
    if not Path(args.video).is_file():
        raise PredictError(f"--video {args.video}: no such file")
    if min(args.test_num_segment, args.test_num_crop, args.batch_size, args.topk) < 1:
        raise PredictError("--test_num_segment, --test_num_crop, --batch_size and --topk must be >= 1")
    model, shape = build_model(args)
    if shape.num_classes < 2:
        raise PredictError(f"{args.checkpoint}: a regression checkpoint (one output); predict.py ranks classes")
    labels = read_labels(args.labels, shape.num_classes)
    size = args.input_size or shape.img_size
    if args.short_side_size is not None and args.short_side_size != size:
        raise PredictError(f"--short_side_size {args.short_side_size} must equal the input size {size}: "
                           f"test crops are short_side² squares")
    num_frames = args.num_frames or shape.num_frames
    views = sample_views(args, num_frames, size)
    probs = predict(model, views, args.batch_size, torch.device(args.device))
    return {"video": args.video, "checkpoint": args.checkpoint, "model": args.model, "num_frames": num_frames,
            "input_size": size, "views": {"segments": args.test_num_segment, "crops": args.test_num_crop},
            "predictions": top_k(probs, labels, args.topk)}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: print the top-k table (or JSON); 0 on success, 2 with a one-line error on bad input."""
    args = get_parser().parse_args(argv)
    setup_logging()
    if args.json:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        result = run(args)
    except (PredictError, VideoDecodeError, FileNotFoundError, ValueError) as err:
        print(f"predict.py: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        views = result["views"]
        print(f"{args.video}: {views['segments']}x{views['crops']} views of {result['num_frames']} frames "
              f"at {result['input_size']} px")
        for row in result["predictions"]:
            print(f"{row['rank']:>2}. {row['label']:<40} {row['probability']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
