"""Masked-pretraining student: key layout, mask semantics, and which residual streams are aligned."""
import pytest
import timm
import torch
import torch.nn.functional as F

import models  # noqa: F401  (registers the models with timm)
from models.pos_embed import sinusoid_table
from models.videomamba_pretrain import VideoMambaPretrain

pytestmark = pytest.mark.usefixtures("torch_backend")

TINY = dict(img_size=32, patch_size=16, depth=3, embed_dim=32, num_frames=4, clip_output_dim=24)
N_TOKENS = 1 + 4 * 4


def _mask(batch: int, masked_per_sample: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, N_TOKENS, dtype=torch.bool)
    for b in range(batch):
        idx = torch.randperm(N_TOKENS - 1, generator=g)[:masked_per_sample] + 1
        mask[b, idx] = True
    return mask


def _capture(model: VideoMambaPretrain) -> tuple[dict, list]:
    """Hooks recording the input of every block's norm (the residual stream) and every mixer output."""
    norm_inputs, mixer_outputs = {}, []
    for i, layer in enumerate(model.layers):
        layer.norm.register_forward_pre_hook(lambda mod, args, i=i: norm_inputs.__setitem__(i, args[0]))
        layer.mixer.register_forward_hook(lambda mod, args, out: mixer_outputs.append(out))
    return norm_inputs, mixer_outputs


def _decode(decoder, feature, pos):
    x = (feature + pos) @ decoder.head.weight.T + decoder.head.bias
    x = F.layer_norm(x, (x.shape[-1],), decoder.norm.weight, decoder.norm.bias)
    return x / x.norm(dim=-1, keepdim=True)


def test_state_dict_keys_are_official():
    m = VideoMambaPretrain(**{**TINY, "depth": 1}, clip_return_layer=1)
    mixer = ["A_log", "D", "A_b_log", "D_b", "in_proj.weight", "out_proj.weight", "conv1d.weight", "conv1d.bias",
             "conv1d_b.weight", "conv1d_b.bias", "x_proj.weight", "x_proj_b.weight", "dt_proj.weight",
             "dt_proj.bias", "dt_proj_b.weight", "dt_proj_b.bias"]
    assert set(m.state_dict()) == {
        "cls_token", "pos_embed", "temporal_pos_embedding", "patch_embed.proj.weight", "patch_embed.proj.bias",
        "norm.weight", "layers.0.norm.weight", "clip_decoder.0.head.weight", "clip_decoder.0.head.bias",
        "clip_decoder.0.norm.weight", "clip_decoder.0.norm.bias"} | {f"layers.0.mixer.{n}" for n in mixer}
    assert m.state_dict()["clip_decoder.0.head.weight"].shape == (24, 32)
    two = VideoMambaPretrain(**TINY, clip_return_layer=2)
    assert {k for k in two.state_dict() if k.startswith("clip_decoder.1.")} == {
        "clip_decoder.1.head.weight", "clip_decoder.1.head.bias", "clip_decoder.1.norm.weight",
        "clip_decoder.1.norm.bias"}


def test_clip_return_layer_one_is_the_residual_entering_the_last_mixer():
    torch.manual_seed(0)
    m = VideoMambaPretrain(**TINY).eval()
    norm_inputs, mixer_outputs = _capture(m)
    x = torch.randn(2, 3, 4, 32, 32)
    mask = _mask(2, 12)
    with torch.no_grad():
        out = m(x, mask)
        visible_tokens = m.embed(x)[~mask].reshape(2, -1, 32)
    n_vis = N_TOKENS - 12
    assert out.shape == (1, 2, n_vis, 24)
    # the residual entering the last block = embedding + outputs of every block but the last
    manual = visible_tokens + mixer_outputs[0] + mixer_outputs[1]
    assert sorted(norm_inputs) == [0, 1]  # the last block's output is never used, so it is not run
    pos = sinusoid_table(N_TOKENS, 32).expand(2, -1, -1)[~mask].reshape(2, n_vis, 32)
    torch.testing.assert_close(out[0], _decode(m.clip_decoder[0], manual, pos), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(1, 2, n_vis))


def test_multiple_return_layers_follow_official_indices():
    torch.manual_seed(1)
    m = VideoMambaPretrain(**{**TINY, "depth": 4}, clip_return_layer=2, clip_student_return_interval=2).eval()
    assert m.return_index == [3, 1]
    norm_inputs, _ = _capture(m)
    x = torch.randn(1, 3, 4, 32, 32)
    mask = _mask(1, 8)
    with torch.no_grad():
        feats = m.forward_features(x, mask)
    assert feats.shape == (2, 1, N_TOKENS - 8, 32)
    # index 1 -> norm of the stream entering block 2; index 3 (last) -> raw stream entering block 3
    torch.testing.assert_close(feats[0], m.norm(norm_inputs[2]))
    assert 3 not in norm_inputs  # the last block's output is never used, so it is not run
    with torch.no_grad():
        hidden, residual = m.prepare_tokens(x, mask), None
        for layer in m.layers[:3]:
            hidden, residual = layer(hidden, residual)
    torch.testing.assert_close(feats[1], residual + hidden)


def test_masked_tokens_do_not_influence_the_output():
    torch.manual_seed(2)
    m = VideoMambaPretrain(**TINY).eval()
    mask = torch.zeros(1, N_TOKENS, dtype=torch.bool)
    mask[0, 1 + 2 * 4 + 3] = True  # frame 2, patch (1, 1)
    mask[0, 1 + 0 * 4 + 0] = True  # frame 0, patch (0, 0)
    x = torch.randn(1, 3, 4, 32, 32)
    x_masked_changed = x.clone()
    x_masked_changed[:, :, 2, 16:, 16:] += 5.0
    x_visible_changed = x.clone()
    x_visible_changed[:, :, 1, :16, :16] += 5.0
    with torch.no_grad():
        ref = m(x, mask)
        assert ref.shape == (1, 1, N_TOKENS - 2, 24)
        torch.testing.assert_close(m(x_masked_changed, mask), ref)
        assert not torch.allclose(m(x_visible_changed, mask), ref, atol=1e-4)


def test_invalid_masks_are_rejected():
    m = VideoMambaPretrain(**TINY)
    x = torch.randn(2, 3, 4, 32, 32)
    with pytest.raises(ValueError, match="same number"):
        m(x, torch.stack([_mask(1, 4)[0], _mask(1, 5)[0]]))
    cls_masked = _mask(2, 4)
    cls_masked[:, 0] = True
    with pytest.raises(ValueError, match="cls"):
        m(x, cls_masked)
    with pytest.raises(ValueError, match="bool of shape"):
        m(x, torch.zeros(2, N_TOKENS - 1, dtype=torch.bool))


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="clip_decoder_embed_dim"):
        VideoMambaPretrain(**TINY, clip_decoder_embed_dim=64)
    with pytest.raises(ValueError, match="does not fit"):
        VideoMambaPretrain(**TINY, clip_return_layer=3, clip_student_return_interval=2)


def test_registered_student_trains_with_checkpointing():
    torch.manual_seed(3)
    m = timm.create_model("videomamba_tiny_pretrain", img_size=32, num_frames=4, depth=2, embed_dim=16,
                          clip_decoder_embed_dim=16, clip_output_dim=8, clip_return_layer=2, drop_path_rate=0.1,
                          use_checkpoint=True, checkpoint_num=1)
    x = torch.randn(2, 3, 4, 32, 32)
    out = m(x, _mask(2, 10))
    assert out.shape == (2, 2, N_TOKENS - 10, 8)
    target = F.normalize(torch.randn_like(out), dim=-1)
    losses = []
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(4):
        loss = (2 - 2 * (m(x, _mask(2, 10)) * target).sum(-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
