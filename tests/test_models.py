"""timm's model contract (as in timm's tests/test_models.py) for every model this package registers, on tiny
configs: creation, forward shape, forward_features / forward_head / forward_intermediates, grad checkpointing,
reset_classifier, group_matcher, and pretrained=True from a local file of a differently sized model."""
import argparse
import copy

import pytest
import timm
import torch
from timm.models import model_entrypoint
from timm.optim import param_groups_layer_decay

import models  # noqa: F401  (registers the models with timm)
from engines.optim import param_groups
from models.checkpoint import checkpoint_filter_fn
from models.clip_teacher import clip_checkpoint_filter_fn
from models.hub import DownloadError
from hf_cache import offline_hub

pytestmark = pytest.mark.usefixtures("torch_backend")

OURS = sorted(n for n in timm.list_models() if model_entrypoint(n).__module__.startswith("models."))
CLASSIFIERS = [n for n in OURS if n.startswith("videomamba_") and not n.endswith("_pretrain")]
STUDENTS = [n for n in OURS if n.endswith("_pretrain")]
TEACHERS = [n for n in OURS if n.startswith("clip_")]
BACKBONES = CLASSIFIERS + STUDENTS

B, FRAMES, IMG = 2, 4, 32
GRID = (FRAMES, 2, 2)  # T', H', W' for 16-px patches
TINY = {
    **{n: dict(img_size=IMG, num_frames=FRAMES, depth=2, embed_dim=32, num_classes=5) for n in CLASSIFIERS},
    **{n: dict(img_size=IMG, num_frames=FRAMES, depth=2, embed_dim=32, clip_output_dim=8, clip_return_layer=2)
       for n in STUDENTS},
    "clip_b16": dict(input_resolution=32, width=64, layers=2, heads=2, output_dim=16),
    "clip_l14": dict(input_resolution=28, width=64, layers=2, heads=2, output_dim=16),
    "clip_l14_336": dict(input_resolution=28, width=64, layers=2, heads=2, output_dim=16),
}


def _create(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, **{**TINY[name], **overrides})


def _video(name: str, seed: int = 1) -> torch.Tensor:
    size = TINY[name].get("img_size", TINY[name].get("input_resolution"))
    return torch.randn(B, 3, FRAMES, size, size, generator=torch.Generator().manual_seed(seed))


def _mask(masked: int = 6, seed: int = 2) -> torch.Tensor:
    """Student mask (B, 1 + T'H'W'): ``masked`` patch tokens per sample, cls visible."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, 1 + FRAMES * 4, dtype=torch.bool)
    for b in range(B):
        mask[b, torch.randperm(FRAMES * 4, generator=g)[:masked] + 1] = True
    return mask


def _run(model: torch.nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    return model(x, _mask()) if name in STUDENTS else model(x)


def test_every_model_family_is_covered():
    assert OURS == sorted(["videomamba_tiny", "videomamba_small", "videomamba_middle", "videomamba_tiny_pretrain",
                           "videomamba_small_pretrain", "videomamba_middle_pretrain", "clip_b16", "clip_l14",
                           "clip_l14_336"])
    assert set(TINY) == set(OURS)


@pytest.mark.parametrize("name", OURS)
def test_create_and_forward_shape(name):
    model = _create(name).eval()
    with torch.no_grad():
        out = _run(model, name, _video(name))
    if name in CLASSIFIERS:
        assert out.shape == (B, 5)
    elif name in STUDENTS:
        assert out.shape == (2, B, 1 + FRAMES * 4 - 6, 8)
    else:
        grid = TINY[name]["input_resolution"] // model.patch_size
        assert out.shape == (1, B, FRAMES * grid * grid, 16)
    assert torch.isfinite(out).all()
    cfg = model.pretrained_cfg
    assert not cfg["url"] and "state_dict" not in cfg
    size = TINY[name].get("input_resolution")  # the clip size it was built for, not the registered default
    assert cfg["input_size"] == ((3, FRAMES, IMG, IMG) if name in BACKBONES else (3, size, size))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_features_and_head_compose_forward(name):
    model = _create(name).eval()
    x = _video(name)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model(x)
    assert features.shape == (B, 1 + FRAMES * 4, model.num_features)
    assert torch.equal(model.forward_head(features), logits)
    assert torch.equal(pre_logits, features[:, 0]) and pre_logits.shape == (B, model.num_features)
    assert torch.equal(model.get_classifier()(pre_logits), logits)


@pytest.mark.parametrize("name", BACKBONES)
def test_forward_intermediates(name):
    model = _create(name).eval()
    x = _video(name)
    C = model.embed_dim
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        tokens = model.forward_intermediates(x, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True)
        normed = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC", return_prefix_tokens=True,
                                             intermediates_only=True)
        first = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        embedded = model.embed(x)
        block0 = embedded + model.layers[0].mixer(model.layers[0].norm(embedded))
    assert len(maps) == len(tokens) == 2 and len(normed) == 1
    assert all(m.shape == (B, C, *GRID) for m in maps)
    for m, (patches, cls) in zip(maps, tokens):
        assert patches.shape == (B, FRAMES * 4, C) and cls.shape == (B, 1, C)
        assert torch.equal(m.flatten(2).transpose(1, 2), patches)
    # block 0's output is the residual stream after it; the last one, normed, is the final feature sequence
    torch.testing.assert_close(torch.cat(tokens[0][::-1], dim=1), block0)
    assert torch.equal(first[0], maps[0])
    assert final.shape == (B, 1 + FRAMES * 4, C)
    assert torch.equal(torch.cat(normed[0][::-1], dim=1), final)
    if name in CLASSIFIERS:
        assert torch.equal(final, model.forward_features(x))
    else:
        assert torch.equal(final, model.norm(torch.cat(tokens[1][::-1], dim=1)))
    with pytest.raises(ValueError, match="output_fmt='NLC'"):
        model.forward_intermediates(x, mask=_mask())
    with torch.no_grad():
        visible = model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True, mask=_mask())
    assert [v.shape for v in visible] == [(B, FRAMES * 4 - 6, C)] * 2


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_intermediates_in_training_matches_forward_features(name):
    """Same drop-path draws: the last block's normed output is the feature sequence under the same seed."""
    model = _create(name, drop_path_rate=0.5, drop_rate=0.3).train()
    x = _video(name)
    torch.manual_seed(4)
    features = model.forward_features(x)
    torch.manual_seed(4)
    final, (last,) = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC", return_prefix_tokens=True)
    assert torch.equal(final, features) and torch.equal(torch.cat(last[::-1], dim=1), features)
    torch.manual_seed(5)
    assert not torch.equal(model.forward_features(x), features), "drop path and token dropout draw at random"


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_prune_intermediate_layers(name):
    model = _create(name).eval()
    pruned = copy.deepcopy(model)
    assert pruned.prune_intermediate_layers([0]) == [0]
    assert len(pruned.layers) == 1 and isinstance(pruned.get_classifier(), torch.nn.Identity)
    x = _video(name)
    with torch.no_grad():
        assert torch.equal(pruned.forward_intermediates(x, indices=[0], intermediates_only=True)[0],
                           model.forward_intermediates(x, indices=[0], intermediates_only=True)[0])


@pytest.mark.parametrize("name", BACKBONES)
def test_grad_checkpointing_keeps_outputs_and_gradients(name):
    models_ = [_create(name, drop_path_rate=0.2).train() for _ in range(2)]
    models_[1].set_grad_checkpointing(True)
    mixer_calls = [0, 0]
    outputs, grads = [], []
    x = _video(name)
    for i, model in enumerate(models_):
        model.layers[0].mixer.register_forward_pre_hook(lambda *_, i=i: mixer_calls.__setitem__(i, mixer_calls[i] + 1))
        torch.manual_seed(5)
        out = _run(model, name, x)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert mixer_calls == [1, 2], "a checkpointed mixer runs again in the backward pass"
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-5, atol=1e-7, msg=n)
    models_[1].set_grad_checkpointing(False)
    assert not models_[1].use_checkpoint


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_reset_classifier(name):
    model = _create(name).eval()
    x = _video(name)
    model.reset_classifier(3)
    assert model.num_classes == 3 and model.get_classifier().out_features == 3
    assert model(x).shape == (B, 3)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), torch.nn.Identity)
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_head(model.forward_features(x), pre_logits=True))
    with pytest.raises(ValueError, match="cls token"):
        model.reset_classifier(3, global_pool="avg")


@pytest.mark.parametrize("name", BACKBONES)
def test_group_matcher_gives_per_block_layer_decay(name):
    """timm's layer decay over ``group_matcher`` equals our ``--layer_decay_mode blocks`` groups."""
    model = _create(name, depth=3)
    timm_groups = param_groups_layer_decay(model, layer_decay=0.5, no_weight_decay_list=model.no_weight_decay())
    ours = param_groups(model.named_parameters(), 0.05, model.get_num_layers(), 0.5, model.no_weight_decay(),
                        mode="blocks")
    names = {id(p): n for n, p in model.named_parameters()}
    timm_scales = {names[id(p)]: g["lr_scale"] for g in timm_groups for p in g["params"]}
    our_scales = {names[id(p)]: g["lr_scale"] for g in ours for p in g["params"]}
    assert timm_scales == our_scales and len(set(our_scales.values())) == 5


def _official_checkpoint(name: str, tmp_path) -> tuple:
    """An official-format file from a differently sized model: 48 px, 8 frames, 2D (image) patch kernel,
    ``module.`` prefixes under "model", and a pickled argparse Namespace as the official saver writes."""
    source = _create(name, seed=9, img_size=48, num_frames=8)
    state = {k: v + 0.01 for k, v in source.state_dict().items()}
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"][:, :, 0]
    path = tmp_path / f"{name}.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "args": argparse.Namespace(lr=1e-3)}, path)
    return path, state


@pytest.mark.parametrize("name", BACKBONES)
def test_pretrained_from_a_local_official_file(name, tmp_path):
    path, state = _official_checkpoint(name, tmp_path)
    kwargs = dict(kernel_size=2)  # tubelets of 2 frames: the 2D kernel is inflated, 8 -> 2 temporal steps
    fresh = _create(name, **kwargs)
    loaded = _create(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    want = checkpoint_filter_fn(state, fresh)
    got = loaded.state_dict()
    assert want.keys() == got.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key
        assert not torch.equal(got[key], fresh.state_dict()[key]), f"{key} was not loaded"
    kernel = got["patch_embed.proj.weight"]
    assert kernel.shape[2] == 2 and not kernel[:, :, 0].any()
    assert torch.equal(kernel[:, :, 1], state["patch_embed.proj.weight"])
    assert got["pos_embed"].shape == (1, 5, loaded.embed_dim)
    assert got["temporal_pos_embedding"].shape == (1, 2, loaded.embed_dim)
    assert loaded.pretrained_cfg["file"] == str(path) and "state_dict" not in loaded.pretrained_cfg


@pytest.mark.parametrize("name", BACKBONES)
def test_pretrained_without_weights_is_a_clear_error(name, tmp_path, monkeypatch):
    """A released architecture fetches its default tag (offline, with an empty cache: a one-line error naming it);
    the Ti and S students have no release."""
    offline_hub(monkeypatch, tmp_path / "empty_cache")
    if name in ("videomamba_tiny_pretrain", "videomamba_small_pretrain"):
        with pytest.raises(ValueError, match=f"{name}: no downloadable weights"):
            _create(name, pretrained=True)
        return
    tag = timm.models.get_pretrained_cfg(name).tag
    with pytest.raises(DownloadError, match=rf"^{name}\.{tag}: cannot get OpenGVLab/VideoMamba/.*HF_HUB_OFFLINE"):
        _create(name, pretrained=True)


@pytest.mark.parametrize("name", TEACHERS)
def test_teacher_pretrained_from_file_or_clip_dir(name, tmp_path, monkeypatch):
    from models.clip_teacher import CLIP_FILE_NAMES, CLIP_VARIANTS

    source = _create(name, seed=9, input_resolution=2 * TINY[name]["input_resolution"])
    state = {k: v + 0.01 for k, v in source.state_dict().items()}
    state["conv1.weight"] = state["conv1.weight"][:, :, 0]  # OpenAI's 2D kernel
    path = tmp_path / CLIP_FILE_NAMES[CLIP_VARIANTS[name]]
    torch.save(state, path)
    fresh = _create(name, kernel_size=2)
    want = clip_checkpoint_filter_fn(state, fresh)
    monkeypatch.setenv("VIDEOMAMBA_CLIP_DIR", str(tmp_path))
    for overlay in (dict(file=str(path)), None):  # the overlay's file, else $VIDEOMAMBA_CLIP_DIR's
        loaded = _create(name, kernel_size=2, pretrained=True, pretrained_cfg_overlay=overlay)
        assert loaded.pretrained_cfg["file"] == str(path) and "state_dict" not in loaded.pretrained_cfg
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        for key, value in loaded.state_dict().items():
            assert torch.equal(value, want[key]), key
            assert not torch.equal(value, fresh.state_dict()[key]), f"{key} was not loaded"
    monkeypatch.delenv("VIDEOMAMBA_CLIP_DIR")
    with pytest.raises(FileNotFoundError, match="VIDEOMAMBA_CLIP_DIR"):
        _create(name, pretrained=True)


@pytest.mark.parametrize("name", CLASSIFIERS[:1] + STUDENTS[:1])
def test_timm_keywords_reach_the_constructor(name):
    model = _create(name, in_chans=1, pretrained_cfg_overlay=dict(input_size=(1, 2, 48, 48)),
                    img_size=None, num_frames=None)
    assert model.patch_embed.proj.in_channels == 1
    assert model.token_grid == (2, 3, 3)
    assert model.pretrained_cfg["input_size"] == (1, 2, 48, 48)
