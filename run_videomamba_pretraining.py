"""The official script name for masked pretraining: the flags and behaviour of ``run_mask_pretrain.py``."""
from __future__ import annotations

import run_mask_pretrain

if __name__ == "__main__":
    run_mask_pretrain.main(run_mask_pretrain.get_args_parser().parse_args())
