"""Output files of ``tools/extract_features.py``: one ``.npy`` + ``.json`` pair per video, or one HDF5 file.

Per video ``<stem>`` (the video file name without its extension):

* ``<stem>.npy``: float32 features, one row per view in view order: pooled (V, C), or tokens (V, 1 + T'·H'·W', C)
  with token 0 the cls token and the patch tokens frame-major, row-major within a frame (``token_grid`` (T', H', W')).
* ``<stem>.json``: ``{"video": path, "shape": [...], "num_video_frames", "fps", "settings": {...},
  "views": {"window": [...], "start": [...], "end": [...], "segment": [...], "crop": [...]}}``: for row i, the
  window index and its start / end in seconds (the whole video [0, duration] without sliding windows), the test
  segment and crop. ``settings`` records the model, checkpoint and every flag that changes the numbers.

Both are written to a temporary name and renamed, the ``.json`` last: a video is complete when its ``.json`` exists
and the ``.npy`` has the recorded shape; anything else is recomputed. A complete pair made with other ``settings`` is
an error (``SettingsMismatch``): features of two settings never mix in one folder.

With ``--h5`` the pairs are written under ``<out>/h5_parts/`` and, once all ranks are done, packed into
``<out>/features.h5`` (written under a temporary name and renamed; the packed pairs are then deleted): one group per
video named by its stem holding the dataset ``features`` and the per-row datasets ``window``, ``start``, ``end``,
``segment``, ``crop``, with attributes ``video``, ``num_video_frames``, ``fps``; the file's attribute ``settings``
holds the settings as JSON. The videos of an existing ``features.h5`` (same settings, else an error) count as complete
and are kept.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tools.video_views import ViewInfo

logger = logging.getLogger(__name__)

H5_NAME = "features.h5"
H5_PARTS = "h5_parts"
VIEW_FIELDS = ("window", "start", "end", "segment", "crop")
INSTALL_HINT = "pip install h5py (or: pip install -r requirements-extras.txt)"


def write_pair(folder: Path, stem: str, features: np.ndarray, views: Sequence[ViewInfo], video: str,
               num_video_frames: int, fps: float, settings: Mapping[str, Any]) -> None:
    """Atomically write ``<stem>.npy`` and then ``<stem>.json`` (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    npy, meta = folder / f"{stem}.npy", folder / f"{stem}.json"
    tmp = folder / f".{stem}.npy.tmp"
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(features, dtype=np.float32))
    os.replace(tmp, npy)
    record = {"video": video, "shape": list(features.shape), "num_video_frames": num_video_frames, "fps": fps,
              "settings": dict(settings), "views": {k: [getattr(v, k) for v in views] for k in VIEW_FIELDS}}
    tmp = folder / f".{stem}.json.tmp"
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(tmp, meta)


class SettingsMismatch(ValueError):
    """The output folder holds features made with other settings."""


def _differences(found: Any, wanted: Mapping[str, Any]) -> str:
    if not isinstance(found, dict):
        return "no settings recorded"
    keys = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
    return ", ".join(f"{k}: {found.get(k)!r} there, {wanted.get(k)!r} now" for k in keys)


def pair_rows(folder: Path, stem: str, settings: Mapping[str, Any]) -> int | None:
    """Rows of the complete pair ``stem`` (None when absent or incomplete); ``SettingsMismatch`` when it was made
    with other settings."""
    try:
        record = json.loads((folder / f"{stem}.json").read_text(encoding="utf-8"))
        shape = list(np.load(folder / f"{stem}.npy", mmap_mode="r").shape)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("shape") != shape:
        return None
    if record.get("settings") != dict(settings):
        raise SettingsMismatch(f"{folder / stem}.json holds features made with other settings "
                               f"({_differences(record.get('settings'), settings)}); use another --out or remove it")
    return shape[0]


def read_pair(folder: Path, stem: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Features and record of a pair."""
    record = json.loads((folder / f"{stem}.json").read_text(encoding="utf-8"))
    return np.load(folder / f"{stem}.npy"), record


def h5_rows(path: Path, settings: Mapping[str, Any]) -> dict[str, int]:
    """Rows per video (stem) of an existing ``features.h5`` (empty when absent); ``SettingsMismatch`` when it was
    made with other settings."""
    import h5py

    if not path.is_file():
        return {}
    with h5py.File(path, "r") as f:
        found = json.loads(f.attrs.get("settings", "null"))
        if found != dict(settings):
            raise SettingsMismatch(f"{path} holds features made with other settings "
                                   f"({_differences(found, settings)}); use another --out or remove it")
        return {stem: int(f[stem]["features"].shape[0]) for stem in f}


def pack_h5(out: Path, stems: Sequence[str], settings: Mapping[str, Any]) -> None:
    """Write ``out/features.h5`` holding ``stems`` from their pairs in ``out/h5_parts``, then the videos of an
    existing ``features.h5`` (kept unless a new pair replaces them); then delete the packed pairs."""
    import h5py

    final, parts = out / H5_NAME, out / H5_PARTS
    tmp = out / f".{H5_NAME}.tmp"
    packed = [stem for stem in stems if (parts / f"{stem}.json").is_file()]
    with h5py.File(tmp, "w") as f:
        f.attrs["settings"] = json.dumps(dict(settings))
        for stem in packed:
            features, record = read_pair(parts, stem)
            group = f.create_group(stem)
            group.create_dataset("features", data=features)
            for key in VIEW_FIELDS:
                group.create_dataset(key, data=np.asarray(record["views"][key]))
            for key in ("video", "num_video_frames", "fps"):
                group.attrs[key] = record[key]
        if final.is_file():
            with h5py.File(final, "r") as old:
                for stem in old:
                    if stem not in f:
                        old.copy(old[stem], f, name=stem)
        count = len(f)
    os.replace(tmp, final)
    for stem in packed:
        for suffix in (".json", ".npy"):
            (parts / f"{stem}{suffix}").unlink()
    if parts.is_dir() and not any(parts.iterdir()):
        parts.rmdir()
    logger.info("wrote %s (%d videos, %d new)", final, count, len(packed))


def write_index(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """``index.csv``: ``video,output,rows,status,error`` per input video, in input order."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["video", "output", "rows", "status", "error"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
