"""The timm conventions users try first: ``create_model(name, features_only=True)`` (per-block maps, ``out_indices``,
``feature_info``) and ``resolve_model_data_config(model)`` giving the clip size the model was built for."""
import pytest
import timm
import torch
from timm.data import create_transform, resolve_model_data_config
from timm.models import get_pretrained_cfg, model_entrypoint

import models  # noqa: F401  (registers the models with timm)
from models.features import VideoFeatureGetterNet
from models.videomamba import MODEL_SIZES

pytestmark = pytest.mark.usefixtures("torch_backend")

OURS = sorted(n for n in timm.list_models() if model_entrypoint(n).__module__.startswith("models."))
CLASSIFIERS = [n for n in OURS if n.startswith("videomamba_") and not n.endswith("_pretrain")]
STUDENTS = [n for n in OURS if n.endswith("_pretrain")]
TEACHERS = [n for n in OURS if n.startswith("clip_")]
B, FRAMES, IMG, DIM = 2, 4, 32, 32
TINY = dict(img_size=IMG, num_frames=FRAMES, depth=3, embed_dim=DIM)


def _create(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, **{**TINY, **overrides}).eval()


def _video(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, 3, FRAMES, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def test_the_families_are_known():
    assert CLASSIFIERS == ["videomamba_middle", "videomamba_small", "videomamba_tiny"]
    assert STUDENTS == [f"{n}_pretrain" for n in CLASSIFIERS] and len(TEACHERS) == 3


@pytest.mark.parametrize("name", CLASSIFIERS + STUDENTS)
def test_features_only_gives_the_maps_of_the_last_three_blocks(name):
    full = _create(name)
    features = _create(name, features_only=True)
    assert isinstance(features, VideoFeatureGetterNet)
    info = features.feature_info
    assert info.out_indices == (0, 1, 2)  # timm's ViT default: the last 3 blocks
    assert info.channels() == [DIM] * 3 and info.reduction() == [16] * 3
    assert info.module_name() == ["layers.0", "layers.1", "layers.2"]
    assert info.get("temporal_reduction") == [1] * 3
    x = _video()
    with torch.no_grad():
        maps = features(x)
        want = full.forward_intermediates(x, indices=3, intermediates_only=True)
    assert [m.shape for m in maps] == [(B, DIM, FRAMES, 2, 2)] * 3
    for got, ref in zip(maps, want, strict=True):
        assert torch.equal(got, ref)


@pytest.mark.parametrize("name", CLASSIFIERS + STUDENTS)
def test_out_indices_select_blocks_and_prune_the_rest(name):
    full = _create(name, depth=4, kernel_size=2)
    x = _video()
    for out_indices, kept in (((0, -3), [0, 1]), (1, [3]), ([2], [2])):
        features = _create(name, depth=4, kernel_size=2, features_only=True, out_indices=out_indices)
        assert list(features.feature_info.out_indices) == kept
        assert len(features.model.layers) == kept[-1] + 1  # blocks after the last one asked for are dropped
        with torch.no_grad():
            maps = features(x)
            want = full.forward_intermediates(x, indices=kept, intermediates_only=True)
        assert [m.shape for m in maps] == [(B, DIM, FRAMES // 2, 2, 2)] * len(kept)
        assert all(torch.equal(g, r) for g, r in zip(maps, want, strict=True))
    assert features.feature_info.get("temporal_reduction") == [2]
    assert not any(n.startswith(("head.", "clip_decoder.")) for n, _ in features.model.named_parameters())


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_feature_channels_are_the_registered_widths(name):
    features = timm.create_model(name, img_size=IMG, num_frames=FRAMES, depth=2, features_only=True, out_indices=2)
    width = MODEL_SIZES[name.removeprefix("videomamba_")]["embed_dim"]
    assert features.feature_info.channels() == [width] * 2 and features.feature_info.reduction() == [16, 16]


def test_features_only_loads_pretrained_weights(tmp_path):
    source = _create("videomamba_tiny", seed=5, num_classes=7)
    path = tmp_path / "weights.pth"
    torch.save({"model": source.state_dict()}, path)
    features = _create("videomamba_tiny", features_only=True, out_indices=(1,), pretrained=True,
                       pretrained_cfg_overlay=dict(file=str(path)))
    assert "state_dict" not in features.pretrained_cfg and "state_dict" not in features.model.pretrained_cfg
    x = _video()
    with torch.no_grad():
        assert torch.equal(features(x)[0], source.forward_intermediates(x, indices=[1], intermediates_only=True)[0])


@pytest.mark.parametrize("name", TEACHERS)
def test_teachers_refuse_features_only_clearly(name):
    with pytest.raises(ValueError, match=f"{name} is a frozen CLIP teacher and has no features_only mode"):
        timm.create_model(name, features_only=True)


@pytest.mark.parametrize("name", CLASSIFIERS[:1] + STUDENTS[:1])
def test_data_config_is_the_clip_size_the_model_was_built_for(name):
    built = dict(depth=1, embed_dim=DIM)
    assert resolve_model_data_config(timm.create_model(name, **built))["input_size"] == (3, 8, 224, 224)
    model = timm.create_model(name, num_frames=16, img_size=64, kernel_size=2, **built)
    config = resolve_model_data_config(model)
    assert config["input_size"] == (3, 16, 64, 64)  # frames, not tubelet tokens
    assert config["mean"] == model.pretrained_cfg["mean"]
    assert [t.size for t in create_transform(**config).transforms[:2]] == [64, (64, 64)]  # per-frame H, W
    features = timm.create_model(name, num_frames=16, img_size=64, features_only=True, out_indices=1, **built)
    assert resolve_model_data_config(features)["input_size"] == (3, 16, 64, 64)
    grey = timm.create_model(name, in_chans=1, num_frames=2, img_size=48, **built)
    assert resolve_model_data_config(grey)["input_size"] == (1, 2, 48, 48)
    assert get_pretrained_cfg(name).input_size == (3, 8, 224, 224)  # the registered cfg is left alone


@pytest.mark.parametrize("name", TEACHERS)
def test_teacher_data_config_is_its_built_resolution(name):
    size = {"clip_b16": 32}.get(name, 28)  # multiples of the patch size
    model = timm.create_model(name, input_resolution=size, width=64, layers=1, heads=2, output_dim=16)
    assert resolve_model_data_config(model)["input_size"] == (3, size, size)

