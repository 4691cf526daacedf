"""List files: ``--data_path``/{train,val,test}.csv, fields split by ``--split``, paths joined to ``--prefix``.

Formats (one sample per line, blank lines ignored, exactly these fields):
  classification  ``path label``                  label: int
  regression      ``path value``                  value: float
  trimmed         ``path label duration``         duration in seconds (label int, or float for regression)
  frames          ``folder total_frames label``   SSV2 extracted frames
A malformed line raises ``ListFileError`` naming the file and the 1-based line number.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SPLIT_FILES = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}
FORMATS = {
    "classification": ("path", "label"),
    "regression": ("path", "value"),
    "trimmed": ("path", "label", "duration"),
    "frames": ("folder", "total_frames", "label"),
}


class ListFileError(ValueError):
    """A list file is missing, empty or has a malformed line."""


@dataclass(frozen=True)
class ListEntry:
    """One list line: the prefix-joined path, its target and the optional duration / frame count."""

    path: str
    label: int | float
    duration: float | None = None
    total_frames: int | None = None


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


def parse_line(line: str, fmt: str, split: str = " ", prefix: str = "", regression: bool = False) -> ListEntry:
    """Parse one stripped list line of format ``fmt``; raises ``ValueError`` describing what is wrong."""
    fields = FORMATS[fmt]
    parts = [p.strip() for p in (line.split() if split == " " else line.split(split))]
    if len(parts) != len(fields) or not all(parts):
        raise ValueError(f"expected {len(fields)} fields '{' '.join(fields)}' separated by {split!r}")
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


def read_list(path: str | os.PathLike, fmt: str, split: str = " ", prefix: str = "",
              regression: bool = False) -> list[ListEntry]:
    """All entries of the list file at ``path`` in format ``fmt`` (see the module docstring)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown list format {fmt!r}; expected one of {sorted(FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise ListFileError(f"{path}: list file not found")
    entries = []
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                entries.append(parse_line(line, fmt, split, prefix, regression))
            except ValueError as e:
                raise ListFileError(f"{path}:{number}: {e}: {line!r}") from None
    if not entries:
        raise ListFileError(f"{path}: no entries")
    return entries


def read_paths(path: str | os.PathLike, split: str = " ", prefix: str = "") -> list[ListEntry]:
    """Pretraining lists: the first field of each line is the video path (labels and other fields are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise ListFileError(f"{path}: list file not found")
    with open(path, encoding="utf-8") as f:
        entries = [ListEntry(join_prefix(prefix, (line.split() if split == " " else line.split(split))[0].strip()), 0)
                   for line in f if line.strip()]
    if not entries:
        raise ListFileError(f"{path}: no entries")
    return entries
