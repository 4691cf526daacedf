"""CLIP converter: tiny Hugging Face, OpenAI TorchScript and open_clip sources give our teacher their features."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

from models.clip_teacher import CLIPTeacher, load_clip_state_dict, read_clip_weights
from tools.convert_clip import convert_file, convert_state_dict, main

TINY = dict(input_resolution=32, patch_size=16, width=64, layers=2, heads=2, output_dim=32)
NUM_TENSORS = 5 + 12 * 2 + 3  # embeddings + ln_pre, 12 per block, ln_post + proj


def _perturb(model: nn.Module) -> nn.Module:
    """Add seeded noise to every parameter so LayerNorms are not identity and swapped tensors show."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def _hf_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                            image_size=32, patch_size=16, projection_dim=32, hidden_act="quick_gelu")


@pytest.fixture(scope="module")
def hf_model() -> CLIPVisionModelWithProjection:
    torch.manual_seed(0)
    return _perturb(CLIPVisionModelWithProjection(_hf_config()))


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "clip-tiny"
    hf_model.save_pretrained(folder, safe_serialization=True)
    return folder


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    """OpenAI CLIP residual block, sequence-first (L, N, C) as in OpenAI's code."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            [("c_fc", nn.Linear(width, 4 * width)), ("gelu", _QuickGELU()), ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[_Block(width, heads) for _ in range(layers)])


class _Visual(nn.Module):
    """OpenAI CLIP image encoder returning projected patch tokens (N, HW, output_dim)."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.positional_embedding = nn.Parameter(torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, output_dim) / width ** 0.5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv1(image).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, x.shape[2])
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        x = self.transformer.resblocks(x.transpose(0, 1)).transpose(0, 1)
        return self.ln_post(x[:, 1:]) @ self.proj


class _OpenAICLIP(nn.Module):
    """Image half of an OpenAI CLIP model: ``visual.*`` plus the ``logit_scale`` the real archive also holds."""

    def __init__(self) -> None:
        super().__init__()
        self.visual = _Visual(**TINY)
        self.logit_scale = nn.Parameter(torch.tensor(4.6))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)


@pytest.fixture(scope="module")
def openai_model() -> _OpenAICLIP:
    torch.manual_seed(2)
    return _perturb(_OpenAICLIP())


def _teacher_patch_features(weights: Path | dict, frames: torch.Tensor, config: dict | None = None) -> torch.Tensor:
    """Our teacher (no L2 norm) on frames (N, 3, H, W) as a one-frame-per-video batch -> (N, HW, output_dim)."""
    teacher = CLIPTeacher(**(config or TINY), clip_norm_type="none").freeze()
    load_clip_state_dict(teacher, read_clip_weights(weights) if isinstance(weights, Path) else weights)
    with torch.no_grad():
        return teacher(frames.unsqueeze(2))[0]


def _hf_patch_features(model: CLIPVisionModelWithProjection, frames: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        hidden = model.vision_model(pixel_values=frames).last_hidden_state[:, 1:]
        return model.vision_model.post_layernorm(hidden) @ model.visual_projection.weight.t()


def test_hf_folder_converts_to_matching_teacher(hf_model, hf_dir, tmp_path, capsys) -> None:
    out = tmp_path / "teacher.pth"
    main(["--src", str(hf_dir), "--arch", "custom", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "Hugging Face folder, Hugging Face names" in printed and f"wrote {NUM_TENSORS} tensors" in printed
    assert "'width': 64" in printed and "'heads': 2" in printed and "'layers': 2" in printed
    frames = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(_teacher_patch_features(out, frames), _hf_patch_features(hf_model, frames),
                               atol=1e-5, rtol=1e-5)


def test_bare_safetensors_and_qkv_layout(hf_model, hf_dir, tmp_path) -> None:
    report = convert_file(hf_dir / "model.safetensors", TINY, tmp_path / "t.pth")
    assert (report["container"], report["naming"], report["num_tensors"]) == ("safetensors file", "Hugging Face", 32)
    sd = read_clip_weights(tmp_path / "t.pth")
    attn = hf_model.vision_model.encoder.layers[1].self_attn
    expected = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    torch.testing.assert_close(sd["transformer.resblocks.1.attn.in_proj_weight"], expected.detach())
    torch.testing.assert_close(sd["proj"], hf_model.visual_projection.weight.detach().t())
    assert sd["conv1.weight"].shape == (64, 3, 1, 16, 16)
    frames = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_teacher_patch_features(sd, frames), _hf_patch_features(hf_model, frames),
                               atol=1e-5, rtol=1e-5)


def test_openai_torchscript_archive(openai_model, tmp_path) -> None:
    archive = tmp_path / "ViT-tiny.pt"
    torch.jit.save(torch.jit.trace(openai_model, torch.randn(1, 3, 32, 32)), str(archive))
    report = convert_file(archive, TINY, tmp_path / "t.pth")
    assert report["container"] == "TorchScript archive" and report["naming"] == "OpenAI/open_clip"
    assert report["num_ignored"] == 1  # logit_scale
    frames = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = torch.jit.load(str(archive))(frames)
    torch.testing.assert_close(_teacher_patch_features(tmp_path / "t.pth", frames), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["open_clip", "openai_plain"])
def test_open_clip_and_plain_state_dicts(openai_model, tmp_path, layout: str) -> None:
    sd = openai_model.state_dict()
    if layout == "open_clip":  # DDP training checkpoint as open_clip writes it
        sd = {"epoch": 3, "name": "ViT-tiny", "state_dict": {f"module.{k}": v for k, v in sd.items()}}
    torch.save(sd, tmp_path / "src.pt")
    report = convert_file(tmp_path / "src.pt", TINY, tmp_path / "t.pth")
    assert report["container"].startswith("checkpoint with nested" if layout == "open_clip" else "plain state dict")
    frames = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = openai_model(frames)
    torch.testing.assert_close(_teacher_patch_features(tmp_path / "t.pth", frames), expected, atol=1e-5, rtol=1e-5)


def test_wrong_architecture_names_the_tensor(hf_dir, tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match=r"clip-tiny: weights do not fit ViT-B/16: class_embedding has shape "
                                         r"\(64,\), ViT-B/16 expects \(768,\)"):
        convert_file(hf_dir, "ViT-B/16", tmp_path / "t.pth")
    with pytest.raises(ValueError, match=r"missing \['transformer\.resblocks\.2\."):
        convert_file(hf_dir, {**TINY, "layers": 3}, tmp_path / "t.pth")
    with pytest.raises(ValueError, match="num_attention_heads=2, custom has 4"):
        convert_file(hf_dir, {**TINY, "heads": 4}, tmp_path / "t.pth")
    with pytest.raises(SystemExit) as exit_info:
        main(["--src", str(hf_dir), "--arch", "ViT-L/14", "--out", str(tmp_path / "t.pth")])
    assert exit_info.value.code == 2
    assert "ViT-L/14 expects (1024,)" in capsys.readouterr().err
    assert not (tmp_path / "t.pth").exists()


def test_files_that_are_not_clip_models(tmp_path) -> None:
    torch.save({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match=r"resnet\.pth: not a CLIP model.*fc\.bias"):
        convert_file(tmp_path / "resnet.pth", "ViT-B/16", tmp_path / "t.pth")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt: not a readable checkpoint"):
        convert_file(tmp_path / "notes.txt", "ViT-B/16", tmp_path / "t.pth")
    with pytest.raises(FileNotFoundError, match="absent.pt: no such file"):
        convert_file(tmp_path / "absent.pt", "ViT-B/16", tmp_path / "t.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="folder without model.safetensors"):
        convert_file(tmp_path / "empty", "ViT-B/16", tmp_path / "t.pth")
    torch.manual_seed(0)
    no_projection = CLIPVisionModel(_hf_config()).state_dict()
    with pytest.raises(ValueError, match="no visual_projection.weight"):
        convert_state_dict(no_projection, TINY)
