"""VideoMamba backbone: official key layout, exact parameter counts, token order, block composition,
drop-path / gradient checkpointing, and the timm registry."""
import pytest
import timm
import torch
from timm.layers import RmsNormFp32
from torch import nn

from configs import finetune
import models  # noqa: F401  (registers the models with timm)
from models.factory import build_classifier
from models.mamba_mixer import BiMambaMixer
from models.videomamba import VideoMamba

pytestmark = pytest.mark.usefixtures("torch_backend")

TINY = dict(img_size=32, patch_size=16, depth=2, embed_dim=32, num_frames=4, num_classes=5)


def _mixer_keys(prefix: str) -> set:
    names = ["A_log", "D", "A_b_log", "D_b", "in_proj.weight", "out_proj.weight", "conv1d.weight", "conv1d.bias",
             "conv1d_b.weight", "conv1d_b.bias", "x_proj.weight", "x_proj_b.weight", "dt_proj.weight",
             "dt_proj.bias", "dt_proj_b.weight", "dt_proj_b.bias"]
    return {f"{prefix}.mixer.{n}" for n in names} | {f"{prefix}.norm.weight"}


def _rms(x, w, eps=1e-5):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def test_state_dict_keys_and_shapes_are_official():
    m = VideoMamba(**TINY)
    sd = m.state_dict()
    expected = {"cls_token", "pos_embed", "temporal_pos_embedding", "patch_embed.proj.weight", "patch_embed.proj.bias",
                "head.weight", "head.bias", "norm_f.weight"} | _mixer_keys("layers.0") | _mixer_keys("layers.1")
    assert set(sd) == expected
    assert sd["pos_embed"].shape == (1, 5, 32)
    assert sd["temporal_pos_embedding"].shape == (1, 4, 32)
    assert sd["patch_embed.proj.weight"].shape == (32, 3, 1, 16, 16)
    assert sd["head.weight"].shape == (5, 32)
    assert VideoMamba(**{**TINY, "kernel_size": 2}).state_dict()["temporal_pos_embedding"].shape == (1, 2, 32)


@pytest.mark.parametrize("name,count", [
    ("videomamba_tiny", 7_033_744), ("videomamba_small", 25_568_656), ("videomamba_middle", 73_875_856)])
def test_registered_parameter_counts(name, count):
    with torch.device("meta"):
        m = timm.create_model(name, num_frames=8, num_classes=400)
    assert sum(p.numel() for p in m.parameters()) == count
    assert m.default_cfg["input_size"] == (3, 8, 224, 224) and not m.default_cfg["url"]


def test_tokens_are_cls_then_frames_spatial_first():
    torch.manual_seed(0)
    m = VideoMamba(**{**TINY, "img_size": 48})
    with torch.no_grad():
        m.cls_token.normal_()
        m.temporal_pos_embedding.normal_()
    x = torch.randn(2, 3, 4, 48, 48)
    tokens = m.embed(x)
    patches = m.patch_embed(x)  # (B, C, T, 3, 3)
    assert tokens.shape == (2, 1 + 4 * 9, 32)
    torch.testing.assert_close(tokens[:, 0], (m.cls_token + m.pos_embed[:, 0]).expand(2, 1, -1)[:, 0])
    for t in range(4):
        for s in range(9):
            want = patches[:, :, t, s // 3, s % 3] + m.pos_embed[0, 1 + s] + m.temporal_pos_embedding[0, t]
            torch.testing.assert_close(tokens[:, 1 + t * 9 + s], want)


def test_forward_composes_prenorm_residual_blocks():
    torch.manual_seed(1)
    m = VideoMamba(**TINY).eval()
    with torch.no_grad():
        for layer in m.layers:
            layer.norm.weight.uniform_(0.5, 1.5)
        m.norm_f.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        residual = m.embed(x)
        hidden = m.layers[0].mixer(_rms(residual, m.layers[0].norm.weight))
        residual = residual + hidden
        hidden = m.layers[1].mixer(_rms(residual, m.layers[1].norm.weight))
        tokens = _rms(residual + hidden, m.norm_f.weight)
        feature = tokens[:, 0]
        logits = feature @ m.head.weight.T + m.head.bias
        torch.testing.assert_close(m.forward_features(x), tokens, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.forward_head(m.forward_features(x), pre_logits=True), feature,
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m(x), logits, rtol=1e-5, atol=1e-5)


def test_input_grid_mismatch_is_a_clear_error():
    m = VideoMamba(**TINY)
    with pytest.raises(ValueError, match="token grid"):
        m(torch.randn(1, 3, 8, 32, 32))


def test_drop_path_checkpointing_and_backward():
    torch.manual_seed(2)
    plain = VideoMamba(**TINY, drop_path_rate=0.5)
    ckpt = VideoMamba(**TINY, drop_path_rate=0.5, use_checkpoint=True, checkpoint_num=2)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 4, 32, 32)
    plain.eval(), ckpt.eval()
    torch.testing.assert_close(plain(x), ckpt(x))
    plain.train(), ckpt.train()
    torch.manual_seed(7)
    out_plain = plain(x)
    torch.manual_seed(7)
    out_ckpt = ckpt(x)
    torch.testing.assert_close(out_plain, out_ckpt)
    torch.manual_seed(8)
    assert not torch.allclose(plain(x), out_plain), "drop_path must make training forwards stochastic"
    out_plain.sum().backward()
    out_ckpt.sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_token_and_head_dropout_in_training_only():
    """``drop_rate`` (--drop) drops embedded tokens before the blocks, ``fc_drop_rate`` the cls vector the head
    sees; kept entries are scaled by 1 / (1 - p), and evaluation drops nothing."""
    torch.manual_seed(0)
    x, tokens = torch.randn(2, 3, 4, 32, 32), torch.randn(2, 5, 32)
    m = VideoMamba(**TINY, drop_rate=0.5, fc_drop_rate=0.5).train()
    for dropped, full in ((m.prepare_tokens(x), m.embed(x)), (m.forward_head(tokens, pre_logits=True), tokens[:, 0])):
        kept = dropped != 0
        assert 0.3 < kept.float().mean() < 0.7
        torch.testing.assert_close(dropped[kept], 2 * full[kept])
    m.eval()
    assert torch.equal(m.prepare_tokens(x), m.embed(x))
    assert torch.equal(m.forward_head(tokens, pre_logits=True), tokens[:, 0])


def test_no_weight_decay_and_layers():
    m = VideoMamba(**TINY)
    nwd = m.no_weight_decay()
    # the official list; the 2-D A_log / A_b_log are decayed (1-D D / D_b are exempt by the optimiser's 1-D rule)
    assert nwd == {"pos_embed", "cls_token", "temporal_pos_embedding"}
    assert m.get_num_layers() == 2


def _official_init_rules(model, mamba_dt_init: bool) -> dict:
    """{parameter name: (rule, value)} from the official code's init order: its blanket Linear init (trunc_normal
    .02, bias 0: ``segm_init_weights``) over every module, pos_embed trunc_normal .02, then Mamba's
    ``_init_weights`` (out_proj: kaiming_uniform(a=sqrt 5) / sqrt(depth)); the rest keeps its construction init."""
    rules = {"pos_embed": ("normal", 0.02), "cls_token": ("const", 0.0), "temporal_pos_embedding": ("const", 0.0)}
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, BiMambaMixer):
            s4d = torch.log(torch.arange(1, module.d_state + 1, dtype=torch.float32)).expand(module.d_inner, -1)
            rules.update({f"{name}.A_log": ("equal", s4d), f"{name}.A_b_log": ("equal", s4d),
                          f"{name}.D": ("const", 1.0), f"{name}.D_b": ("const", 1.0)})
        elif isinstance(module, nn.Linear) and leaf == "out_proj":
            rules[f"{name}.weight"] = ("uniform", module.in_features ** -0.5 / len(model.layers) ** 0.5)
        elif isinstance(module, nn.Linear) and mamba_dt_init and leaf in ("dt_proj", "dt_proj_b"):
            rules[f"{name}.weight"] = ("uniform", module.in_features ** -0.5)
            rules[f"{name}.bias"] = ("softplus_in", (1e-3, 0.1))
        elif isinstance(module, nn.Linear):  # in_proj, x_proj, dt_proj (official), head, decoders
            rules[f"{name}.weight"] = ("normal", 0.02)
            if module.bias is not None:
                rules[f"{name}.bias"] = ("const", 0.0)
        elif isinstance(module, (nn.Conv1d, nn.Conv3d)):  # PyTorch's default: bound 1/sqrt(fan_in) for both
            bound = module.weight[0].numel() ** -0.5
            rules[f"{name}.weight"] = rules[f"{name}.bias"] = ("uniform", bound)
        elif isinstance(module, nn.LayerNorm):
            rules[f"{name}.weight"], rules[f"{name}.bias"] = ("const", 1.0), ("const", 0.0)
        elif isinstance(module, RmsNormFp32):
            rules[f"{name}.weight"] = ("const", 1.0)
    return rules


def _check_init(name: str, p: torch.Tensor, rule: str, value) -> None:
    n = p.numel()
    tol = 5 * 0.71 / n ** 0.5  # 5 sigma of a sample std (normal: 0.71/sqrt(n) relative; uniform: less)
    if rule == "const":
        assert torch.equal(p, torch.full_like(p, value)), name
    elif rule == "equal":
        assert torch.equal(p, value), name
    elif rule == "normal":  # trunc_normal_(std) truncates at +-2 absolute
        assert p.abs().max() <= 2 and abs(float(p.mean())) <= 5 * value / n ** 0.5, name
        assert float(p.std()) == pytest.approx(value, rel=tol), name
    elif rule == "uniform":
        assert p.abs().max() <= value, name
        assert float(p.std()) == pytest.approx(value / 3 ** 0.5, rel=tol), name
    else:  # softplus(bias) = a dt log-uniform in [dt_min, dt_max]
        dt = torch.nn.functional.softplus(p)
        assert dt.min() >= value[0] * (1 - 1e-4) and dt.max() <= value[1] * (1 + 1e-4), name
        assert float(dt.log().std()) > 0.5, name  # spread over the log range (its uniform std is 1.33)


@pytest.mark.parametrize("variant,kwargs", [("videomamba_tiny", {"num_classes": 64}),
                                            ("videomamba_tiny_pretrain", {"clip_output_dim": 64})])
@pytest.mark.parametrize("mamba_dt_init", [False, True])
def test_init_of_every_parameter_follows_the_official_rule(variant, kwargs, mamba_dt_init):
    torch.manual_seed(0)
    size = dict(img_size=64, patch_size=16, depth=3, embed_dim=64, num_frames=4)
    m = timm.create_model(variant, mamba_dt_init=mamba_dt_init, **size, **kwargs).requires_grad_(False)
    rules = _official_init_rules(m, mamba_dt_init)
    params = dict(m.named_parameters())
    assert set(rules) == set(params)  # every parameter family has its rule
    for name, p in params.items():
        _check_init(name, p, *rules[name])
    dt_bias = m.layers[0].mixer.dt_proj.bias
    assert bool(dt_bias.any()) is mamba_dt_init  # official: zero (the blanket Linear init), flag: Mamba's


def test_mamba_dt_init_flag_reaches_the_model():
    torch.manual_seed(0)
    flags = dict(depth=2, embed_dim=32, input_size=32, num_frames=4, tubelet_size=1, nb_classes=4)
    assert not build_classifier(finetune(**flags).model).layers[1].mixer.dt_proj_b.bias.any()
    assert build_classifier(finetune(**flags, mamba_dt_init=True).model).layers[1].mixer.dt_proj_b.bias.all()


def test_reset_classifier():
    m = VideoMamba(**TINY)
    m.reset_classifier(3)
    assert m(torch.randn(1, 3, 4, 32, 32)).shape == (1, 3)
    m.reset_classifier(0)
    assert m(torch.randn(1, 3, 4, 32, 32)).shape == (1, 32)


def test_create_model_keywords_and_forward():
    m = timm.create_model("videomamba_tiny", img_size=32, num_frames=4, kernel_size=2, num_classes=7,
                          drop_path_rate=0.1, fc_drop_rate=0.0, use_checkpoint=False, checkpoint_num=0, depth=2,
                          embed_dim=16)
    assert isinstance(m, VideoMamba) and len(m.layers) == 2
    assert m(torch.randn(2, 3, 4, 32, 32)).shape == (2, 7)


def test_pretrained_from_local_file(tmp_path):
    torch.manual_seed(3)
    src = timm.create_model("videomamba_tiny", img_size=32, num_frames=4, depth=1, embed_dim=16, num_classes=4)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": src.state_dict()}, path)
    dst = timm.create_model("videomamba_tiny", pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                            img_size=32, num_frames=4, depth=1, embed_dim=16, num_classes=4)
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key


def test_norm_is_mambas_fp32_rmsnorm():
    """timm's RmsNormFp32 computes Mamba's RMSNorm bit for bit: fp32 math, output in the input dtype."""
    torch.manual_seed(4)
    m = VideoMamba(**TINY)
    norm = m.layers[0].norm
    assert [n for n, _ in norm.named_parameters()] == ["weight"] and norm.eps == 1e-5
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)

    def mamba_rms(x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight.float()).to(x.dtype)

    x = 3 * torch.randn(2, 7, 32)
    assert torch.equal(norm(x), mamba_rms(x))
    xb = x.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(xb)
        assert out.dtype == torch.bfloat16 and torch.equal(out, mamba_rms(xb))
        assert torch.equal(norm(x), mamba_rms(x))


def test_block_recomputes_its_norm_instead_of_the_mixer_saving_it():
    """In training each block's norm runs twice (forward, and once more in the backward, from the residual the norm
    keeps anyway) instead of the mixer keeping its (B, L, C) input; gradients equal the checkpointed model's."""
    torch.manual_seed(3)
    plain = VideoMamba(**TINY)
    ckpt = VideoMamba(**TINY, use_checkpoint=True, checkpoint_num=2)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 4, 32, 32)
    calls = []
    for block in plain.layers:
        block.norm.register_forward_hook(lambda *_: calls.append(1))
    plain(x).sum().backward()
    ckpt(x).sum().backward()
    assert len(calls) == 2 * len(plain.layers)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
