"""Build the datasets the engines use from parsed command-line args (official flag names).

``build_dataset(is_train, test_mode, args)`` reads these args attributes:
  data_set (one of ``DATA_SETS``), data_path (folder with train.csv / val.csv / test.csv), prefix, split,
  nb_classes (1 = regression: float targets), num_frames, sampling_rate (dense data sets), trimmed and
  time_stride (seconds; LVU / Breakfast / COIN), test_num_segment, test_num_crop, num_sample (training),
  input_size, short_side_size, video_backend (auto | decord | pyav), no_use_decord or use_decord=False (SSV2 from
  frame folders), filename_tmpl, max_bad_fraction (default 0.1), max_retries (default 10), plus whatever the
  transform builders of ``datasets.transforms`` read.
``build_pretraining_dataset(args)`` reads data_path (a list file, or a folder holding train.csv), prefix, split,
  num_frames, sampling_rate, num_segments, num_sample, video_backend, max_bad_fraction, max_retries, and the args
  of ``build_pretrain_transform`` / ``build_mask_generator``.
A list file missing from ``--data_path`` raises ``utils.errors.MissingPathError`` naming the flag.
"""
from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from datasets import masking, transforms
from datasets.lists import ListEntry, list_file_path, read_list, read_paths
from datasets.pretrain_dataset import PretrainDataset
from datasets.readers import DEFAULT_FILENAME_TMPL, FrameFolderReader, VideoReader, open_video
from datasets.video_dataset import VideoClsDataset
from utils.errors import MissingPathError, UsageError


@dataclass(frozen=True)
class DataSetKind:
    """How a ``--data_set`` samples frames, whether it may flip, and whether it cuts trimmed windows."""

    sampling: str
    flip: bool = True
    trimmed: bool = False


DATA_SETS = {
    "Kinetics_sparse": DataSetKind("sparse"),
    "mitv1_sparse": DataSetKind("sparse"),  # Moments in Time, read like Kinetics_sparse (official)
    "Kinetics": DataSetKind("dense"),
    "UCF101": DataSetKind("dense"),
    "HMDB51": DataSetKind("dense"),
    "SSV2": DataSetKind("ssv2", flip=False),
    "LVU": DataSetKind("sparse", trimmed=True),
    "Breakfast": DataSetKind("sparse", trimmed=True),
    "COIN": DataSetKind("sparse", trimmed=True),
}


def _uses_frame_folders(args: Namespace) -> bool:
    """``--no_use_decord``: read SSV2 from extracted frame folders (either dest spelling is accepted)."""
    return bool(getattr(args, "no_use_decord", False)) or not getattr(args, "use_decord", True)


def _video_opener(args: Namespace) -> Callable[[ListEntry], VideoReader]:
    backend = getattr(args, "video_backend", "auto")
    return lambda entry: open_video(entry.path, backend)


def _frame_folder_opener(args: Namespace) -> Callable[[ListEntry], VideoReader]:
    tmpl = getattr(args, "filename_tmpl", DEFAULT_FILENAME_TMPL)
    return lambda entry: FrameFolderReader(entry.path, entry.total_frames, tmpl)


def _list_path(data_path: str, mode: str) -> Path:
    """The ``mode`` list file under ``--data_path``; ``MissingPathError`` when it is not there."""
    path = list_file_path(data_path, mode)
    if not path.is_file():
        raise MissingPathError(f"--data_path {data_path}: the {mode} list {path.name} is not there ({path})")
    return path


def build_dataset(is_train: bool, test_mode: bool, args: Namespace, seed: int = 0) -> tuple[VideoClsDataset, int]:
    """The train (``is_train``), test (``test_mode``) or validation dataset of ``args.data_set`` and nb_classes;
    ``seed`` (``--seed``) keys the training draws (``utils.seeding``)."""
    if args.data_set not in DATA_SETS:
        raise UsageError(f"unknown --data_set {args.data_set!r}; expected one of {', '.join(DATA_SETS)}")
    kind = DATA_SETS[args.data_set]
    mode = "train" if is_train else ("test" if test_mode else "validation")
    nb_classes = int(args.nb_classes)
    regression = nb_classes == 1
    frames = kind.sampling == "ssv2" and _uses_frame_folders(args)
    trimmed = kind.trimmed and (getattr(args, "trimmed", 60) or 0) > 0
    fmt = "frames" if frames else "trimmed" if trimmed else "regression" if regression else "classification"
    entries = read_list(_list_path(args.data_path, mode), fmt, getattr(args, "split", " "),
                        getattr(args, "prefix", ""), regression)
    if mode == "train":
        transform = transforms.build_train_transform(args, kind.flip)
    elif mode == "test":
        transform = transforms.build_test_transform(args)
    else:
        transform = transforms.build_val_transform(args)
    dataset = VideoClsDataset(
        entries, mode, transform,
        sampling="ssv2_frames" if frames else kind.sampling,
        num_frames=args.num_frames,
        open_clip=_frame_folder_opener(args) if frames else _video_opener(args),
        rate=getattr(args, "sampling_rate", 1),
        num_segments=getattr(args, "test_num_segment", 1),
        num_crops=getattr(args, "test_num_crop", 1),
        windows=(args.trimmed, getattr(args, "time_stride", 16)) if trimmed else None,
        num_sample=getattr(args, "num_sample", 1),
        regression=regression,
        max_retries=getattr(args, "max_retries", 10),
        max_bad_fraction=getattr(args, "max_bad_fraction", 0.1),
        zero_frame_size=args.short_side_size if mode == "test" else args.input_size,
        seed=seed,
    )
    return dataset, nb_classes


def build_pretraining_dataset(args: Namespace, seed: int = 0) -> PretrainDataset:
    """Masked-pretraining clips from the list at ``args.data_path`` (or its ``train.csv``); ``seed`` as
    ``build_dataset``'s."""
    path = Path(args.data_path)
    list_path = _list_path(args.data_path, "train") if path.is_dir() else path
    entries = read_paths(list_path, getattr(args, "split", " "), getattr(args, "prefix", ""))
    return PretrainDataset(
        entries, transforms.build_pretrain_transform(args),
        num_frames=args.num_frames,
        sampling_rate=getattr(args, "sampling_rate", 1),
        open_clip=_video_opener(args),
        mask_generator=masking.build_mask_generator(args),
        max_retries=getattr(args, "max_retries", 10),
        max_bad_fraction=getattr(args, "max_bad_fraction", 0.1),
        num_segments=getattr(args, "num_segments", 1),
        num_sample=getattr(args, "num_sample", 1),
        seed=seed,
    )
