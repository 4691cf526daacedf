"""Reading ``torch.save`` files without running code stored in them.

A full unpickle calls whatever function the file names, so a crafted ``.pth`` can run any command. torch's
``weights_only`` unpickler builds only tensors, plain containers and allow-listed types. Every checkpoint this
project reads goes through ``load_torch_file``: weights-only, with the few harmless types of ``harmless_globals``
also allowed (what official checkpoints hold besides tensors), and a file that needs more is refused unless the user
opts in with ``--trust_checkpoint`` (``trust_checkpoint=True`` for library calls).
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from utils.errors import BadFileError

logger = logging.getLogger(__name__)

TRUST_FLAG = "--trust_checkpoint"
TRUST_HELP = ("load checkpoints that need a full unpickle (not weights-only); that runs code named in the file, so "
              "use it only for files from a source you trust")

SafeGlobal = Callable | tuple[Callable, str]


class UntrustedCheckpointError(BadFileError):
    """A checkpoint needs a full unpickle and the user did not opt in."""


def harmless_globals() -> list[SafeGlobal]:
    """Types allowed besides torch's own: ``argparse.Namespace`` (the official checkpoints' ``args``) and numpy
    arrays, scalars and dtypes (under numpy 2's and numpy 1's module names; the dtype classes of ``numpy.dtypes``,
    whose state numpy restores).

    They are safe because each only builds a value from data already unpickled under the same rules: a Namespace is
    created empty and gets its attributes from a dict; ``_reconstruct`` makes an empty array of an allowed class and
    ``ndarray.__setstate__`` fills it from bytes (or from a list, for object arrays); ``scalar`` reads a number from
    bytes; ``dtype`` and its ``__setstate__`` build a type descriptor. None of them calls a function that the file
    names.
    """
    import numpy as np
    from numpy._core import multiarray

    dtype_classes = [getattr(np.dtypes, name) for name in np.dtypes.__all__]
    return [argparse.Namespace, np.ndarray, np.dtype, *dtype_classes, multiarray._reconstruct, multiarray.scalar,
            (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            (multiarray.scalar, "numpy.core.multiarray.scalar")]


def _unsafe_names(path: Path, allowed: list[SafeGlobal]) -> str:
    """`` (it names a.B, c.D)``: the globals of ``path`` outside ``allowed``, for the error message ('' if unknown)."""
    try:
        with torch.serialization.safe_globals(allowed):
            names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a file the static scan cannot read (legacy format, unusual opcodes): no names to give
        return ""
    return f" (it names {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if names else ""


def _is_torch_file(path: Path) -> bool:
    """A ``torch.save`` zip archive, or a legacy ``torch.save`` file (a pickle: first byte the PROTO opcode)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def load_torch_file(path: str | os.PathLike, trust_checkpoint: bool = False, map_location: Any = "cpu",
                    allow: Sequence[SafeGlobal] = (), mmap: bool = False) -> Any:
    """``torch.load`` weights-only, with ``harmless_globals`` and ``allow`` also accepted (``mmap``: tensors stay
    on disk until used).

    A file that needs a full unpickle raises ``UntrustedCheckpointError`` (one line, naming ``TRUST_FLAG``) unless
    ``trust_checkpoint``, when it is loaded in full after a warning. Any other failure is a ``BadFileError`` naming
    ``path``.
    """
    path = Path(path)
    allowed = [*harmless_globals(), *allow]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises many types for corrupt files; all mean "not loadable"
        if not (isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err)):
            raise BadFileError(f"{path} is not a checkpoint (torch.load failed: {err!r})") from err
        if not _is_torch_file(path):
            raise BadFileError(f"{path} is not a checkpoint (not a torch.save file)") from err
        if not trust_checkpoint:
            raise UntrustedCheckpointError(
                f"{path} is not a weights-only checkpoint{_unsafe_names(path, allowed)}: loading it would run code "
                f"named in the file; if you trust its source, pass {TRUST_FLAG} (trust_checkpoint=True in "
                f"Python)") from err
    logger.warning("%s: full unpickle (%s); this runs code named in the file", path, TRUST_FLAG)
    try:
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as err:
        raise BadFileError(f"{path} is not a checkpoint (torch.load failed: {err!r})") from err
