"""Extract VideoMamba features from videos: one ``.npy`` per video (rows = views or windows), or one HDF5 file.

Views (``tools/video_views.py``): the multi-view test of the whole video (``--num_segments`` J × ``--num_crops`` K,
default 1 × 1), or, with ``--window_seconds`` / ``--stride_seconds``, J × K views of each sliding window; every row
carries its window's start and end in seconds. Features: the pooled vector the classifier head sees
(``forward_head(forward_features(x), pre_logits=True)``, (V, C)), or with ``--tokens`` the final-normed token
sequence (``forward_features``, (V, 1 + T'·H'·W', C)), or that of block ``--layer`` N (``forward_intermediates``: the
residual stream after block N, final-normed with ``--norm``). The output files are described in
``tools/feature_files.py``.

Videos are decoded by ``--num_workers`` processes and batched ``--batch_size`` views at a time. The run is
resumable (videos whose output is complete are skipped; files are written atomically) and shards over ``torchrun``
ranks (rank r of W takes videos r, r + W, ...); rank 0 then writes ``index.csv`` (one row per video: output, rows,
status, error). Unreadable videos are skipped, listed in ``index.csv`` and on stderr, and make the exit status 1.

Example (``--checkpoint``: a file with ``--model``, or a pretrained tag):
    torchrun --nproc_per_node 4 tools/extract_features.py --checkpoint videomamba_small.k400_f16_res224 \\
        --folder videos/ --out features/ --window_seconds 4 --stride_seconds 2
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python tools/x.py` from the repo root

from utils.omp import prefer_passive_wait

if __name__ == "__main__":  # before torch starts its OpenMP runtime; importing this module changes nothing
    prefer_passive_wait()

import torch
import torch.distributed as dist
from tqdm import tqdm

from datasets.readers import BACKENDS
from tools import feature_files as ff
from tools.checkpoint_model import CheckpointError, add_checkpoint_args, check_checkpoint_args, load_model, weights_id
from tools.video_views import (VIDEO_SAMPLINGS, InputError, ViewPlan, add_video_source_args, map_videos,
                               output_stems, videos_from_args)
from utils.distributed import DistInfo, init_distributed
from utils.errors import UserError
from utils.logging import setup_logging

logger = logging.getLogger(__name__)


def get_parser() -> argparse.ArgumentParser:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_args(parser)
    add_video_source_args(parser)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--h5", action="store_true", help="write one HDF5 file <out>/features.h5 (needs h5py)")
    views = parser.add_argument_group("views")
    views.add_argument("--num_frames", type=int, default=None, help="frames per view (default: the checkpoint's)")
    views.add_argument("--input_size", type=int, default=None, help="crop size (default: the checkpoint's)")
    views.add_argument("--num_segments", type=int, default=1, help="temporal test views (per window)")
    views.add_argument("--num_crops", type=int, default=1, help="spatial test views (per window)")
    views.add_argument("--sampling", choices=VIDEO_SAMPLINGS, default="sparse")
    views.add_argument("--sampling_rate", type=int, default=4, help="frame stride of dense sampling")
    views.add_argument("--window_seconds", type=float, default=None, help="sliding window length in seconds")
    views.add_argument("--stride_seconds", type=float, default=None, help="seconds between window starts")
    feats = parser.add_argument_group("features")
    feats.add_argument("--tokens", action="store_true", help="token features instead of the pooled vector")
    feats.add_argument("--layer", type=int, default=None,
                       help="with --tokens: the output of block N (0-based, negative from the end)")
    feats.add_argument("--norm", action="store_true", help="with --layer: apply the final norm")
    run = parser.add_argument_group("run")
    run.add_argument("--batch_size", type=int, default=8, help="views per forward pass")
    run.add_argument("--num_workers", type=int, default=2, help="video decoding processes (0: this one)")
    run.add_argument("--video_backend", choices=BACKENDS, default="auto")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    check_checkpoint_args(args)
    if args.batch_size < 1 or args.num_workers < 0:
        raise InputError("--batch_size must be >= 1 and --num_workers >= 0")
    if args.layer is not None and not args.tokens:
        raise InputError("--layer selects token features: add --tokens")
    if args.norm and args.layer is None:
        raise InputError("--norm applies the final norm to --layer tokens (the final tokens are normed already)")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise InputError(f"--out {args.out}: exists and is not a folder")


def feature_fn(model: torch.nn.Module, device: torch.device, tokens: bool, layer: int | None,
               norm: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Views (n, 3, T, S, S) -> float32 CPU features: pooled (n, C) or tokens (n, 1 + L, C), cls first."""

    @torch.no_grad()
    def features(views: torch.Tensor) -> torch.Tensor:
        x = views.to(device)
        if not tokens:
            out = model.forward_head(model.forward_features(x), pre_logits=True)
        elif layer is None:
            out = model.forward_features(x)
        else:
            [(patches, prefix)] = model.forward_intermediates(x, indices=[layer], norm=norm, output_fmt="NLC",
                                                              intermediates_only=True, return_prefix_tokens=True,
                                                              stop_early=True)
            out = torch.cat([prefix, patches], dim=1)
        return out.float().cpu()

    return features


def settings_of(args: argparse.Namespace, plan: ViewPlan, model: torch.nn.Module) -> dict[str, Any]:
    """Everything that changes the numbers, recorded with the features (and compared on resume)."""
    return {"model": args.model, "checkpoint": weights_id(args.checkpoint), "num_frames": plan.num_frames,
            "input_size": plan.input_size, "num_segments": plan.num_segments, "num_crops": plan.num_crops,
            "sampling": plan.sampling, "sampling_rate": plan.sampling_rate, "window_seconds": plan.window_seconds,
            "stride_seconds": plan.stride_seconds, "feature": "tokens" if args.tokens else "pooled",
            "layer": args.layer, "norm": args.norm, "embed_dim": model.embed_dim, "token_grid": list(model.token_grid)}


def completed(out: Path, stems: Sequence[str], settings: dict[str, Any], h5: bool) -> dict[str, int]:
    """Rows of every video (stem) whose output is already complete."""
    folder = out / ff.H5_PARTS if h5 else out
    done = ff.h5_rows(out / ff.H5_NAME, settings) if h5 else {}
    for stem in stems:
        rows = ff.pair_rows(folder, stem, settings)
        if rows is not None:
            done[stem] = rows
    return {stem: done[stem] for stem in stems if stem in done}


def extract(args: argparse.Namespace, info: DistInfo) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """This rank's share of the work; returns its index rows (with their input ``index``) and the settings."""
    _check_args(args)
    videos = videos_from_args(args)
    stems = output_stems(videos)
    model, shape = load_model(args.model, args.checkpoint, args.num_frames, args.input_size, args.model_key,
                              args.trust_checkpoint)
    args.model = model.pretrained_cfg["architecture"]  # a pretrained tag names its model
    if args.layer is not None and not -shape.depth <= args.layer < shape.depth:
        raise InputError(f"--layer {args.layer}: the model has {shape.depth} blocks")
    plan = ViewPlan(num_frames=args.num_frames or shape.num_frames, input_size=args.input_size or shape.img_size,
                    num_segments=args.num_segments, num_crops=args.num_crops, sampling=args.sampling,
                    sampling_rate=args.sampling_rate, window_seconds=args.window_seconds,
                    stride_seconds=args.stride_seconds, backend=args.video_backend)
    settings = settings_of(args, plan, model)
    out = Path(args.out)
    folder = out / ff.H5_PARTS if args.h5 else out
    mine = list(range(info.rank, len(videos), info.world_size))
    done = completed(out, [stems[i] for i in mine], settings, args.h5)
    todo = [i for i in mine if stems[i] not in done]
    output = (lambda stem: f"{ff.H5_NAME}:/{stem}") if args.h5 else (lambda stem: f"{stem}.npy")
    rows = {i: {"video": videos[i], "output": output(stems[i]), "rows": done[stems[i]], "status": "ok", "error": ""}
            for i in mine if stems[i] in done}
    logger.info("%d videos, %d for this process: %d complete already, %d to do", len(videos), len(mine),
                len(mine) - len(todo), len(todo))
    model.to(info.device)
    fn = feature_fn(model, info.device, args.tokens, args.layer, args.norm)
    desc = f"rank {info.rank}" if info.distributed else "videos"
    with tqdm(total=len(todo), desc=desc, unit="video", file=sys.stderr, dynamic_ncols=True) as progress:
        for result in map_videos(videos, plan, fn, args.batch_size, args.num_workers, todo):
            stem = stems[result.index]
            if result.error is not None:
                logger.warning("skipped %s: %s", result.path, result.error)
                rows[result.index] = {"video": result.path, "output": "", "rows": 0, "status": "bad",
                                      "error": result.error}
            else:
                ff.write_pair(folder, stem, result.outputs.numpy(), result.views, result.path,
                              result.num_video_frames, result.fps, settings)
                rows[result.index] = {"video": result.path, "output": output(stem), "rows": len(result.views),
                                      "status": "ok", "error": ""}
            progress.update()
    return [{"index": i, **rows[i]} for i in mine], settings


def finish(args: argparse.Namespace, rows: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    """Rank 0, once every rank is done: pack the HDF5 file and write ``index.csv`` (rows in input order)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.h5:
        ff.pack_h5(out, [Path(row["video"]).stem for row in rows if row["status"] == "ok"], settings)
    ff.write_index(out / "index.csv", rows)
    print(f"{sum(row['status'] == 'ok' for row in rows)} of {len(rows)} videos have features in {out} "
          f"(index: {out / 'index.csv'})")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: 0 when every video has features, 1 when some were unreadable, 2 with a one-line error."""
    args = get_parser().parse_args(argv)
    if args.h5:
        try:
            import h5py  # noqa: F401
        except ImportError:
            print(f"extract_features.py: error: --h5 needs h5py, which is not installed; {ff.INSTALL_HINT}",
                  file=sys.stderr)
            return 2
    info = init_distributed(device=args.device)
    setup_logging(rank=info.rank)
    try:
        rows, settings = extract(args, info)
        status = 0
    except (InputError, CheckpointError, ff.SettingsMismatch, UserError, FileNotFoundError, ValueError) as err:
        print(f"extract_features.py: error: {err}", file=sys.stderr)
        rows, settings, status = [], {}, 2
    if info.distributed:
        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, (status, rows))  # also the barrier before rank 0 writes the index
        status = max(part[0] for part in gathered)
        rows = [row for part in gathered for row in part[1]]
        dist.destroy_process_group()
    if status:
        return status
    rows = [{k: v for k, v in row.items() if k != "index"} for row in sorted(rows, key=lambda row: row["index"])]
    if info.is_main:
        finish(args, rows, settings)
    bad = [row for row in rows if row["status"] == "bad"]
    if bad and info.is_main:
        print(f"extract_features.py: {len(bad)} of {len(rows)} videos could not be read and were skipped:\n  "
              + "\n  ".join(f"{row['video']} ({row['error']})" for row in bad), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
