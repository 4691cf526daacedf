"""Readers: exact frames by index on real h264 files, both backends identical, frame folders, fsspec URLs,
pickling, and bad files (truncated, garbage, zero-byte, text, missing) failing fast with VideoDecodeError."""
import importlib.util
import multiprocessing as mp
import pickle

import numpy as np
import pytest
from PIL import Image

from datasets.readers import FrameFolderReader, VideoDecodeError, open_video, resolve_backend
from tools.make_synthetic_dataset import decode_frame_index, index_frames, motion_frames, write_video

HAS_DECORD = importlib.util.find_spec("decord") is not None
needs_decord = pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed on this platform")
BACKENDS = (pytest.param("decord", marks=needs_decord), "pyav")


@pytest.fixture(scope="module")
def index_video(tmp_path_factory):
    """120 index frames, 64×96, 25 fps, key frame every 16 frames (B-frames included)."""
    path = tmp_path_factory.mktemp("readers") / "index.mp4"
    write_video(path, index_frames(120, 64, 96), fps=25, gop=16)
    return str(path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_frames_by_index(index_video, backend):
    reader = open_video(index_video, backend)
    assert reader.num_frames == 120
    assert reader.fps == pytest.approx(25.0)
    wanted = [119, 0, 5, 5, 64, 17, 16, 15, 118, 33]
    frames = reader.get_frames(wanted)
    assert frames.dtype == np.uint8 and frames.shape == (10, 64, 96, 3)
    assert decode_frame_index(frames) == wanted


@needs_decord
def test_backends_return_identical_frames(tmp_path):
    path = tmp_path / "motion.mp4"
    write_video(path, motion_frames(2, 48, 64, np.random.default_rng(0)), fps=30, gop=12)
    wanted = [0, 3, 11, 12, 13, 30, 47]
    a = open_video(str(path), "decord").get_frames(wanted)
    b = open_video(str(path), "pyav").get_frames(wanted)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[-1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_pickled_reader_reopens(index_video, backend):
    reader = open_video(index_video, backend)
    assert reader.num_frames == 120
    clone = pickle.loads(pickle.dumps(reader))
    assert decode_frame_index(clone.get_frames([77])) == [77]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fsspec_memory_url(index_video, backend):
    fsspec = pytest.importorskip("fsspec")
    with open(index_video, "rb") as src, fsspec.open(f"memory://readers_{backend}/v.mp4", "wb") as dst:
        dst.write(src.read())
    reader = open_video(f"memory://readers_{backend}/v.mp4", backend)
    assert decode_frame_index(reader.get_frames([3, 99])) == [3, 99]
    with pytest.raises(VideoDecodeError, match="file not found"):
        open_video("memory://readers_missing/none.mp4", backend).num_frames


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_index(index_video, backend):
    with pytest.raises(VideoDecodeError, match=r"out of range \[0, 120\)"):
        open_video(index_video, backend).get_frames([0, 120])


def test_frame_folder_reader(tmp_path):
    frames = index_frames(12, 32, 48)
    for k, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"img_{k + 1:05}.png")
    reader = FrameFolderReader(str(tmp_path), None, "img_{:05}.png")
    assert reader.num_frames == 12
    assert decode_frame_index(reader.get_frames([11, 0, 4])) == [11, 0, 4]
    with pytest.raises(VideoDecodeError, match="frame 12"):
        FrameFolderReader(str(tmp_path), 20, "img_{:05}.png").get_frames([12])
    with pytest.raises(VideoDecodeError, match="frame folder not found"):
        FrameFolderReader(str(tmp_path / "nope")).num_frames


def test_backend_names():
    assert resolve_backend("auto") == ("decord" if HAS_DECORD else "pyav")
    with pytest.raises(ValueError, match="--video_backend"):
        resolve_backend("opencv")


def _decode_in_child(path, backend, queue):
    try:
        reader = open_video(path, backend)
        reader.get_frames([0, reader.num_frames - 1])
        queue.put("decoded")
    except VideoDecodeError as e:
        queue.put(f"VideoDecodeError: {e.reason}")
    except Exception as e:  # reported so the test names the wrong type
        queue.put(f"{type(e).__name__}: {e}")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, index_video):
    root = tmp_path_factory.mktemp("bad")
    data = open(index_video, "rb").read()
    write_video(root / "faststart.mp4", index_frames(120, 64, 96), fps=25, gop=16, faststart=True)
    fast = (root / "faststart.mp4").read_bytes()
    files = {
        "truncated": data[: len(data) // 2],
        "truncated_faststart": fast[: len(fast) // 2],
        "garbage": np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes(),
        "zero_byte": b"",
        "text": b"this is not a video\n" * 50,
        "header_only": data[:64],
    }
    for name, content in files.items():
        (root / f"{name}.mp4").write_bytes(content)
    return root, sorted(files) + ["missing"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_files_fail_fast_without_crashing(bad_files, backend):
    root, names = bad_files
    ctx = mp.get_context("fork")
    for name in names:
        queue = ctx.Queue()
        child = ctx.Process(target=_decode_in_child, args=(str(root / f"{name}.mp4"), backend, queue))
        child.start()
        child.join(timeout=20)
        hung = child.is_alive()
        if hung:
            child.kill()
        assert not hung, f"{backend} hung on {name}"
        assert child.exitcode == 0, f"{backend} crashed on {name} (exit code {child.exitcode})"
        result = queue.get(timeout=5)
        assert result.startswith("VideoDecodeError"), f"{backend} on {name}: {result}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_index_sets_match_the_encoded_indices(tmp_path, backend):
    """Long key-frame interval with B-frames: PyAV's seek + skipped non-reference frames must stay exact."""
    path = tmp_path / "long_gop.mp4"
    write_video(path, index_frames(200, 32, 32), fps=30, gop=120)
    reader = open_video(str(path), backend)
    assert reader.fps == pytest.approx(30.0)  # the container's rate (the index video above has 25)
    rng = np.random.default_rng(0)
    for _ in range(15):
        wanted = rng.integers(0, 200, int(rng.integers(1, 10))).tolist()
        assert decode_frame_index(reader.get_frames(wanted)) == wanted
    assert decode_frame_index(reader.get_frames(list(range(200)))) == list(range(200))
