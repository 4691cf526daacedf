"""The official script name for regression (LVU like_ratio / view count): ``run_class_finetuning.py --task regression``.

Every flag of ``run_class_finetuning.py`` is accepted, with the official regression defaults: ``--smoothing``,
``--mixup`` and ``--cutmix`` 0, and ``--nb_classes`` 1 (the only value the official script accepts).
"""
from __future__ import annotations

from utils.omp import prefer_passive_wait

if __name__ == "__main__":  # before torch starts its OpenMP runtime; importing this module changes nothing
    prefer_passive_wait()

import argparse

import run_class_finetuning
from engines.cli import run_entry


def get_args_parser() -> argparse.ArgumentParser:
    parser = run_class_finetuning.get_args_parser()
    parser.set_defaults(task="regression", nb_classes=1, smoothing=0.0, mixup=0.0, cutmix=0.0)
    return parser


if __name__ == "__main__":
    run_entry(run_class_finetuning.main, get_args_parser())
