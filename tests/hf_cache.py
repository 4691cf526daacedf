"""A Hugging Face hub cache made by hand, for offline tests of weights loaded by tag or ``hf-hub:`` id."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # any 40-hex commit id


def make_hf_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> dict[str, Path]:
    """Put ``files`` (file name in the repository -> local file) into ``cache`` as huggingface_hub lays out a model
    repository's main branch: ``models--{org}--{name}/blobs/<sha256>``, ``snapshots/<commit>/<name>`` (a relative
    link to its blob) and ``refs/main`` (the commit). Returns the snapshot path of each file."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    out = {}
    for name, source in files.items():
        blob = repo / "blobs" / hashlib.sha256(Path(source).read_bytes()).hexdigest()
        shutil.copyfile(source, blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        out[name] = link
    return out


def offline_hub(monkeypatch: pytest.MonkeyPatch, cache: Path) -> dict[str, str]:
    """Point huggingface_hub at ``cache`` in offline mode, in this process (its constants are read at import) and
    for subprocesses (the returned environment variables, also set here)."""
    from huggingface_hub import constants

    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return env
