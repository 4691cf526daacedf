"""Fine-tune checkpoint loading: official-format files, prefixes, head dropping, 2D->3D inflation,
position-table resampling, purity of the filter, and clear errors."""
import json
import logging

import pytest
import timm
import torch

import models  # noqa: F401  (registers the models with timm)

from models.checkpoint import (checkpoint_filter_fn, fetch_checkpoint, inflate_patch_weight, load_finetune_checkpoint,
                               read_label_map, select_head_rows)
from models.ops import get_backend, set_backend
from models.pos_embed import resample_abs_pos_embed
from models.videomamba import VideoMamba
from models.videomamba_pretrain import VideoMambaPretrain

pytestmark = pytest.mark.usefixtures("torch_backend")

TINY = dict(img_size=32, patch_size=16, depth=1, embed_dim=16, num_frames=4, num_classes=5)


def _model(**overrides) -> VideoMamba:
    return VideoMamba(**{**TINY, **overrides})


def _randomised_state(model: torch.nn.Module, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def test_official_format_loads_strictly_and_through_the_loader(tmp_path):
    src_state = _randomised_state(_model())
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {f"backbone.{k}": v for k, v in src_state.items()}, "epoch": 3}, path)
    strict = _model()
    strict.load_state_dict(src_state, strict=True)
    loaded = _model()
    report = load_finetune_checkpoint(loaded, path)
    assert report["missing_keys"] == [] and report["unexpected_keys"] == []
    for key, value in src_state.items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_module_key_and_custom_prefix(tmp_path):
    src_state = _randomised_state(_model(), seed=1)
    path = tmp_path / "ds.pt"
    torch.save({"module": {f"student.encoder.{k}": v for k, v in src_state.items()}}, path)
    model = _model()
    report = load_finetune_checkpoint(model, path, model_key="model|module", model_prefix="student.")
    assert report["missing_keys"] == []
    assert torch.equal(model.pos_embed, src_state["pos_embed"])


def test_student_checkpoint_loads_strictly_and_into_classifier(tmp_path):
    student = VideoMambaPretrain(img_size=32, depth=1, embed_dim=16, num_frames=4, clip_output_dim=8)
    state = _randomised_state(student, seed=2)
    VideoMambaPretrain(img_size=32, depth=1, embed_dim=16, num_frames=4, clip_output_dim=8).load_state_dict(
        state, strict=True)
    path = tmp_path / "student.pth"
    torch.save({"model": state}, path)
    report = load_finetune_checkpoint(_model(), path)
    assert set(report["missing_keys"]) == {"norm_f.weight", "head.weight", "head.bias"}
    assert set(report["unexpected_keys"]) == {"norm.weight", "clip_decoder.0.head.weight", "clip_decoder.0.head.bias",
                                              "clip_decoder.0.norm.weight", "clip_decoder.0.norm.bias"}


def test_head_dropped_on_mismatch_or_request_and_kept_otherwise():
    model = _model()
    same = _randomised_state(model)
    assert "head.weight" in checkpoint_filter_fn(same, model)
    assert "head.weight" not in checkpoint_filter_fn(same, model, delete_head=True)
    other = _randomised_state(_model(num_classes=9))
    filtered = checkpoint_filter_fn(other, model)
    assert "head.weight" not in filtered and "head.bias" not in filtered and "norm_f.weight" in filtered


def test_filter_is_pure():
    model = _model(img_size=64, num_frames=8, kernel_size=2)
    state = _randomised_state(_model())
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"][:, :, 0]
    snapshot = {k: v.clone() for k, v in state.items()}
    filtered = checkpoint_filter_fn(state, model)
    assert filtered is not state and set(state) == set(snapshot)
    for key, value in snapshot.items():
        assert torch.equal(state[key], value), key
    assert filtered["patch_embed.proj.weight"].shape == (16, 3, 2, 16, 16)


def test_center_and_average_inflation_of_image_weights():
    w2d = torch.randn(16, 3, 16, 16)
    center = inflate_patch_weight(w2d, 3, "center")
    assert torch.equal(center[:, :, 1], w2d) and not center[:, :, 0].any() and not center[:, :, 2].any()
    avg = inflate_patch_weight(w2d, 4, "avg")
    for t in range(4):
        torch.testing.assert_close(avg[:, :, t], w2d / 4)
    state = _randomised_state(_model())
    state["patch_embed.proj.weight"] = w2d
    filtered = checkpoint_filter_fn(state, _model(kernel_size=2), inflate="center")
    assert torch.equal(filtered["patch_embed.proj.weight"][:, :, 1], w2d)
    assert not filtered["patch_embed.proj.weight"][:, :, 0].any()
    filtered = checkpoint_filter_fn(state, _model(), inflate="avg")
    assert torch.equal(filtered["patch_embed.proj.weight"][:, :, 0], w2d)


def test_inflated_kernel_keeps_static_clip_response():
    image_model = _model()
    state = _randomised_state(image_model)
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"][:, :, 0] * 0.1
    clip = torch.randn(1, 3, 1, 32, 32).expand(-1, -1, 4, -1, -1)
    image_model.load_state_dict(checkpoint_filter_fn(state, image_model))
    for mode in ("center", "avg"):
        tubelet_model = _model(kernel_size=2)
        tubelet_model.load_state_dict(checkpoint_filter_fn(state, tubelet_model, inflate=mode), strict=False)
        got = tubelet_model.patch_embed(clip)
        torch.testing.assert_close(got, image_model.patch_embed(clip)[:, :, :2], rtol=1e-4, atol=1e-5)


def test_tubelet_checkpoint_into_frame_model_keeps_static_clip_response():
    tubelet_model = _model(kernel_size=2)
    state = _randomised_state(tubelet_model, seed=4)
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"] * 0.1
    tubelet_model.load_state_dict(state)
    frame_model = _model()
    frame_model.load_state_dict(checkpoint_filter_fn(state, frame_model))
    clip = torch.randn(1, 3, 1, 32, 32).expand(-1, -1, 4, -1, -1)
    torch.testing.assert_close(frame_model.patch_embed(clip)[:, :, ::2], tubelet_model.patch_embed(clip),
                               rtol=1e-4, atol=1e-5)
    assert frame_model.temporal_pos_embedding.shape == (1, 4, 16)


@pytest.mark.parametrize("name", ["videomamba_tiny", "videomamba_small", "videomamba_middle",
                                  "videomamba_tiny_pretrain", "videomamba_small_pretrain",
                                  "videomamba_middle_pretrain"])
def test_every_registered_model_loads_its_official_format(tmp_path, name):
    kwargs = dict(img_size=32, num_frames=4, depth=1)
    if name.endswith("_pretrain"):
        kwargs["clip_output_dim"] = 8
    state = _randomised_state(timm.create_model(name, **kwargs))
    timm.create_model(name, **kwargs).load_state_dict(state, strict=True)
    path = tmp_path / f"{name}.pth"
    torch.save({"model": {f"backbone.{k}": v for k, v in state.items()}}, path)
    model = timm.create_model(name, **kwargs)
    report = load_finetune_checkpoint(model, path)
    assert report["missing_keys"] == [] and report["unexpected_keys"] == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_spatial_pos_embed_interpolation():
    model_64 = _model(img_size=64)
    state = _randomised_state(_model())
    assert torch.equal(checkpoint_filter_fn(state, _model())["pos_embed"], state["pos_embed"])
    filtered = checkpoint_filter_fn(state, model_64)["pos_embed"]
    assert filtered.shape == (1, 1 + 16, 16)
    assert torch.equal(filtered[:, 0], state["pos_embed"][:, 0])
    torch.testing.assert_close(filtered, resample_abs_pos_embed(state["pos_embed"], (4, 4)))
    constant = dict(state, pos_embed=torch.full((1, 5, 16), 0.7))
    torch.testing.assert_close(checkpoint_filter_fn(constant, model_64)["pos_embed"], torch.full((1, 17, 16), 0.7))


def test_spatial_resampling_is_the_official_bicubic():
    """timm's resampler without antialiasing: F.interpolate(bicubic, align_corners=False) on the grid, cls kept."""
    table = torch.randn(1, 1 + 3 * 3, 8).to(torch.bfloat16)
    grid = table[:, 1:].float().reshape(1, 3, 3, 8).permute(0, 3, 1, 2)
    for size in ((5, 5), (2, 2), (4, 6)):
        want = torch.nn.functional.interpolate(grid, size=size, mode="bicubic", align_corners=False)
        want = torch.cat([table[:, :1], want.permute(0, 2, 3, 1).reshape(1, -1, 8).to(table.dtype)], dim=1)
        assert torch.equal(resample_abs_pos_embed(table, size), want), size
    with pytest.raises(ValueError, match="not a square grid"):
        resample_abs_pos_embed(torch.zeros(1, 1 + 6, 8), (2, 2))


def test_temporal_pos_embed_linear_interpolation(tmp_path, caplog):
    src = _model(num_frames=2)
    state = _randomised_state(src)
    path = tmp_path / "t2.pth"
    torch.save({"model": state}, path)
    model = _model(num_frames=4)
    with caplog.at_level(logging.WARNING, logger="models.checkpoint"):
        report = load_finetune_checkpoint(model, path, orig_t_size=2)
        assert "does not match" not in caplog.text
        load_finetune_checkpoint(_model(num_frames=4), path, orig_t_size=6)
        assert "orig_t_size=6 does not match" in caplog.text
    assert report["missing_keys"] == []
    v0, v1 = state["temporal_pos_embedding"][0]
    want = torch.stack([v0, 0.75 * v0 + 0.25 * v1, 0.25 * v0 + 0.75 * v1, v1])
    torch.testing.assert_close(model.temporal_pos_embedding[0].detach(), want)


def test_all_adaptations_together_give_a_working_model(tmp_path):
    state = _randomised_state(_model())
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"][:, :, 0]
    state = {k: v for k, v in state.items() if k != "temporal_pos_embedding"}
    state["head.weight"] = torch.randn(1000, 16)
    state["head.bias"] = torch.randn(1000)
    path = tmp_path / "in1k.pth"
    torch.save(state, path)
    model = _model(img_size=48, num_frames=8, kernel_size=2)
    report = load_finetune_checkpoint(model, path)
    assert set(report["missing_keys"]) == {"temporal_pos_embedding", "head.weight", "head.bias"}
    assert report["unexpected_keys"] == []
    assert model(torch.randn(1, 3, 8, 48, 48)).shape == (1, 5)


def test_unfixable_shape_mismatch_names_key_and_shapes():
    state = dict(_randomised_state(_model()), **{"layers.0.mixer.A_log": torch.zeros(32, 8)})
    with pytest.raises(ValueError, match=r"layers\.0\.mixer\.A_log.*\(32, 8\).*\(32, 16\)"):
        checkpoint_filter_fn(state, _model())


def test_depth_mismatch_is_one_warning_and_width_mismatch_one_error(tmp_path, caplog):
    """A 4-block checkpoint into a 2-block model loads blocks 0..1 and says so in one warning (not a list of every
    key of blocks 2..3 at INFO); the other way the model's extra blocks keep their initialisation. Different widths
    cannot load at all: one error naming the widths and the flags."""
    deep = tmp_path / "deep.pth"
    deep_state = _randomised_state(_model(depth=4))
    torch.save({"model": deep_state}, deep)
    shallow = _model(depth=2)
    with caplog.at_level(logging.INFO, logger="models.checkpoint"):
        report = load_finetune_checkpoint(shallow, deep)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{deep} has 4 blocks, the model 2 (set by --model / --depth): blocks 2..3 of the "
                        "checkpoint are not loaded"]
    assert "layers.2." not in caplog.text and "unexpected keys" not in caplog.text
    assert any(k.startswith("layers.3.") for k in report["unexpected_keys"])  # the report keeps every key
    assert torch.equal(shallow.state_dict()["layers.1.mixer.A_log"], deep_state["layers.1.mixer.A_log"])
    caplog.clear()
    shallow_file = tmp_path / "shallow.pth"
    torch.save({"model": _randomised_state(_model(depth=2))}, shallow_file)
    with caplog.at_level(logging.INFO, logger="models.checkpoint"):
        load_finetune_checkpoint(_model(depth=3), shallow_file)
    assert f"{shallow_file} has 2 blocks, the model 3 (set by --model / --depth): the model's block 2 keeps its " \
           "initialisation" in caplog.text and "missing keys" not in caplog.text
    with pytest.raises(ValueError, match=r"the checkpoint is 16 wide, the model 32, so none of its blocks fits "
                                         r"\(set by --model / --embed_dim\)"):
        load_finetune_checkpoint(_model(embed_dim=32), shallow_file)


def test_missing_file_and_non_checkpoint_errors(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_finetune_checkpoint(_model(), missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_finetune_checkpoint(_model(), garbage)
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(ValueError, match="list.pth"):
        load_finetune_checkpoint(_model(), a_list)
    no_tensors = tmp_path / "meta.pth"
    torch.save({"model": {"step": 3}, "epoch": 1}, no_tensors)
    with pytest.raises(ValueError, match="meta.pth"):
        load_finetune_checkpoint(_model(), no_tensors)


def test_bad_inflate_mode_is_rejected():
    with pytest.raises(ValueError, match="inflate"):
        checkpoint_filter_fn({}, _model(), inflate="middle")


def test_k710_head_keeps_first_400_rows_and_label_map_selects_rows(tmp_path):
    source = _randomised_state(_model(num_classes=710))
    model = _model(num_classes=400)
    filtered = checkpoint_filter_fn(source, model)
    assert torch.equal(filtered["head.weight"], source["head.weight"][:400])
    assert torch.equal(filtered["head.bias"], source["head.bias"][:400])
    assert source["head.weight"].shape[0] == 710  # pure: the input is untouched
    assert "head.weight" not in checkpoint_filter_fn(source, model, delete_head=True)
    rows = [709, 3, 0] + list(range(10, 607))
    (tmp_path / "label_mixto600.json").write_text(json.dumps(rows))
    label_map = read_label_map(tmp_path / "label_mixto600.json")
    model600 = _model(num_classes=600)
    torch.save({"model": source}, tmp_path / "k710.pth")
    load_finetune_checkpoint(model600, tmp_path / "k710.pth", label_map=label_map)
    torch.testing.assert_close(model600.head.weight.detach(), source["head.weight"][rows], rtol=0, atol=0)
    torch.testing.assert_close(model600.head.bias.detach(), source["head.bias"][rows], rtol=0, atol=0)
    # a 9-class head for 5 classes is no Kinetics-710 case: left as is (the filter then drops the mismatched head)
    nine = _randomised_state(_model(num_classes=9))
    assert torch.equal(select_head_rows(nine, 5)["head.weight"], nine["head.weight"])
    assert "head.weight" not in checkpoint_filter_fn(nine, _model(num_classes=5))


@pytest.mark.parametrize("classes", [600, 700])
def test_k710_to_600_or_700_needs_label_map(tmp_path, classes):
    source = _randomised_state(_model(num_classes=710))
    with pytest.raises(ValueError, match=f"--label_map .*label_mixto{classes}.json"):
        checkpoint_filter_fn(source, _model(num_classes=classes))
    with pytest.raises(ValueError, match="--label_map has 3 entries"):
        checkpoint_filter_fn(source, _model(num_classes=classes), label_map=[0, 1, 2])
    for content in ("{\"a\": 1}", "[1, -2]", "not json"):
        (tmp_path / "bad.json").write_text(content)
        with pytest.raises(ValueError, match="bad.json"):
            read_label_map(tmp_path / "bad.json")


def test_finetune_url_reads_through_the_hub_cache_and_fails_clearly_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    url = "http://127.0.0.1:9/videomamba_tiny_test.pth"  # port 9 (discard): nothing can be downloaded
    with pytest.raises(RuntimeError, match=r"cannot download checkpoint http://127.0.0.1:9/videomamba_tiny_test.pth"
                                           r".*Offline\?.*hub/checkpoints/videomamba_tiny_test.pth"):
        load_finetune_checkpoint(_model(), url)
    source = _model()
    state = _randomised_state(source)
    cached = tmp_path / "hub" / "checkpoints" / "videomamba_tiny_test.pth"
    torch.save({"model": state}, cached)
    assert fetch_checkpoint(url) == cached
    assert fetch_checkpoint("https://example.org/dir/videomamba_tiny_test.pth") == cached
    assert fetch_checkpoint(tmp_path / "local.pth") == tmp_path / "local.pth"
    model = _model()
    load_finetune_checkpoint(model, url)
    for key, value in state.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)
