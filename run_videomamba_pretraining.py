"""The official script name for masked pretraining: the flags and behaviour of ``run_mask_pretrain.py``."""
from __future__ import annotations

from utils.omp import prefer_passive_wait

if __name__ == "__main__":  # before torch starts its OpenMP runtime; importing this module changes nothing
    prefer_passive_wait()

import run_mask_pretrain
from engines.cli import run_entry

if __name__ == "__main__":
    run_entry(run_mask_pretrain.main, run_mask_pretrain.get_args_parser())
