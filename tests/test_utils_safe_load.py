"""Loading weights never runs code from the file: every reader (``--finetune``, ``create_model(pretrained=True)``,
``--resume`` / ``--eval``, the inference tools) is weights-only; a file that would run code when unpickled (here: it
creates a marker file) is refused with one line naming ``--trust_checkpoint``, and runs only with it. What official
checkpoints hold besides tensors (an ``argparse.Namespace``, numpy values, under numpy 1's names too) and everything
our own training checkpoints hold load weights-only."""
from __future__ import annotations

import argparse
import zipfile

import numpy as np
import pytest
import timm
import torch

import models  # noqa: F401  (registers the models with timm)
from engines import checkpoint as ckpt
from models.checkpoint import load_finetune_checkpoint
from tools.checkpoint_model import load_model
from untrusted import save_code_running_checkpoint
from utils.safe_load import UntrustedCheckpointError, load_torch_file

pytestmark = pytest.mark.usefixtures("torch_backend")

TINY = dict(img_size=32, num_frames=4, depth=1, embed_dim=16, num_classes=3)


def _tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("videomamba_tiny", **TINY)


READERS = {
    "load_torch_file": lambda path, trust: load_torch_file(path, trust),
    "--finetune": lambda path, trust: load_finetune_checkpoint(_tiny(1), path, trust_checkpoint=trust),
    "create_model": lambda path, trust: timm.create_model("videomamba_tiny", pretrained=True, trust_checkpoint=trust,
                                                          pretrained_cfg_overlay=dict(file=str(path)), **TINY),
    "--resume": lambda path, trust: ckpt.read(path, trust),
    "tools --checkpoint": lambda path, trust: load_model("videomamba_tiny", path, trust_checkpoint=trust),
}


@pytest.mark.parametrize("reader", READERS)
def test_a_file_that_runs_code_is_refused_unless_trusted(tmp_path, reader):
    marker = tmp_path / "code_ran"
    path = tmp_path / "crafted.pth"
    save_code_running_checkpoint(path, _tiny().state_dict(), marker, epoch=0)
    with pytest.raises(UntrustedCheckpointError) as refused:
        READERS[reader](path, False)
    message = str(refused.value)
    assert "\n" not in message and str(path) in message and "--trust_checkpoint" in message
    assert "builtins.getattr" in message  # what the file would have called
    assert not marker.exists(), "the file's code ran"
    READERS[reader](path, True)
    assert marker.exists()  # trusted: loaded in full (which is what runs its code)


def _numpy1_names(src, dst):
    """``src`` rewritten as numpy 1.x writes numpy values (``numpy.core.multiarray`` instead of ``numpy._core``)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(item, data)


def test_official_checkpoint_contents_load_weights_only(tmp_path):
    state = _tiny().state_dict()
    official = {"model": state, "epoch": 3, "args": argparse.Namespace(lr=1e-3, batch_size=[8], mixup=None),
                "max_accuracy": np.float64(76.9), "n": np.int64(7), "table": np.arange(4, dtype=np.uint32)}
    torch.save(official, tmp_path / "official.pth")
    _numpy1_names(tmp_path / "official.pth", tmp_path / "numpy1.pth")
    assert "numpy.core.multiarray.scalar" in torch.serialization.get_unsafe_globals_in_checkpoint(
        tmp_path / "numpy1.pth")
    for name in ("official.pth", "numpy1.pth"):
        loaded = load_torch_file(tmp_path / name)
        assert loaded["args"] == official["args"] and loaded["max_accuracy"] == 76.9 and loaded["n"] == 7
        assert loaded["table"].dtype == np.uint32 and loaded["table"].tolist() == [0, 1, 2, 3]
        assert all(torch.equal(loaded["model"][k], v) for k, v in state.items())


def test_training_rng_state_loads_weights_only_and_restores(tmp_path):
    np.random.seed(5)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    torch.save({"rng": ckpt.rng_state()}, tmp_path / "rng.pth")
    want = (np.random.randn(3), torch.rand(2))
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "rng.pth") == []
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"])
    assert np.array_equal(np.random.randn(3), want[0]) and torch.equal(torch.rand(2), want[1])
    np.random.seed(6)
    legacy = {"python": ckpt.rng_state()["python"], "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    want = np.random.randn(3)
    ckpt.set_rng_state(legacy)  # checkpoints written before: numpy's tuple
    assert np.array_equal(np.random.randn(3), want)
