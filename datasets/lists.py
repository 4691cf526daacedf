"""List files: ``--data_path``/{train,val,test}.csv, fields split by ``--split``, paths joined to ``--prefix``.

Formats (one sample per line, blank lines ignored, exactly these fields):
  classification  ``path label``                  label: int
  regression      ``path value``                  value: float
  trimmed         ``path label duration``         duration in seconds (label int, or float for regression)
  frames          ``folder total_frames label``   SSV2 extracted frames
  paths           ``path [anything ...]``         pretraining: the first field only (e.g. ``path 0 -1``)
A malformed line, or a class label outside ``--nb_classes``, raises ``ListFileError`` naming the file and the 1-based
line number; a line split into the wrong number of fields names the ``--split`` that would work, if one does.
``read_list_lines`` is the lenient reader for checking tools: it keeps every line's exact bytes and reports malformed
lines instead of raising.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from utils.errors import BadFileError

SPLIT_FILES = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}
FORMATS = {
    "classification": ("path", "label"),
    "regression": ("path", "value"),
    "trimmed": ("path", "label", "duration"),
    "frames": ("folder", "total_frames", "label"),
    "paths": ("path",),  # pretraining: only the first field is read; any further fields are ignored
}


class ListFileError(BadFileError):
    """A list file is missing, empty or has a malformed line (a user error: ``file:line: what is wrong``)."""


@dataclass(frozen=True)
class ListEntry:
    """One list line: the prefix-joined path, its target and the optional duration / frame count."""

    path: str
    label: int | float
    duration: float | None = None
    total_frames: int | None = None


@dataclass(frozen=True)
class ListLine:
    """One non-blank list line: 1-based ``number``, its exact bytes (line ending included) and either the parsed
    ``entry`` or ``error``, what is wrong with it."""

    number: int
    raw: bytes
    entry: ListEntry | None
    error: str | None = None


def list_file_path(data_path: str | os.PathLike, mode: str) -> Path:
    """The list file of ``mode`` ("train" | "validation" | "test") under ``data_path``."""
    if mode not in SPLIT_FILES:
        raise ValueError(f"unknown dataset mode {mode!r}; expected one of {sorted(SPLIT_FILES)}")
    return Path(data_path) / SPLIT_FILES[mode]


def join_prefix(prefix: str, path: str) -> str:
    """``prefix``/``path`` (an absolute path or URL in the list wins, as with ``os.path.join``)."""
    if not prefix or "://" in path:
        return path
    return os.path.join(prefix, path)


def _parse_label(text: str, regression: bool) -> int | float:
    return float(text) if regression else int(text)


def split_fields(line: str, split: str = " ") -> list[str]:
    """The stripped fields of ``line``: any run of whitespace separates them when ``split`` is a space."""
    return [p.strip() for p in (line.split() if split == " " else line.split(split))]


def label_error(label: int | float, num_classes: int | None) -> str | None:
    """What is wrong with a class label for ``--nb_classes`` ``num_classes`` (None: not checked), or None."""
    if num_classes is None or 0 <= label < num_classes:
        return None
    return f"label {label} is not a class of --nb_classes {num_classes} (labels 0 to {num_classes - 1})"


def separator_hint(line: str, count: int, split: str) -> str:
    """``"; with --split ',' it has 2"`` when another usual separator splits ``line`` into ``count`` non-empty
    fields, else ""."""
    for other in (",", "\t", " ", ";", "|"):
        parts = split_fields(line, other)
        if other != split and len(parts) == count and all(parts):
            return f"; with --split {other!r} it has {count}"
    return ""


def parse_line(line: str, fmt: str, split: str = " ", prefix: str = "", regression: bool = False,
               num_classes: int | None = None) -> ListEntry:
    """Parse one stripped list line of format ``fmt``; raises ``ValueError`` describing what is wrong. With
    ``num_classes`` (classification), a label outside 0 .. ``num_classes`` - 1 is wrong too."""
    fields = FORMATS[fmt]
    parts = split_fields(line, split)
    if fmt == "paths":
        if not parts[0]:
            raise ValueError(f"expected a video path as the first field (fields separated by {split!r})")
        return ListEntry(join_prefix(prefix, parts[0]), 0)
    if len(parts) != len(fields) or not all(parts):
        raise ValueError(f"expected {len(fields)} fields '{' '.join(fields)}' separated by {split!r}"
                         f"{separator_hint(line, len(fields), split)}")
    entry = _entry(parts, fmt, prefix, regression)
    problem = None if regression or fmt == "regression" else label_error(entry.label, num_classes)
    if problem:
        raise ValueError(problem)
    return entry


def _entry(parts: list[str], fmt: str, prefix: str, regression: bool) -> ListEntry:
    """The entry of a line's ``parts`` (the right number of fields)."""
    fields = FORMATS[fmt]
    try:
        if fmt == "frames":
            total = int(parts[1])
            if total < 1:
                raise ValueError(f"total_frames must be >= 1, got {total}")
            return ListEntry(join_prefix(prefix, parts[0]), _parse_label(parts[2], regression), total_frames=total)
        label = _parse_label(parts[1], regression or fmt == "regression")
        if fmt == "trimmed":
            duration = float(parts[2])
            if not duration >= 0:
                raise ValueError(f"duration must be >= 0 seconds, got {parts[2]}")
            return ListEntry(join_prefix(prefix, parts[0]), label, duration=duration)
        return ListEntry(join_prefix(prefix, parts[0]), label)
    except ValueError as e:
        raise ValueError(f"bad value in '{' '.join(fields)}' ({e})") from None


def read_list_lines(path: str | os.PathLike, fmt: str, split: str = " ", prefix: str = "",
                    regression: bool = False, num_classes: int | None = None) -> list[ListLine]:
    """Every non-blank line of the list at ``path``, parsed (``parse_line``) or with its error (malformed lines do
    not raise).

    Lines are split as in text mode (``\\n``, ``\\r\\n`` or ``\\r``), so numbers match an editor's; a missing
    file raises ``ListFileError``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown list format {fmt!r}; expected one of {sorted(FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise ListFileError(f"{path}: list file not found")
    lines = []
    for number, raw in enumerate(path.read_bytes().splitlines(keepends=True), start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            lines.append(ListLine(number, raw, None, f"not UTF-8 text ({e.reason} at byte {e.start})"))
            continue
        if not line:
            continue
        try:
            lines.append(ListLine(number, raw, parse_line(line, fmt, split, prefix, regression, num_classes)))
        except ValueError as e:
            lines.append(ListLine(number, raw, None, f"{e}: {line!r}"))
    return lines


def read_list(path: str | os.PathLike, fmt: str, split: str = " ", prefix: str = "",
              regression: bool = False, num_classes: int | None = None) -> list[ListEntry]:
    """All entries of the list file at ``path`` in format ``fmt`` (see the module docstring); with ``num_classes``
    every class label must be below it."""
    lines = read_list_lines(path, fmt, split, prefix, regression, num_classes)
    for line in lines:
        if line.entry is None:
            raise ListFileError(f"{path}:{line.number}: {line.error}")
    if not lines:
        raise ListFileError(f"{path}: no entries")
    return [line.entry for line in lines]


def guess_format(lines: Iterable[str], split: str = " ") -> tuple[str, bool]:
    """``(format, regression)`` of a video list from its text lines: ``trimmed`` when most non-blank lines have 3
    fields, else ``classification``; regression when a label of those lines is a number but not an integer.
    A 3-field list whose third column holds a negative number (the pretraining lists' ``path 0 -1``) is ``paths``.

    Frame-folder lists (3 fields too) are never guessed: name that format explicitly.
    """
    rows = [split_fields(line, split) for line in lines if line.strip()]
    counts = Counter(len(r) for r in rows)
    width = counts.most_common(1)[0][0] if counts else 2
    fmt = "trimmed" if width == 3 else "classification"
    if fmt == "trimmed" and any(r[2].startswith("-") and _is_number(r[2]) for r in rows if len(r) == 3):
        return "paths", False
    return fmt, any(_is_float_not_int(r[1]) for r in rows if len(r) == width and width >= 2)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_float_not_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        try:
            float(text)
        except ValueError:
            return False
        return True
    return False


def read_paths(path: str | os.PathLike, split: str = " ", prefix: str = "") -> list[ListEntry]:
    """Pretraining lists: the first field of each line is the video path (labels and other fields are ignored)."""
    return read_list(path, "paths", split, prefix)
