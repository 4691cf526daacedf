"""CLIP teacher: features against a hand-written reference, layer selection, inflation, resizing, factories."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.clip_teacher import (
    CLIPTeacher,
    LayerNorm,
    clip_b16,
    clip_l14,
    clip_l14_336,
    load_clip_state_dict,
    read_clip_weights,
    teacher_return_index,
)
from models.pos_embed import resample_abs_pos_embed

TINY = dict(input_resolution=32, patch_size=16, width=64, layers=4, heads=2, output_dim=32)


def _tiny_teacher(seed: int = 0, **kwargs) -> CLIPTeacher:
    """Tiny teacher with every parameter (LayerNorms included) randomised, so a misplaced tensor shows."""
    torch.manual_seed(seed)
    model = CLIPTeacher(**{**TINY, **kwargs})
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.freeze()


def _reference_blocks(sd: dict[str, torch.Tensor], frames: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every block's hidden states (layers, N, 1 + HW, C) and the last block's head-mean attention, by hand.

    frames (N, 3, H, W); the OpenAI CLIP ViT written out with explicit matrix products.
    """
    conv = sd["conv1.weight"][:, :, 0]
    x = F.conv2d(frames, conv, stride=conv.shape[-1]).flatten(2).transpose(1, 2)
    n, _, c = x.shape
    x = torch.cat([sd["class_embedding"].expand(n, 1, c), x], dim=1) + sd["positional_embedding"]

    def norm(t: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(t, (c,), sd[f"{name}.weight"], sd[f"{name}.bias"])

    x = norm(x, "ln_pre")
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    hidden, attn = [], None
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        q, k, v = (norm(x, p + "ln_1") @ sd[p + "attn.in_proj_weight"].t() + sd[p + "attn.in_proj_bias"]).chunk(3, -1)
        q, k, v = (t.reshape(n, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), dim=-1)
        mixed = (attn @ v).transpose(1, 2).reshape(n, -1, c)
        x = x + mixed @ sd[p + "attn.out_proj.weight"].t() + sd[p + "attn.out_proj.bias"]
        h = norm(x, p + "ln_2") @ sd[p + "mlp.c_fc.weight"].t() + sd[p + "mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)
        x = x + h @ sd[p + "mlp.c_proj.weight"].t() + sd[p + "mlp.c_proj.bias"]
        hidden.append(x)
    return torch.stack(hidden), attn.mean(dim=1)


@pytest.mark.parametrize("return_cls", [False, True])
def test_features_and_attention_match_reference(return_cls: bool) -> None:
    teacher = _tiny_teacher(clip_return_layer=2, clip_return_interval=2, clip_return_cls=return_cls, return_attn=True)
    B, T = 2, 3
    video = torch.randn(B, 3, T, 32, 32)
    with torch.no_grad():
        feats, attn = teacher(video)
        sd = teacher.state_dict()
        hidden, ref_attn = _reference_blocks(sd, video.transpose(1, 2).reshape(B * T, 3, 32, 32), heads=2)
    hw, c = 4, 64
    expected = []
    for block in (1, 3):  # layers - 1 - int(i * 2) for i in (0, 1), in block order
        tokens = hidden[block]
        patches = tokens[:, 1:].reshape(B, T * hw, c)
        if return_cls:
            cls = tokens[:, 0].reshape(B, T, c).mean(dim=1, keepdim=True)
            tokens = torch.cat([cls, patches], dim=1)
        else:
            tokens = F.layer_norm(patches, (c,), sd["ln_post.weight"], sd["ln_post.bias"])
        expected.append(F.normalize(tokens @ sd["proj"], dim=-1))
    expected = torch.stack(expected)
    assert feats.shape == (2, B, T * hw + int(return_cls), 32)
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(feats.shape[:-1]))
    assert attn.shape == (B * T, hw)
    torch.testing.assert_close(attn, ref_attn[:, 0, 1:], atol=1e-6, rtol=1e-5)


def test_norm_none_returns_unnormalised_projection() -> None:
    teacher = _tiny_teacher(clip_norm_type="none")
    l2 = _tiny_teacher(clip_norm_type="l2")
    video = torch.randn(1, 3, 2, 32, 32)
    with torch.no_grad():
        raw, normed = teacher(video), l2(video)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(raw.shape[:-1]))
    torch.testing.assert_close(F.normalize(raw, dim=-1), normed)


def test_return_index_follows_official_rule() -> None:
    assert teacher_return_index(12, 1, 1) == [11]
    assert teacher_return_index(12, 3, 1) == [9, 10, 11]
    assert teacher_return_index(24, 2, 2.5) == [21, 23]
    with pytest.raises(ValueError, match="distinct blocks"):
        teacher_return_index(4, 3, 2)
    with pytest.raises(ValueError, match="distinct blocks"):
        teacher_return_index(4, 2, 0.5)


@pytest.mark.parametrize("center", [True, False])
def test_2d_patch_kernel_is_inflated(center: bool) -> None:
    frame_teacher = _tiny_teacher(layers=2)
    sd = frame_teacher.state_dict()
    sd["conv1.weight"] = sd["conv1.weight"][:, :, 0]  # OpenAI's 2D kernel
    tube_teacher = CLIPTeacher(**{**TINY, "layers": 2, "kernel_size": 2}).freeze()
    load_clip_state_dict(tube_teacher, sd, center=center)
    video = torch.randn(1, 3, 4, 32, 32)
    # centre inflation (zeros, then the kernel at t = 1) sees the 2nd frame of each pair; averaging sees the mean
    pairs = video[:, :, 1::2] if center else (video[:, :, 0::2] + video[:, :, 1::2]) / 2
    with torch.no_grad():
        torch.testing.assert_close(tube_teacher(video), frame_teacher(pairs), atol=1e-5, rtol=1e-5)


def test_position_embedding_is_resampled_for_other_resolutions() -> None:
    small = _tiny_teacher(layers=2)
    large = CLIPTeacher(**{**TINY, "layers": 2, "input_resolution": 48}).freeze()
    load_clip_state_dict(large, small.state_dict())
    expected = resample_abs_pos_embed(small.positional_embedding.unsqueeze(0), (3, 3)).squeeze(0)
    torch.testing.assert_close(large.positional_embedding, expected)
    assert large.positional_embedding.shape == (10, 64)
    video = torch.randn(1, 3, 2, 48, 48)
    with torch.no_grad():
        out = small(video)  # a 48-px input through the 32-px model resamples on the fly
        torch.testing.assert_close(out, large(video))
    assert out.shape == (1, 1, 2 * 9, 32)


def test_layernorm_computes_in_fp32_and_keeps_dtype() -> None:
    torch.manual_seed(0)
    norm = LayerNorm(64)
    x = (100 * torch.randn(3, 64)).half()
    out = norm(x)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, F.layer_norm(x.float(), (64,)).half())


def test_factories_build_official_sizes_frozen() -> None:
    with torch.device("meta"):
        b16, l14, l14_336 = clip_b16(), clip_l14(), clip_l14_336()
    assert b16.positional_embedding.shape == (197, 768) and b16.proj.shape == (768, 512)
    assert len(b16.transformer.resblocks) == 12 and b16.transformer.resblocks[0].attn.num_heads == 12
    assert l14.positional_embedding.shape == (257, 1024) and l14.proj.shape == (1024, 768)
    assert l14_336.positional_embedding.shape == (577, 1024) and len(l14_336.transformer.resblocks) == 24
    assert l14.conv1.weight.shape == (1024, 3, 1, 14, 14)
    for model in (b16, l14, l14_336):
        assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_factory_loads_path_or_clip_dir(tmp_path, monkeypatch) -> None:
    source = _tiny_teacher(layers=2)
    sd = source.state_dict()
    sd["conv1.weight"] = sd["conv1.weight"][:, :, 0]  # as in the official extracted files
    torch.save(sd, tmp_path / "vit_b16.pth")
    sizes = dict(input_resolution=32, width=64, layers=2, heads=2, output_dim=32)
    video = torch.randn(1, 3, 2, 32, 32)
    monkeypatch.setenv("VIDEOMAMBA_CLIP_DIR", str(tmp_path))
    for pretrained in (str(tmp_path / "vit_b16.pth"), True, "auto"):
        teacher = clip_b16(pretrained=pretrained, **sizes)
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        with torch.no_grad():
            torch.testing.assert_close(teacher(video), source(video))


def test_missing_teacher_file_tells_how_to_convert(tmp_path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*python tools/convert_clip\.py --src .* --arch ViT-L/14"):
        clip_l14(pretrained=str(tmp_path / "nope.pth"))
    monkeypatch.delenv("VIDEOMAMBA_CLIP_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="VIDEOMAMBA_CLIP_DIR.*tools/convert_clip.py"):
        clip_b16(pretrained=True)
    monkeypatch.setenv("VIDEOMAMBA_CLIP_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"vit_l14_336\.pth.*tools/convert_clip\.py"):
        clip_l14_336(pretrained="auto")


def test_bad_teacher_files_are_clear_errors(tmp_path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.pth is not a converted CLIP teacher state dict"):
        read_clip_weights(text)
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other\.pth .*no 'conv1\.weight'"):
        read_clip_weights(tmp_path / "other.pth")
    wide = _tiny_teacher(layers=2, width=128, heads=2).state_dict()
    with pytest.raises(ValueError, match=r"class_embedding: file \(128,\) vs model \(64,\).*convert_clip"):
        load_clip_state_dict(CLIPTeacher(**{**TINY, "layers": 2}), wide, source="wide.pth")
