"""The official script name for regression (LVU like_ratio / view_count): ``run_class_finetuning.py --task regression``.

Every flag of ``run_class_finetuning.py`` is accepted; ``--nb_classes`` defaults to 1 here.
"""
from __future__ import annotations

import run_class_finetuning

if __name__ == "__main__":
    parser = run_class_finetuning.get_args_parser()
    parser.set_defaults(task="regression", nb_classes=1)
    run_class_finetuning.main(parser.parse_args())
