"""Build the datasets of the entry scripts from the typed configuration (``utils.config``).

``build_video_dataset(mode, data, augment, seed)`` gives the train / validation / test set of ``data.data_set``
(one of ``DATA_SETS``) from the ``{mode}`` list under ``data.data_path`` (train.csv / val.csv / test.csv);
``build_pretraining_dataset(data, augment, ...)`` the masked-pretraining clips of a list file (or a folder holding
train.csv). ``build_dataset(is_train, test_mode, args)`` is the official entry point, taking the parsed flags of
``run_class_finetuning.py``. A list file missing from ``--data_path`` raises ``utils.errors.MissingPathError``
naming the flag.
"""
from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from datasets import masking, transforms
from datasets.lists import ListEntry, list_file_path, read_list, read_paths
from datasets.pretrain_dataset import PretrainDataset
from datasets.readers import FrameFolderReader, VideoReader, open_video
from datasets.video_dataset import VideoClsDataset
from utils.config import AugmentConfig, PretrainAugmentConfig, PretrainDataConfig, VideoSetConfig, finetune_config
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


def _video_opener(backend: str) -> Callable[[ListEntry], VideoReader]:
    return lambda entry: open_video(entry.path, backend)


def _frame_folder_opener(filename_tmpl: str) -> Callable[[ListEntry], VideoReader]:
    return lambda entry: FrameFolderReader(entry.path, entry.total_frames, filename_tmpl)


def _list_path(data_path: str, mode: str) -> Path:
    """The ``mode`` list file under ``--data_path``; ``MissingPathError`` when it is not there."""
    path = list_file_path(data_path, mode)
    if not path.is_file():
        raise MissingPathError(f"--data_path {data_path}: the {mode} list {path.name} is not there ({path})")
    return path


def _transform(mode: str, augment: AugmentConfig, flip: bool) -> Callable[..., torch.Tensor]:
    if mode == "train":
        return transforms.build_train_transform(augment, flip)
    if mode == "test":
        return transforms.build_test_transform(augment)
    return transforms.build_val_transform(augment)


def build_video_dataset(mode: str, data: VideoSetConfig, augment: AugmentConfig, seed: int) -> VideoClsDataset:
    """The ``train``, ``validation`` or ``test`` set of ``data.data_set``; ``seed`` (``--seed``) keys the training
    draws (``utils.seeding``)."""
    if data.data_set not in DATA_SETS:
        raise UsageError(f"unknown --data_set {data.data_set!r}; expected one of {', '.join(DATA_SETS)}")
    kind = DATA_SETS[data.data_set]
    frames = kind.sampling == "ssv2" and data.frame_folders
    trimmed = kind.trimmed and data.trimmed > 0
    fmt = "frames" if frames else "trimmed" if trimmed else "regression" if data.regression else "classification"
    entries = read_list(_list_path(data.data_path, mode), fmt, data.split, data.prefix, data.regression,
                        num_classes=None if data.regression else data.nb_classes)
    return VideoClsDataset(
        entries, mode, _transform(mode, augment, kind.flip),
        sampling="ssv2_frames" if frames else kind.sampling,
        num_frames=data.num_frames,
        open_clip=_frame_folder_opener(data.filename_tmpl) if frames else _video_opener(data.video_backend),
        rate=data.sampling_rate,
        num_segments=data.test_num_segment,
        num_crops=augment.test_num_crop,
        windows=(data.trimmed, data.time_stride) if trimmed else None,
        num_sample=data.num_sample,
        regression=data.regression,
        max_retries=data.max_retries,
        max_bad_fraction=data.max_bad_fraction,
        zero_frame_size=augment.short_side_size if mode == "test" else augment.input_size,
        seed=seed,
    )


def build_dataset(is_train: bool, test_mode: bool, args: Namespace) -> tuple[VideoClsDataset, int]:
    """The official entry point: the train (``is_train``), test (``test_mode``) or validation set described by the
    parsed flags of ``run_class_finetuning.py``, and nb_classes."""
    config = finetune_config(args)
    mode = "train" if is_train else ("test" if test_mode else "validation")
    return build_video_dataset(mode, config.data, config.augment, config.runtime.seed), config.data.nb_classes


def build_pretraining_dataset(data: PretrainDataConfig, augment: PretrainAugmentConfig, *, mask_type: str,
                              mask_ratio: float, mask_window: tuple[int, int, int], seed: int) -> PretrainDataset:
    """Masked-pretraining clips from the list at ``data.data_path`` (or its ``train.csv``), masks of ``mask_type``
    over the student's token grid ``mask_window`` (T', H', W'); ``seed`` as ``build_video_dataset``'s."""
    path = Path(data.data_path)
    list_path = _list_path(data.data_path, "train") if path.is_dir() else path
    entries = read_paths(list_path, data.split, data.prefix)
    return PretrainDataset(
        entries, transforms.build_pretrain_transform(augment),
        num_frames=data.num_frames,
        sampling_rate=data.sampling_rate,
        open_clip=_video_opener(data.video_backend),
        mask_generator=masking.build_mask_generator(mask_type, mask_ratio, mask_window),
        max_retries=data.max_retries,
        max_bad_fraction=data.max_bad_fraction,
        num_segments=data.num_segments,
        num_sample=data.num_sample,
        seed=seed,
    )
