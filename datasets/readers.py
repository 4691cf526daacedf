"""Video and frame-folder readers behind one small interface.

Every reader exposes ``num_frames``, ``fps`` and ``get_frames(indices) -> uint8 (T, H, W, 3)`` RGB. Readers are
cheap to construct and open their file on first use (and drop the handle when pickled), so datasets can create them
inside DataLoader worker processes. Paths may be local or fsspec URLs (``s3://``, ``http://``, ``memory://``…) when
fsspec and the protocol's backend are installed. Every failure raises ``VideoDecodeError`` naming path and reason.
"""
from __future__ import annotations

import importlib.util
import io
import os
from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

BACKENDS = ("auto", "decord", "pyav")
DEFAULT_FILENAME_TMPL = "img_{:05}.jpg"


class VideoDecodeError(RuntimeError):
    """A video or frame folder could not be read; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_url(path: str) -> bool:
    """True for fsspec URLs such as ``s3://bucket/x.mp4`` (``file://`` counts as local)."""
    return "://" in path and not path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def read_bytes(path: str) -> bytes:
    """Whole file content, local or through fsspec; missing and zero-byte files are errors."""
    try:
        if is_url(path):
            import fsspec  # optional: only needed for URLs

            with fsspec.open(path, "rb") as f:
                data = f.read()
        else:
            with open(_local(path), "rb") as f:
                data = f.read()
    except FileNotFoundError:
        raise VideoDecodeError(path, "file not found") from None
    except ImportError as e:
        raise VideoDecodeError(path, f"fsspec or its backend for this URL is not installed ({e})") from None
    except (OSError, ValueError) as e:
        raise VideoDecodeError(path, f"cannot read file ({type(e).__name__}: {e})") from None
    if not data:
        raise VideoDecodeError(path, "zero-byte file")
    return data


def _check_local_file(path: str) -> None:
    local = _local(path)
    if not os.path.exists(local):
        raise VideoDecodeError(path, "file not found")
    if os.path.isdir(local):
        raise VideoDecodeError(path, "is a directory, not a video file")
    if os.path.getsize(local) == 0:
        raise VideoDecodeError(path, "zero-byte file")


class VideoReader(ABC):
    """Random access to the frames of one video; opened lazily, re-opened after unpickling."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._handle: Any = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None
        return state

    def _opened(self) -> Any:
        if self._handle is None:
            try:
                self._handle = self._open()
            except VideoDecodeError:
                raise
            except Exception as e:  # decoders raise many unrelated types; all mean "unreadable"
                raise VideoDecodeError(self.path, f"cannot open ({type(e).__name__}: {e})") from None
        return self._handle

    def _check_indices(self, indices: Sequence[int]) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError(f"{self.path}: no frame indices requested")
        n = self.num_frames
        if idx.min() < 0 or idx.max() >= n:
            raise VideoDecodeError(self.path, f"frame index out of range [0, {n}): {idx.min()}..{idx.max()}")
        return idx

    def _source(self) -> Any:
        """What the decoding library opens: the local path, or a URL's bytes fetched through fsspec."""
        if is_url(self.path):
            return io.BytesIO(read_bytes(self.path))
        _check_local_file(self.path)
        return _local(self.path)

    @abstractmethod
    def _open(self) -> Any:
        """Open the underlying file and return the handle."""

    @property
    @abstractmethod
    def num_frames(self) -> int:
        """Number of frames."""

    @property
    @abstractmethod
    def fps(self) -> float:
        """Average frame rate (frames per second)."""

    @abstractmethod
    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` (0-based, any order, repeats allowed) as uint8 (T, H, W, 3) RGB."""

    def close(self) -> None:
        """Release the file handle (it is re-opened on next use)."""
        self._handle = None


class DecordReader(VideoReader):
    """decord ``VideoReader`` on CPU with ``num_threads`` decoding threads."""

    def __init__(self, path: str, num_threads: int = 1) -> None:
        super().__init__(path)
        self.num_threads = num_threads

    def _open(self) -> Any:
        import decord

        source = self._source()
        vr = decord.VideoReader(source, num_threads=self.num_threads, ctx=decord.cpu(0))
        if len(vr) == 0:
            raise VideoDecodeError(self.path, "no video frames")
        return vr

    @property
    def num_frames(self) -> int:
        return len(self._opened())

    @property
    def fps(self) -> float:
        return float(self._opened().get_avg_fps())

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        idx = self._check_indices(indices)
        vr = self._opened()
        try:
            vr.seek(0)
            frames = vr.get_batch(idx.tolist()).asnumpy()
        except Exception as e:  # decord raises DECORDError / RuntimeError / IndexError on broken streams
            raise VideoDecodeError(self.path, f"decoding failed ({type(e).__name__}: {e})") from None
        return frames


class PyAVReader(VideoReader):
    """PyAV (FFmpeg) reader: demuxes the packet table once, then seeks to the key frame before each needed frame.

    Frame k is the k-th frame in presentation order (the same numbering as decord), found by its timestamp.
    """

    def __init__(self, path: str, num_threads: int = 1) -> None:
        super().__init__(path)
        self.num_threads = num_threads

    def _open(self) -> Any:
        import av

        source = self._source()
        container = av.open(source, mode="r")
        if not container.streams.video:
            container.close()
            raise VideoDecodeError(self.path, "no video stream")
        stream = container.streams.video[0]
        stream.thread_count = self.num_threads
        pts, keys = [], []
        for packet in container.demux(stream):
            if packet.pts is not None and packet.size > 0:
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
        if not pts:
            container.close()
            raise VideoDecodeError(self.path, "no video frames")
        if stream.frames and len(pts) < stream.frames:
            container.close()
            raise VideoDecodeError(self.path, f"truncated: header lists {stream.frames} frames, {len(pts)} present")
        order = np.sort(np.asarray(pts, dtype=np.int64))
        rate = stream.average_rate or stream.guessed_rate
        return {
            "container": container,
            "stream": stream,
            "pts": order,
            "index_of_pts": {int(p): i for i, p in enumerate(order)},
            "key_index": np.searchsorted(order, np.sort(np.asarray(keys or [order[0]], dtype=np.int64))),
            "fps": float(rate) if rate else float(len(order) / max(float(container.duration or 1) / 1e6, 1e-6)),
        }

    def close(self) -> None:
        if self._handle is not None:
            self._handle["container"].close()
        super().close()

    @property
    def num_frames(self) -> int:
        return len(self._opened()["pts"])

    @property
    def fps(self) -> float:
        return self._opened()["fps"]

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        idx = self._check_indices(indices)
        h = self._opened()
        try:
            got = self._decode(h, sorted(set(idx.tolist())))
        except VideoDecodeError:
            raise
        except Exception as e:  # FFmpeg errors on truncated or corrupt streams
            raise VideoDecodeError(self.path, f"decoding failed ({type(e).__name__}: {e})") from None
        return np.stack([got[i] for i in idx.tolist()])

    def _decode(self, h: dict, wanted: list[int]) -> dict[int, np.ndarray]:
        """Decode ascending ``wanted`` frames, seeking forward to a key frame whenever that skips frames.

        Packets of frames that are not wanted are decoded with ``skip_frame = NONREF``: frames no other frame
        references are dropped by the decoder, which changes nothing in the frames that are decoded.
        """
        container, stream, index_of_pts = h["container"], h["stream"], h["index_of_pts"]
        ctx = stream.codec_context
        wanted_set = set(wanted)
        wanted_pts = {int(h["pts"][i]) for i in wanted}
        got: dict[int, np.ndarray] = {}
        packets, pos = None, None
        for target in wanted:
            if target in got:
                continue
            k = int(np.searchsorted(h["key_index"], target, side="right")) - 1
            key = int(h["key_index"][k]) if k >= 0 else 0  # before the first flagged key frame: the start
            if packets is None or pos is None or key > pos + 1:
                container.seek(int(h["pts"][key]), stream=stream, backward=True)
                packets = container.demux(stream)
            for packet in packets:
                ctx.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in wanted_pts else "NONREF"
                for frame in packet.decode():
                    i = index_of_pts.get(frame.pts)
                    if i is None:
                        continue
                    pos = i
                    if i in wanted_set and i not in got:
                        got[i] = frame.to_ndarray(format="rgb24")
                if target in got:
                    break
            if target not in got:
                raise VideoDecodeError(self.path, f"frame {target} could not be decoded (truncated or corrupt)")
        ctx.skip_frame = "DEFAULT"
        return got


class FrameFolderReader(VideoReader):
    """Extracted frames ``folder/<filename_tmpl.format(k + 1)>`` (frame k is file k + 1), read with PIL.

    ``num_frames`` comes from the list file when given, else from counting the folder's files; frame folders
    carry no rate, so ``fps`` is whatever the extraction used (default 30).
    """

    def __init__(self, path: str, num_frames: int | None = None,
                 filename_tmpl: str = DEFAULT_FILENAME_TMPL, fps: float = 30.0) -> None:
        super().__init__(path)
        self.filename_tmpl = filename_tmpl
        self._num_frames = num_frames
        self._fps = fps

    def _open(self) -> Any:
        if is_url(self.path):
            return self._num_frames
        local = _local(self.path)
        if not os.path.isdir(local):
            raise VideoDecodeError(self.path, "frame folder not found")
        if self._num_frames is not None:
            return self._num_frames
        count = len(os.listdir(local))
        if count == 0:
            raise VideoDecodeError(self.path, "empty frame folder")
        return count

    @property
    def num_frames(self) -> int:
        count = self._opened()
        if count is None:
            raise VideoDecodeError(self.path, "frame count is needed for remote frame folders")
        return count

    @property
    def fps(self) -> float:
        return self._fps

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        from PIL import Image

        idx = self._check_indices(indices)
        cache: dict[int, np.ndarray] = {}
        for k in set(idx.tolist()):
            name = f"{self.path.rstrip('/')}/{self.filename_tmpl.format(k + 1)}"
            try:
                with Image.open(io.BytesIO(read_bytes(name))) as img:
                    cache[k] = np.asarray(img.convert("RGB"))
            except VideoDecodeError as e:
                raise VideoDecodeError(self.path, f"frame {k} ({name}): {e.reason}") from None
            except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError…
                raise VideoDecodeError(self.path, f"frame {k} ({name}) is not a readable image ({e})") from None
        shapes = {a.shape for a in cache.values()}
        if len(shapes) > 1:
            raise VideoDecodeError(self.path, f"frames have different sizes {sorted(shapes)}")
        return np.stack([cache[k] for k in idx.tolist()])


def resolve_backend(backend: str) -> str:
    """``auto`` → ``decord`` when importable, else ``pyav``; unknown or uninstalled backends are an error."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown --video_backend {backend!r}; choose from {BACKENDS}")
    has_decord = importlib.util.find_spec("decord") is not None
    if backend == "auto":
        return "decord" if has_decord else "pyav"
    if backend == "decord" and not has_decord:
        raise ValueError("--video_backend decord: decord is not installed (use pyav or auto)")
    return backend


def open_video(path: str, backend: str = "auto", num_threads: int = 1) -> VideoReader:
    """A lazily opened reader for the video at ``path`` (local or fsspec URL) with the chosen backend."""
    name = resolve_backend(backend)
    reader_cls = DecordReader if name == "decord" else PyAVReader
    return reader_cls(str(path), num_threads=num_threads)
