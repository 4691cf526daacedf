"""User errors: a wrong command line or input file, reported as one line instead of a traceback.

``UsageError`` (exit status 2, as argparse): the command line is wrong: a path that does not exist or is still a
placeholder of the official scripts, an unknown ``--model``, flags that contradict each other.
``UserError`` (exit status 1): a file exists but cannot be used: a malformed list line, an unreadable or
incompatible checkpoint, too many unreadable videos.
They are raised where the problem is detected, with a message naming the file or flag; ``engines.cli.run_entry``
prints ``error: <message>`` (the traceback goes to ``train.log``, or to stderr with ``--debug``). Any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import os
from pathlib import Path

PLACEHOLDER_HINT = "a placeholder of the official scripts: replace it with your real path"


class UserError(Exception):
    """A mistake in the user's input; ``exit_status`` 1."""

    exit_status = 1


class UsageError(UserError):
    """A mistake in the command line; ``exit_status`` 2."""

    exit_status = 2


class MissingPathError(UsageError, FileNotFoundError):
    """A path named on the command line (or derived from one) does not exist."""


class BadFileError(UserError, ValueError):
    """A file exists but its content cannot be used (corrupt, malformed, incompatible)."""


def is_placeholder(value: str | os.PathLike) -> bool:
    """True for the official scripts' placeholders: ``you_data_path``, ``your_model_path/x.pth``, ``/path/to/x``."""
    text = os.fspath(value)
    parts = Path(text).parts
    return (any(part == "you_data_path" or part.startswith("your_") for part in parts)
            or text.startswith(("/path/to/", "path/to/")))


def require_path(value: str | os.PathLike, flag: str, kind: str = "any") -> Path:
    """``Path(value)`` when it exists as a ``kind`` ("file", "folder" or "any"); else ``MissingPathError``
    naming ``flag`` (and saying so when ``value`` is a placeholder)."""
    if kind not in ("file", "folder", "any"):
        raise ValueError(f"kind must be file, folder or any, got {kind!r}")
    path = Path(value)
    if is_placeholder(value):
        raise MissingPathError(f"{flag} {value}: {PLACEHOLDER_HINT}")
    found = path.is_file() if kind == "file" else path.is_dir() if kind == "folder" else path.exists()
    if not found:
        what = {"file": "no such file", "folder": "no such folder", "any": "no such file or folder"}[kind]
        if path.exists():
            what = f"is a {'folder' if path.is_dir() else 'file'}, expected a {kind}"
        raise MissingPathError(f"{flag} {value}: {what}")
    return path
