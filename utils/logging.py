"""Rank-aware logging set-up shared by the entry scripts, tools and benchmarks."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_added: list[logging.Handler] = []  # the root handlers the last setup_logging call added


def setup_logging(output_dir: str | os.PathLike | None = None, rank: int = 0, level: int = logging.INFO) -> None:
    """Log to stderr (and to ``output_dir/train.log`` when given) on rank 0; other ranks log warnings only.

    Library modules only call ``logging.getLogger(__name__)``; entry points call this. It adds its own handlers
    to the root logger and, called again, replaces those only: handlers the host program installed stay.
    """
    root = logging.getLogger()
    for handler in _added:
        root.removeHandler(handler)
        handler.close()
    _added.clear()
    root.setLevel(level if rank == 0 else logging.WARNING)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    _added.append(stream)
    if output_dir is not None and rank == 0:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(output_dir) / "train.log")
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        _added.append(file_handler)
    for handler in _added:
        root.addHandler(handler)


def log_to_files(level: int, message: str, exc_info: Any = None) -> None:
    """Write one record (with a traceback when ``exc_info`` is given) to the log files ``setup_logging`` opened,
    not to stderr."""
    root = logging.getLogger()
    record = root.makeRecord(root.name, level, __file__, 0, message, None, exc_info)
    for handler in _added:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
