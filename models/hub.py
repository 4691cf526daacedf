"""Where weights come from: a local file, an ``http(s)://`` URL, a pretrained tag or an ``hf-hub:`` id.

``fetch_checkpoint`` turns each into a local file, downloading only then:

- a pretrained tag such as ``videomamba_small.k400_f8_res224`` (``timm.list_pretrained("videomamba*")``,
  ``models/releases.py``): its ``hf_hub_filename`` in its ``hf_hub_id`` repository;
- ``hf-hub:<org>/<repo>[@<revision>]/<file>``: timm's ``hf-hub:`` prefix and repository id (``@revision`` as timm
  writes it), then the file's path in the repository, as in huggingface_hub's ``hf://`` paths;
- an ``http(s)://`` URL: into torch.hub's cache (``<torch hub dir>/checkpoints/<file name>``);
- anything else: a local path, as is.

Hub files go through huggingface_hub's cache (``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``); with
``HF_HUB_OFFLINE=1`` only that cache is read. Failures are one-line ``UserError``s naming the weights: an unknown
tag lists the closest known ones, a failed download says what to do offline.
"""
from __future__ import annotations

import difflib
import logging
import os
import re
import urllib.parse
from pathlib import Path

import timm
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from timm.models import PretrainedCfg, get_pretrained_cfg

from utils.errors import UsageError, UserError, require_path

_logger = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"
TAGGED_FAMILY = "videomamba*"  # the models whose tags name weights here (timm.list_pretrained filter)
CHECKPOINT_SUFFIXES = ("pth", "pt", "bin", "safetensors", "ckpt", "tar", "pkl")
_TAG = re.compile(r"[A-Za-z0-9_]+\.[A-Za-z0-9_]+")


class DownloadError(UserError, RuntimeError):
    """Weights could not be fetched (offline, not in the cache, no such file, a hash mismatch)."""


class UnknownTagError(UsageError, LookupError):
    """A name that looks like a pretrained tag but is not one."""


def _label(spec: str, flag: str) -> str:
    return f"{flag} {spec}" if flag else spec


def is_pretrained_tag(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` is meant as a pretrained tag: ``arch.tag`` (no path separator, the part after the dot not a
    checkpoint file extension) that is not an existing file. It need not be a known tag."""
    text = os.fspath(spec)
    return (_TAG.fullmatch(text) is not None and text.rsplit(".", 1)[1].lower() not in CHECKPOINT_SUFFIXES
            and not os.path.exists(text))


def known_tags() -> list[str]:
    """Every pretrained tag of the VideoMamba models (with weights), sorted."""
    return timm.list_pretrained(TAGGED_FAMILY)


def pretrained_tag_cfg(name: str, flag: str = "") -> PretrainedCfg:
    """The registered cfg of the pretrained tag ``name``; ``UnknownTagError`` naming it and the closest known tags."""
    tags = known_tags()
    if name not in tags:
        close = difflib.get_close_matches(name, tags, n=3, cutoff=0.6)
        hint = f"closest: {', '.join(close)}" if close else "see timm.list_pretrained('videomamba*') or MODEL_ZOO.md"
        raise UnknownTagError(f"{_label(name, flag)}: unknown pretrained tag; {hint}")
    return get_pretrained_cfg(name)


def parse_hf_hub_id(spec: str, flag: str = "") -> tuple[str, str | None, str]:
    """``hf-hub:org/repo[@revision]/path/file.pth`` -> (``org/repo``, revision or None, ``path/file.pth``)."""
    parts = spec[len(HF_HUB_PREFIX):].split("/", 2)
    if not spec.startswith(HF_HUB_PREFIX) or len(parts) < 3 or not all(parts):
        raise UsageError(f"{_label(spec, flag)}: expected {HF_HUB_PREFIX}<org>/<repo>[@<revision>]/<file>")
    repo, _, revision = parts[1].partition("@")
    return f"{parts[0]}/{repo}", revision or None, parts[2]


def download_from_hub(repo_id: str, filename: str, revision: str | None = None, name: str = "",
                      cache_dir: str | os.PathLike | None = None) -> Path:
    """``hf_hub_download`` into huggingface_hub's cache (``cache_dir`` overrides ``HF_HUB_CACHE``); the local file.

    Raises ``DownloadError`` naming ``name`` (the tag or id asked for) and the file when it cannot be had: offline
    and not cached, no such file or repository, no network.
    """
    where = f"{repo_id}/{filename}" + (f"@{revision}" if revision else "")
    try:
        path = hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir)
    except (OSError, ValueError, EntryNotFoundError) as err:
        cache = cache_dir or hf_constants.HF_HUB_CACHE
        if hf_constants.HF_HUB_OFFLINE:
            reason = f"HF_HUB_OFFLINE is set and it is not in the cache {cache}"
        else:
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            reason = f"{type(err).__name__}: {first}" if first else type(err).__name__
        raise DownloadError(
            f"{name or where}: cannot get {where} from the Hugging Face hub ({reason}); download it on a connected "
            f"machine (hf download {repo_id} {filename}) and copy the cache, or pass the file's local path") from err
    _logger.info("%s: %s", name or where, path)
    return Path(path)


def download_tag(cfg: PretrainedCfg, name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The file of a pretrained cfg's ``hf_hub_id`` (``org/repo[@revision]``) and ``hf_hub_filename``."""
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    return download_from_hub(repo_id, cfg.hf_hub_filename, revision or None, name, cache_dir)


def fetch_url(url: str, check_hash: bool = True) -> Path:
    """An ``http(s)://`` URL as ``<torch hub dir>/checkpoints/<file name>``, downloaded there once (as
    ``torch.hub.load_state_dict_from_url``; ``check_hash`` verifies a ``name-<sha256 prefix>.ext`` file name).
    Raises ``DownloadError`` naming the URL and the cache file when the download fails (offline)."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise ValueError(f"checkpoint URL {url} names no file")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name
    if cached.is_file():
        _logger.info("using %s from the torch hub cache for %s", cached, url)
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(name) if check_hash else None
    _logger.info("downloading %s to %s", url, cached)
    try:
        torch.hub.download_url_to_file(url, str(cached), hash_prefix=match.group(1) if match else None)
    except OSError as err:
        raise DownloadError(f"cannot download checkpoint {url} ({err}). Offline? Fetch it on a connected machine "
                            f"and pass the local file, or copy it to {cached}") from err
    except RuntimeError as err:  # the file's SHA-256 does not start with the prefix in its name
        raise DownloadError(f"checkpoint {url}: {err}") from err
    return cached


def fetch_checkpoint(spec: str | os.PathLike, flag: str = "", cache_dir: str | os.PathLike | None = None) -> Path:
    """The local file of ``spec`` (see the module docstring), downloaded if needed; ``flag`` names the command-line
    flag it came from in errors. A local path is returned as is (its reader reports a missing file)."""
    text = os.fspath(spec)
    if text.startswith(("http://", "https://")):
        return fetch_url(text)
    if text.startswith(HF_HUB_PREFIX):
        repo_id, revision, filename = parse_hf_hub_id(text, flag)
        return download_from_hub(repo_id, filename, revision, _label(text, flag), cache_dir)
    if is_pretrained_tag(text):
        return download_tag(pretrained_tag_cfg(text, flag), _label(text, flag), cache_dir)
    return Path(text)


def check_weights_arg(spec: str, flag: str) -> None:
    """Fail fast, downloading nothing, on a weights flag that cannot work: an unknown tag, a malformed ``hf-hub:``
    id, a missing file or a placeholder path (``UsageError`` subclasses naming ``flag``). URLs pass."""
    if spec.startswith(("http://", "https://")):
        return
    if spec.startswith(HF_HUB_PREFIX):
        parse_hf_hub_id(spec, flag)
    elif is_pretrained_tag(spec):
        pretrained_tag_cfg(spec, flag)
    else:
        require_path(spec, flag, "file")
