"""Pre-flight check of a video data set: find every unreadable or suspicious video before a long training job.

Each input is a list file (the training formats of ``datasets/lists.py``, joined to ``--prefix`` and split by
``--split`` exactly as in training) or a folder (every video file under it). Every distinct video is opened with
``--video_backend`` through ``datasets/readers.py`` in ``--num_workers`` processes: frame count, fps and duration
are read, and the frames of the ``--test_num_segment`` test views (``datasets/sampling.py``) plus the last frame
are decoded. Problems, one line each (``list:line: path: problem: reason``):

  missing, empty (zero bytes), not_video (no video container or stream), truncated (the file ends inside the
  container, or late frames cannot be decoded), no_frames, undecodable (anything else the backend cannot read;
  a decoder crash too), duration (the list's duration column disagrees with frames / fps by more than
  ``--duration_tolerance`` seconds), malformed (a list line that does not parse), label (with ``--nb_classes``: a
  class label outside 0 .. nb_classes - 1, which training refuses).

The cleaned list (``--out``) holds the lines whose video is readable, byte-for-byte and in order; ``duration``
lines decode and are kept. Exit status: 0 all good, 1 anything reported, 2 usage error.
Example: python tools/check_videos.py data/k400/train.csv data/k400/val.csv --prefix /data/k400 --split , \\
             --out clean/ --num_workers 8 --json report.json
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import struct
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python tools/x.py` from the repo root

from tqdm import tqdm

from datasets.lists import ListEntry, ListFileError, ListLine, guess_format, label_error, read_list_lines
from datasets.readers import BACKENDS, PyAVReader, VideoDecodeError, is_url, open_video, resolve_backend
from datasets.sampling import VIDEO_SAMPLINGS, clip_indices
from tools.build_list import VIDEO_EXTENSIONS
from utils.errors import UsageError

logger = logging.getLogger(__name__)

PROBLEMS = ("missing", "empty", "not_video", "truncated", "no_frames", "undecodable", "duration", "malformed",
            "label")
LIST_FORMATS = ("auto", "classification", "regression", "trimmed", "paths")
# First bytes of the containers FFmpeg reads for video data sets (offset, signature).
_SIGNATURES = {
    "matroska/webm": [(0, b"\x1aE\xdf\xa3")], "avi": [(0, b"RIFF"), (8, b"AVI ")], "flv": [(0, b"FLV")],
    "mpeg-ps": [(0, b"\x00\x00\x01\xba")], "ogg": [(0, b"OggS")], "asf/wmv": [(0, b"0&\xb2u\x8ef\xcf\x11")],
}
HEAD_BYTES = 192
_MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"}
_DECORD_LOCATION = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")  # "[04:23:00] src/video/x.cc:83: "
# Reasons raised by datasets/readers.py's PyAV reader, in the order they are tried.
_PYAV_REASONS = (("truncated", "truncated"), ("no video frames", "no_frames"), ("no video stream", "not_video"))


@dataclass(frozen=True)
class ScanConfig:
    """What to decode from every video: the test views of ``sampling`` plus the last frame."""

    backend: str = "pyav"
    sampling: str = "sparse"
    num_frames: int = 16
    num_segments: int = 4
    rate: int = 4


def tidy(reason: str) -> str:
    """A decoder's message without decord's clock time and source locations (reports must be reproducible)."""
    return _DECORD_LOCATION.sub("", reason)


@dataclass(frozen=True)
class VideoReport:
    """One distinct video: its problem (None when readable) and what could be read of it."""

    path: str
    problem: str | None = None
    reason: str = ""
    num_frames: int | None = None
    fps: float | None = None

    @property
    def duration(self) -> float | None:
        """Seconds: frames / fps, when both are known."""
        return self.num_frames / self.fps if self.num_frames and self.fps else None


@dataclass
class Source:
    """One input (a list file or a folder), its entries and, after the scan, one report row per line."""

    name: str
    lines: list[ListLine]
    is_folder: bool = False
    regression: bool = False
    rows: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------- diagnosis of one file
def read_head(path: str) -> bytes:
    """The first ``HEAD_BYTES`` bytes of a local file (enough for ``container_kind``)."""
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)


def container_kind(head: bytes) -> str | None:
    """The container named by a file's first bytes (``mp4`` for the ISO/QuickTime family), or None."""
    if head[4:8] in _MP4_BOXES:
        return "mp4"
    for name, parts in _SIGNATURES.items():
        if all(head[at:at + len(sig)] == sig for at, sig in parts):
            return name
    return "mpeg-ts" if head[:1] == head[188:189] == b"G" else None  # a sync byte every 188-byte packet


def mp4_truncation(path: str) -> str | None:
    """Why the top-level boxes of an mp4/mov file show it to be cut short (None when they are complete).

    Each box starts with its 32-bit size (1: a 64-bit size follows; 0: up to the end of the file). A box running
    past the end of the file, or no ``moov`` index box at all, means the file was not written or copied to the end.
    Anything the walk cannot judge (a few bytes of trailing padding, an invalid size) gives None.
    """
    size, offset, seen = os.path.getsize(path), 0, set()
    with open(path, "rb") as f:
        while offset + 8 <= size:
            f.seek(offset)
            header = f.read(16)
            box_size, kind = struct.unpack(">I4s", header[:8])
            if box_size == 1 and len(header) == 16:
                box_size = struct.unpack(">Q", header[8:16])[0]
            elif box_size == 0:
                box_size = size - offset
            if box_size < 8:
                return None
            if offset + box_size > size:
                return (f"box {kind.decode('latin-1')!r} at byte {offset} needs {box_size} bytes, "
                        f"the file has {size - offset} left")
            seen.add(kind)
            offset += box_size
    return None if b"moov" in seen else "no 'moov' index box (the file was not written to the end)"


def diagnose(path: str, error: VideoDecodeError, backend: str) -> tuple[str, str]:
    """(problem, reason) for a video the backend cannot open, explained with the container and the PyAV reader."""
    head = read_head(path)
    kind = container_kind(head)
    if kind is None:
        return "not_video", f"no known video container (file starts with {head[:12]!r}); {backend}: {error.reason}"
    cut = mp4_truncation(path) if kind == "mp4" else None
    if cut is not None:
        return "truncated", f"{cut}; {backend}: {error.reason}"
    second = error
    if backend != "pyav":
        reader = PyAVReader(path)
        try:
            reader.num_frames
        except VideoDecodeError as e:
            second = e
        else:
            return "undecodable", f"{backend}: {error.reason} (PyAV opens it: try --video_backend pyav)"
        finally:
            reader.close()
    for text, problem in _PYAV_REASONS:
        if text in second.reason:
            return problem, f"{kind}: {second.reason}" + (f"; {backend}: {error.reason}" if second is not error else "")
    return "undecodable", f"{kind}: {error.reason}"


def view_indices(num_video_frames: int, config: ScanConfig) -> list[int]:
    """Sorted distinct frames of every test view of ``config`` plus the last frame."""
    wanted = {num_video_frames - 1}
    for segment in range(config.num_segments):
        wanted.update(clip_indices(config.sampling, "test", num_video_frames, config.num_frames, segment=segment,
                                   num_segments=config.num_segments, rate=config.rate))
    return sorted(wanted)


def check_video(path: str, config: ScanConfig) -> VideoReport:
    """Open, measure and decode the test-view frames of one video; never raises for a bad file."""
    try:
        report = _inspect(path, config)
    except OSError as e:  # e.g. no read permission: our own reads of the file fail
        report = VideoReport(path, "undecodable", f"cannot read the file ({type(e).__name__}: {e})")
    return replace(report, reason=tidy(report.reason))


def _inspect(path: str, config: ScanConfig) -> VideoReport:
    local = not is_url(path)
    if local:
        if not os.path.exists(path):
            return VideoReport(path, "missing", "file not found")
        if os.path.isdir(path):
            return VideoReport(path, "not_video", "a folder, not a video file")
        if os.path.getsize(path) == 0:
            return VideoReport(path, "empty", "zero-byte file")
    reader = open_video(path, config.backend)
    num_frames = fps = None
    try:
        num_frames, fps = reader.num_frames, reader.fps
        if not fps > 0 or not math.isfinite(fps):
            return VideoReport(path, "undecodable", f"invalid frame rate {fps}", num_frames, None)
        indices = view_indices(num_frames, config)
        for start in range(0, len(indices), config.num_frames):  # ascending chunks: one pass, bounded memory
            reader.get_frames(indices[start:start + config.num_frames])
    except VideoDecodeError as e:
        if not local:
            return VideoReport(path, "undecodable", e.reason, num_frames, fps)
        if num_frames is None:
            return VideoReport(path, *diagnose(path, e, config.backend))
        return VideoReport(path, *_late_frames(path, config.backend, e), num_frames, fps)
    finally:
        reader.close()
    return VideoReport(path, None, "", num_frames, fps)


def _late_frames(path: str, backend: str, error: VideoDecodeError) -> tuple[str, str]:
    """The video opened but frames failed: truncated when the file is cut short or its first frame decodes.

    The first frame is tried with the PyAV reader, which decodes in order: decord's threaded decoder reads ahead,
    so whether it reaches a corrupt packet before returning frame 0 varies from run to run.
    """
    cut = mp4_truncation(path) if container_kind(read_head(path)) == "mp4" else None
    if cut is not None:
        return "truncated", f"{cut}; {backend}: {error.reason}"
    reader = PyAVReader(path)
    try:
        reader.get_frames([0])
    except VideoDecodeError:
        return "undecodable", error.reason
    finally:
        reader.close()
    return "truncated", f"frame 0 decodes, later frames do not ({error.reason})"


# ---------------------------------------------------------------- the scan: worker processes, crash isolation
def _run_isolated(path: str, check: Callable[[str], VideoReport]) -> VideoReport:
    """``check(path)`` in its own process, so that a decoder crash becomes a report instead of killing the scan."""
    with ProcessPoolExecutor(max_workers=1) as pool:
        try:
            return pool.submit(check, path).result()
        except BrokenProcessPool:
            return VideoReport(path, "undecodable", "the decoder crashed on this file (its process died)")


def scan(paths: Sequence[str], check: Callable[[str], VideoReport], num_workers: int,
         progress: tqdm | None = None) -> dict[str, VideoReport]:
    """``{path: check(path)}`` computed in ``num_workers`` processes.

    At most 2·``num_workers`` files are in flight; when a worker dies (a decoder crash), those files are re-checked
    one process each, the culprit is reported as ``undecodable`` and the scan goes on with a fresh pool.
    """
    results: dict[str, VideoReport] = {}
    todo = list(reversed(paths))
    while todo:
        in_flight: dict[Future, str] = {}
        try:
            with ProcessPoolExecutor(max_workers=num_workers) as pool:
                while todo or in_flight:
                    while todo and len(in_flight) < 2 * num_workers:
                        path = todo.pop()
                        in_flight[pool.submit(check, path)] = path
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        results[in_flight.pop(future)] = future.result()
                        if progress is not None:
                            progress.update()
        except BrokenProcessPool:
            for future, path in in_flight.items():
                if future.done() and not future.cancelled() and future.exception() is None:
                    results[path] = future.result()  # finished before the crash
                else:
                    logger.warning("a worker died (decoder crash?); re-checking %s in a process of its own", path)
                    results[path] = _run_isolated(path, check)
                if progress is not None:
                    progress.update()
    return {path: results[path] for path in paths}


# ---------------------------------------------------------------- inputs and reports
def read_source(path: Path, fmt: str, split: str, prefix: str) -> Source:
    """The entries of one input: a list file's lines, or every video file under a folder (sorted)."""
    if path.is_dir():
        videos = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        lines = [ListLine(k + 1, os.fsencode(v.relative_to(path)) + b"\n", ListEntry(str(v), 0))
                 for k, v in enumerate(videos)]
        return Source(str(path), lines, is_folder=True)
    if not path.is_file():
        raise UsageError(f"{path}: list file not found")
    regression = fmt == "regression"
    if fmt == "auto":
        fmt, regression = guess_format(path.read_bytes().decode("utf-8", "replace").splitlines(), split)
        logger.info("%s: %s list%s", path, fmt, " (regression)" if regression else "")
    return Source(str(path), read_list_lines(path, fmt, split, prefix, regression), regression=regression)


def report_rows(source: Source, videos: dict[str, VideoReport], tolerance: float,
                num_classes: int | None = None) -> list[dict]:
    """One row per line: ``{"line", "path", "problem", "reason", "keep"}`` plus the video's measurements; with
    ``num_classes``, a class label it does not cover is the line's problem (``label``), whatever the video."""
    rows = []
    for line in source.lines:
        if line.entry is None:
            rows.append({"line": line.number, "path": None, "problem": "malformed", "reason": line.error,
                         "keep": False})
            continue
        video = videos[line.entry.path]
        row = {"line": line.number, "path": line.entry.path, "problem": video.problem, "reason": video.reason,
               "keep": video.problem is None, "num_frames": video.num_frames, "fps": video.fps,
               "duration": video.duration}
        listed = line.entry.duration
        wrong_label = None if source.is_folder or source.regression else label_error(line.entry.label, num_classes)
        if wrong_label:
            row.update(problem="label", reason=wrong_label, keep=False)
        elif video.problem is None and listed is not None and abs(video.duration - listed) > tolerance:
            row.update(problem="duration", reason=f"the list says {listed:g} s, the video lasts {video.duration:.3f} s "
                                                  f"({video.num_frames} frames at {video.fps:g} fps)")
        rows.append(row)
    return rows


def format_problem(source: Source, row: dict) -> str:
    """``list:line: path: problem: reason`` (folders: ``path: problem: reason``)."""
    where = "" if source.is_folder else f"{source.name}:{row['line']}: "
    what = f"{row['path']}: " if row["path"] is not None else ""
    return f"{where}{what}{row['problem']}: {row['reason']}"


def summary_table(sources: Sequence[Source]) -> str:
    """Lines, readable lines and the count of each problem per input, and the total."""
    header = ["input", "lines", "readable"] + list(PROBLEMS)
    table = []
    for source in sources:
        counts = [len(source.rows), sum(r["keep"] for r in source.rows)]
        table.append([source.name] + counts + [sum(r["problem"] == p for r in source.rows) for p in PROBLEMS])
    if len(table) > 1:
        table.append(["total"] + [sum(row[k] for row in table) for k in range(1, len(header))])
    widths = [max(len(str(v)) for v in column) for column in zip(header, *table)]
    return "\n".join("  ".join(str(v).ljust(w) if k == 0 else str(v).rjust(w) for k, (v, w) in
                               enumerate(zip(values, widths))) for values in [header] + table)


def clean_targets(sources: Sequence[Source], out: Path) -> list[Path]:
    """Where each input's cleaned list goes: ``out`` itself for one list file, else ``out/<input name>``."""
    many = len(sources) > 1 or out.is_dir()
    names = [Path(s.name).name + (".txt" if s.is_folder else "") for s in sources]
    targets = [out / n if many else out for n in names]
    if len(set(targets)) < len(targets):
        raise UsageError(f"--out {out}: two inputs have the same file name {names}; check them separately")
    for source, target in zip(sources, targets):
        if not source.is_folder and target.resolve() == Path(source.name).resolve():
            raise UsageError(f"--out {target} would overwrite the input list")
    return targets


def write_clean(source: Source, target: Path) -> None:
    """The kept lines of ``source``, byte-for-byte and in order (folders: readable paths relative to the folder)."""
    target.write_bytes(b"".join(line.raw for line, row in zip(source.lines, source.rows) if row["keep"]))


# ---------------------------------------------------------------- command line
def get_parser() -> argparse.ArgumentParser:
    """Command-line flags; the data flags keep the names of ``run_class_finetuning.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Problems: " + ", ".join(PROBLEMS) + ". Exit status 0 / 1 / 2: all good / "
                                            "problems found / usage error.")
    parser.add_argument("inputs", nargs="+", metavar="LIST", help="list files, or folders of videos")
    parser.add_argument("--prefix", default="", help="folder the list paths are relative to (as in training)")
    parser.add_argument("--split", default=" ", help="list field separator (as in training; launchers use ',')")
    parser.add_argument("--format", choices=LIST_FORMATS, default="auto",
                        help="list format (auto: 3 fields trimmed, or paths when the third is negative as in the "
                             "pretraining lists' 'path 0 -1'; 2 fields classification or regression)")
    parser.add_argument("--out", type=Path, default=None,
                        help="cleaned list (a file for one input, a folder for several)")
    parser.add_argument("--json", type=Path, default=None, help="write the full report (every line) as JSON")
    parser.add_argument("--num_workers", type=int, default=1, help="decoding processes")
    parser.add_argument("--video_backend", "--backend", dest="backend", choices=BACKENDS, default="auto",
                        help="decoder, as in training (auto: decord when installed, else PyAV)")
    parser.add_argument("--sampling", choices=VIDEO_SAMPLINGS, default="sparse", help="test-view frame sampling")
    parser.add_argument("--num_frames", type=int, default=16, help="frames per test view")
    parser.add_argument("--test_num_segment", type=int, default=4, help="temporal test views")
    parser.add_argument("--sampling_rate", type=int, default=4, help="frame stride of dense sampling")
    parser.add_argument("--duration_tolerance", type=float, default=1.0,
                        help="seconds the list's duration column may differ from frames / fps")
    parser.add_argument("--nb_classes", type=int, default=None,
                        help="report class labels outside 0 .. nb_classes - 1 (as training would refuse them)")
    return parser


def _validate(args: argparse.Namespace) -> ScanConfig:
    if min(args.num_workers, args.num_frames, args.test_num_segment, args.sampling_rate) < 1:
        raise UsageError("--num_workers, --num_frames, --test_num_segment and --sampling_rate must be >= 1")
    if args.nb_classes is not None and args.nb_classes < 1:
        raise UsageError(f"--nb_classes must be >= 1, got {args.nb_classes}")
    if not args.duration_tolerance >= 0:
        raise UsageError(f"--duration_tolerance must be >= 0, got {args.duration_tolerance}")
    try:
        backend = resolve_backend(args.backend)
    except ValueError as e:
        raise UsageError(str(e)) from None
    logger.info("decoding with %s (--video_backend %s) in %d processes", backend, args.backend, args.num_workers)
    return ScanConfig(backend, args.sampling, args.num_frames, args.test_num_segment, args.sampling_rate)


def run(args: argparse.Namespace) -> tuple[list[Source], dict[str, VideoReport]]:
    """Read the inputs, scan every distinct video once, fill each source's rows and write the outputs."""
    config = _validate(args)
    sources = [read_source(Path(p), args.format, args.split, args.prefix) for p in args.inputs]
    targets = clean_targets(sources, args.out) if args.out is not None else []
    for folder in {t.parent for t in targets} | ({args.json.parent} if args.json is not None else set()):
        try:  # before the scan, not after hours of it
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create the output folder {folder} ({e.strerror})") from None
    paths = list(dict.fromkeys(line.entry.path for s in sources for line in s.lines if line.entry is not None))
    with tqdm(total=len(paths), desc="checking", unit="video", file=sys.stderr) as bar:
        videos = scan(paths, partial(check_video, config=config), args.num_workers, bar)
    for source in sources:
        source.rows = report_rows(source, videos, args.duration_tolerance, args.nb_classes)
    for source, target in zip(sources, targets):
        write_clean(source, target)
        logger.info("wrote %d of %d lines to %s", sum(r["keep"] for r in source.rows), len(source.rows), target)
    if args.json is not None:
        report = {"config": asdict(config), "inputs": [{"input": s.name, "rows": s.rows} for s in sources],
                  "videos": [asdict(v) | {"duration": v.duration} for v in videos.values()]}
        args.json.write_text(json.dumps(report, indent=1))
    return sources, videos


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: problems and the summary table on stdout; 0 all good, 1 problems, 2 usage error."""
    args = get_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        sources, _ = run(args)
    except (UsageError, ListFileError) as err:
        print(f"check_videos.py: error: {err}", file=sys.stderr)
        return 2
    bad = [f"{s.name}: no {'video files' if s.is_folder else 'entries'}" for s in sources if not s.rows]
    bad += [format_problem(s, r) for s in sources for r in s.rows if r["problem"] is not None]
    print("\n".join(bad + ([""] if bad else []) + [summary_table(sources)]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
