"""Released weights by name (``models/releases.py``, ``models/hub.py``): every MODEL_ZOO.md checkpoint has its
pretrained tag and every tag a MODEL_ZOO.md row; a tag loads offline from a Hugging Face cache laid out as
huggingface_hub lays it out (``tests/hf_cache.py``), through the conversion of ``--finetune``, with the outputs of the
same file loaded by path, in ``timm.create_model``, ``run_class_finetuning.py --finetune`` and ``tools/predict.py
--checkpoint`` (real subprocesses); unknown tags and files absent from the cache are one-line errors."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import models  # noqa: F401  (registers the models with timm)
import run_class_finetuning
from entry_runs import REPO, environment
from hf_cache import make_hf_cache, offline_hub
from models import hub
from models.checkpoint import load_finetune_checkpoint
from models.releases import HF_HUB_ID, release_name
from tools.make_synthetic_dataset import make_dataset
from tools.predict import main as predict_main
from utils.errors import UsageError

pytestmark = pytest.mark.usefixtures("torch_backend")

TAG, FILE = "videomamba_tiny.k400_f8_res224", "videomamba_t16_k400_f8_res224.pth"
SMALL = dict(depth=2, embed_dim=32)  # the cached release: the real key layout, a small architecture
SMALL_CLIP = dict(num_frames=4, img_size=32)  # another clip size than the tag's 8 x 224 x 224


def _zoo_rows() -> list[dict[str, str]]:
    """The rows of every MODEL_ZOO.md table with a Checkpoint column, as {header: cell}."""
    rows, header = [], None
    for line in (REPO / "MODEL_ZOO.md").read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells if "Checkpoint" in cells else []
        elif header and set(cells) != {"---"}:
            rows.append(dict(zip(header, cells)))
    return rows


def _code(cell: str) -> str:
    return re.match(r"`([^`]+)`", cell).group(1)


def test_every_model_zoo_checkpoint_has_its_tag_and_every_tag_a_row():
    rows = _zoo_rows()
    assert len(rows) == 59
    zoo = {_code(row["Tag"]): row for row in rows}
    assert sorted(zoo) == sorted(timm.list_pretrained("videomamba*")) == sorted(hub.known_tags())
    for tag, row in zoo.items():
        cfg = timm.models.get_pretrained_cfg(tag)
        assert (cfg.hf_hub_id, cfg.hf_hub_filename) == (HF_HUB_ID, _code(row["Checkpoint"])), tag
        assert release_name(cfg.hf_hub_filename) == tag
        top1 = row.get("Top-1", row.get("Top-1 (IN-1K)"))
        assert cfg.top1 == (float(top1) if top1 else None), tag


@pytest.mark.parametrize("tag,classes,clip", [
    ("videomamba_tiny.k400_f8_res224", 400, (3, 8, 224, 224)),
    ("videomamba_small.ssv2_f16_res224to288", 174, (3, 16, 288, 288)),
    ("videomamba_middle.k400_mask_ft_f64_res224to384", 400, (3, 64, 384, 384)),
    ("videomamba_middle.breakfast_mask_ft_f32_res224", 10, (3, 32, 224, 224)),
    ("videomamba_tiny.coin_f64_res224", 180, (3, 64, 224, 224)),
    ("videomamba_small.in1k_res224to448to576", 1000, (3, 8, 576, 576)),
    ("videomamba_middle_pretrain.ssv2_mask_pt_f8_res224", 0, (3, 8, 224, 224)),
])
def test_tag_cfgs_read_classes_and_clip_size_from_the_file_name(tag, classes, clip):
    cfg = timm.models.get_pretrained_cfg(tag)
    assert (cfg.num_classes, cfg.input_size) == (classes, clip)
    assert (cfg.mean, cfg.std) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    assert cfg.license == "apache-2.0" and cfg.description


def test_untagged_names_keep_their_defaults_and_take_the_imagenet_tag():
    for size in ("tiny", "small", "middle"):
        assert timm.models.get_pretrained_cfg(f"videomamba_{size}").tag == "in1k_res224"
    assert timm.models.get_pretrained_cfg("videomamba_middle_pretrain").tag == "k400_mask_pt_f8_res224"
    model = timm.create_model("videomamba_tiny", depth=1)
    assert (model.num_classes, model.num_frames, model.patch_embed.img_size) == (1000, 8, (224, 224))
    assert model.pretrained_cfg["input_size"] == (3, 8, 224, 224) and model.pretrained_cfg["top1"] == 76.9
    tagged = timm.create_model("videomamba_small.ssv2_f16_res224to288", depth=1)  # the tag's clip and classes
    assert (tagged.num_classes, tagged.num_frames, tagged.patch_embed.img_size) == (174, 16, (288, 288))


@pytest.mark.parametrize("text,is_tag", [
    (TAG, True), ("videomamba_tiny.typo", True), ("resnet50.a1_in1k", True), ("ckpt.pth", False),
    ("videomamba_t16_k400_f8_res224.pth", False), ("weights.safetensors", False), ("dir/videomamba_tiny.k400", False),
    ("hf-hub:OpenGVLab/VideoMamba/x.pth", False), ("videomamba_tiny", False)])
def test_what_counts_as_a_tag(text, is_tag):
    assert hub.is_pretrained_tag(text) is is_tag


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict[str, Path]:
    """A random K400 classifier at the release's clip size (8 x 224 x 224, 400 classes; depth 2, width 32) saved as
    the official file (state dict under ``model`` with ``module.`` prefixes, ``args`` a Namespace), and a hub cache
    holding it under its release name."""
    root = tmp_path_factory.mktemp("release")
    torch.manual_seed(0)
    source = timm.create_model("videomamba_tiny", num_classes=400, **SMALL)
    with torch.no_grad():
        for param in source.parameters():
            param.add_(torch.randn_like(param) * 0.02)  # every tensor differs from a fresh model's
        source.head.weight.normal_(std=0.5)
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()},
                "args": argparse.Namespace(model="videomamba_tiny", lr=1e-3)}, root / FILE)
    make_hf_cache(root / "hub", HF_HUB_ID, {FILE: root / FILE})
    data = make_dataset(root / "data", num_train=2, num_val=1, num_test=2, size=32, frames=4)
    return {"file": root / FILE, "cache": root / "hub", "data": data, "root": root}


def _outputs(model: torch.nn.Module, frames: int, size: int) -> torch.Tensor:
    x = torch.randn(2, 3, frames, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x)


def test_create_model_by_tag_loads_the_cached_file_as_by_path(release, monkeypatch):
    offline_hub(monkeypatch, release["cache"])
    by_tag = timm.create_model(TAG, pretrained=True, **SMALL)
    assert (by_tag.num_frames, by_tag.patch_embed.img_size, by_tag.num_classes) == (8, (224, 224), 400)
    assert by_tag.pretrained_cfg["top1"] == 76.9 and by_tag.pretrained_cfg["hf_hub_filename"] == FILE
    saved = torch.load(release["file"], weights_only=False)["model"]
    assert set(by_tag.state_dict()) == {k[len("module."):] for k in saved}
    for key, value in by_tag.state_dict().items():
        assert torch.equal(value, saved[f"module.{key}"]), key

    # another clip size: position tables resampled exactly as for the file by path and as --finetune does
    small = timm.create_model(TAG, pretrained=True, **SMALL, **SMALL_CLIP)
    by_path = timm.create_model(TAG, pretrained=True, pretrained_cfg_overlay=dict(file=str(release["file"])),
                                **SMALL, **SMALL_CLIP)
    finetune = timm.create_model("videomamba_tiny", num_classes=400, **SMALL, **SMALL_CLIP)
    load_finetune_checkpoint(finetune, release["file"])
    want = _outputs(by_path, 4, 32)
    assert torch.equal(_outputs(small, 4, 32), want) and torch.equal(_outputs(finetune, 4, 32), want)
    assert small.pos_embed.shape == (1, 5, 32) and small.temporal_pos_embedding.shape == (1, 4, 32)

    # another class count: the head is dropped, the rest loaded (features as by path)
    torch.manual_seed(3)
    five = timm.create_model(TAG, pretrained=True, num_classes=5, **SMALL, **SMALL_CLIP)
    torch.manual_seed(3)
    five_by_path = timm.create_model(TAG, pretrained=True, num_classes=5,
                                     pretrained_cfg_overlay=dict(file=str(release["file"])), **SMALL, **SMALL_CLIP)
    assert five.head.weight.shape == (5, 32) and torch.equal(_outputs(five, 4, 32), _outputs(five_by_path, 4, 32))
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(five.forward_features(x), small.forward_features(x))


def test_nothing_is_downloaded_unless_weights_are_asked_for(monkeypatch, tmp_path):
    def no_download(*args, **kwargs):
        raise AssertionError("downloaded")

    monkeypatch.setattr(hub, "hf_hub_download", no_download)
    timm.create_model(TAG, depth=1)
    timm.create_model("videomamba_small.in1k_res224", pretrained=False, depth=1)
    hub.check_weights_arg(TAG, "--finetune")
    with pytest.raises(AssertionError, match="downloaded"):
        timm.create_model(TAG, pretrained=True, depth=1)


def test_unknown_tags_and_files_absent_from_the_cache_are_one_line_errors(monkeypatch, tmp_path):
    offline_hub(monkeypatch, tmp_path / "empty")
    closest = "closest: videomamba_tiny.k400_f8_res224"
    with pytest.raises(hub.UnknownTagError, match=rf"^videomamba_tiny\.k400_f8_res22: unknown pretrained tag; "
                                                  rf"{closest}"):
        timm.create_model("videomamba_tiny.k400_f8_res22")
    with pytest.raises(hub.UnknownTagError, match=rf"^--finetune videomamba_tiny\.k400_f8_res22: .*; {closest}"):
        hub.check_weights_arg("videomamba_tiny.k400_f8_res22", "--finetune")
    with pytest.raises(hub.UnknownTagError, match="^foo.bar: unknown pretrained tag; see timm.list_pretrained"):
        hub.fetch_checkpoint("foo.bar")
    with pytest.raises(hub.DownloadError) as absent:
        timm.create_model(TAG, pretrained=True, depth=1)
    message = str(absent.value)
    assert "\n" not in message and message.startswith(f"{TAG}: cannot get {HF_HUB_ID}/{FILE} from the Hugging Face")
    assert f"HF_HUB_OFFLINE is set and it is not in the cache {tmp_path / 'empty'}" in message
    assert f"hf download {HF_HUB_ID} {FILE}" in message

    def no_network(*args, **kwargs):
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub.\nCheck it.")

    monkeypatch.setattr(hub.hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hf_hub_download", no_network)
    with pytest.raises(hub.DownloadError, match=rf"^--checkpoint {TAG}: cannot get .*\(LocalEntryNotFoundError: An "
                                                r"error happened while trying to locate the file on the Hub\.\); "):
        hub.fetch_checkpoint(TAG, "--checkpoint")


def test_hf_hub_ids_name_a_file_in_a_repository(release, monkeypatch):
    offline_hub(monkeypatch, release["cache"])
    cached = hub.fetch_checkpoint(f"hf-hub:{HF_HUB_ID}/{FILE}")
    assert cached.read_bytes() == release["file"].read_bytes() and "snapshots" in cached.parts
    assert hub.fetch_checkpoint(f"hf-hub:{HF_HUB_ID}@main/{FILE}") == cached
    assert hub.parse_hf_hub_id("hf-hub:org/repo@v1/sub/w.pth") == ("org/repo", "v1", "sub/w.pth")
    with pytest.raises(UsageError, match=r"^--finetune hf-hub:OpenGVLab/VideoMamba: expected hf-hub:<org>/<repo>"):
        hub.check_weights_arg("hf-hub:OpenGVLab/VideoMamba", "--finetune")


def _finetune_eval_argv(release: dict[str, Path], weights: str, out: Path) -> list[str]:
    data = release["data"]
    return ["--model", "videomamba_tiny", "--depth", "2", "--embed_dim", "32", "--finetune", weights,
            "--nb_classes", "400", "--num_frames", "4", "--tubelet_size", "1", "--input_size", "32",
            "--short_side_size", "32", "--data_set", "Kinetics_sparse", "--data_path", str(data), "--prefix",
            str(data), "--device", "cpu", "--num_workers", "0", "--eval", "--no_auto_resume",
            "--disable_eval_during_finetuning", "--test_num_segment", "1", "--test_num_crop", "1", "--batch_size", "2",
            "--scan_backend", "torch", "--output_dir", str(out)]


def _hub_env(release: dict[str, Path]) -> dict[str, str]:
    return environment(HF_HUB_CACHE=str(release["cache"]), HF_HUB_OFFLINE="1")


def test_finetune_by_tag_in_the_entry_script_equals_the_file(release):
    """``--finetune <tag>`` in a subprocess; the reference, ``--finetune <file>``, in this process."""
    root = release["root"]
    argv = _finetune_eval_argv(release, TAG, root / "eval_tag")
    result = subprocess.run([sys.executable, "run_class_finetuning.py", *argv], cwd=REPO, env=_hub_env(release),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"from {TAG}" in (root / "eval_tag" / "train.log").read_text()
    parser = run_class_finetuning.get_args_parser()
    run_class_finetuning.main(parser.parse_args(_finetune_eval_argv(release, str(release["file"]), root / "eval_file")))
    tag = np.load(root / "eval_tag" / "test_predictions" / "predictions_rank0.npz")
    file = np.load(root / "eval_file" / "test_predictions" / "predictions_rank0.npz")
    assert tag.files == file.files
    for key in tag.files:
        assert np.array_equal(tag[key], file[key]), key


def _predict_argv(release: dict[str, Path], *checkpoint: str) -> list[str]:
    video = sorted((release["data"] / "videos").rglob("*.mp4"))[0]
    return [*checkpoint, "--video", str(video), "--num_frames", "4", "--input_size", "32", "--test_num_segment", "1",
            "--test_num_crop", "1", "--device", "cpu", "--json"]


def test_predict_by_tag_equals_the_file(release, capsys):
    """``tools/predict.py --checkpoint <tag>`` in a subprocess; the reference, ``--model ... --checkpoint <file>``,
    in this process."""
    result = subprocess.run([sys.executable, "tools/predict.py", *_predict_argv(release, "--checkpoint", TAG)],
                            cwd=REPO, env=_hub_env(release), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    by_tag = json.loads(result.stdout)
    assert predict_main(_predict_argv(release, "--model", "videomamba_tiny", "--checkpoint",
                                      str(release["file"]))) == 0
    by_file = json.loads(capsys.readouterr().out)
    assert by_tag["model"] == "videomamba_tiny" and by_tag["checkpoint"] == TAG
    assert by_tag["predictions"] == by_file["predictions"]
    assert len({row["index"] for row in by_tag["predictions"]}) == 5


def test_predict_errors_name_the_tag_or_ask_for_the_model(release, monkeypatch, capsys):
    offline_hub(monkeypatch, release["root"] / "empty")
    video = str(sorted((release["data"] / "videos").rglob("*.mp4"))[0])
    assert predict_main(["--checkpoint", "videomamba_tiny.k400_f8_res22", "--video", video]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        "predict.py: error: --checkpoint videomamba_tiny.k400_f8_res22: unknown pretrained tag; closest: ")
    assert predict_main(["--checkpoint", TAG, "--video", video, "--device", "cpu"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        f"predict.py: error: --checkpoint {TAG}: cannot get {HF_HUB_ID}/{FILE} from the Hugging Face hub")
    assert predict_main(["--checkpoint", str(release["file"]), "--video", video]) == 2
    assert "--model is needed with --checkpoint" in capsys.readouterr().err
