"""Convert a CLIP checkpoint's visual encoder into the teacher state dict ``models.clip_teacher`` loads.

Sources: an OpenAI CLIP TorchScript archive (``ViT-B-16.pt``) or plain state dict (keys under ``visual.``),
an open_clip checkpoint (same names, possibly nested under ``state_dict`` and prefixed ``module.``), a Hugging
Face ``CLIPModel`` / ``CLIPVisionModelWithProjection`` folder or its ``model.safetensors``. Every tensor is
checked against the chosen architecture; the output holds fp32 tensors named as in OpenAI's visual encoder,
with ``conv1.weight`` as a (width, 3, 1, p, p) Conv3d kernel.

Example: python tools/convert_clip.py --src ViT-B-16.pt --arch ViT-B/16 --out $VIDEOMAMBA_CLIP_DIR/vit_b16.pth
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import zipfile
from pathlib import Path
from typing import Any, Mapping

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python tools/x.py` from the repo root

import torch
from safetensors.torch import load_file

from models.clip_teacher import CLIP_ARCHS, CLIPTeacher
from utils.logging import setup_logging

logger = logging.getLogger(__name__)

_HF_PREFIX = "vision_model."
_HF_NAMES = {
    "vision_model.embeddings.class_embedding": "class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "positional_embedding",
    "vision_model.pre_layrnorm.weight": "ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "ln_pre.bias",
    "vision_model.post_layernorm.weight": "ln_post.weight",
    "vision_model.post_layernorm.bias": "ln_post.bias",
}
_HF_BUFFERS = {"vision_model.embeddings.position_ids"}
_HF_LAYER = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.(.+)")
_HF_LAYER_NAMES = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_HF_QKV = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)")
_NO_PROJECTION = ("Hugging Face checkpoint has no visual_projection.weight (a bare CLIPVisionModel); "
                  "save a CLIPModel or CLIPVisionModelWithProjection instead")
_RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.")


def _strip_module(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` prefix DistributedDataParallel adds to every key."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _from_hf(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Map ``vision_model.*`` / ``visual_projection.weight`` to OpenAI names; returns (tensors, number ignored)."""
    if "visual_projection.weight" not in sd:
        raise ValueError(_NO_PROJECTION)
    out: dict[str, torch.Tensor] = {"proj": sd["visual_projection.weight"].t().contiguous()}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    ignored = 0
    for key, value in sd.items():
        if key in _HF_NAMES:
            out[_HF_NAMES[key]] = value
        elif key == "visual_projection.weight":
            continue
        elif key in _HF_BUFFERS or not key.startswith(_HF_PREFIX):
            ignored += 1
        elif match := _HF_LAYER.fullmatch(key):
            layer, rest = int(match.group(1)), match.group(2)
            qkv_match = _HF_QKV.fullmatch(rest)
            module, _, param = rest.rpartition(".")
            if qkv_match:
                qkv.setdefault((layer, qkv_match.group(2)), {})[qkv_match.group(1)] = value
            elif module in _HF_LAYER_NAMES:
                out[f"transformer.resblocks.{layer}.{_HF_LAYER_NAMES[module]}.{param}"] = value
            else:
                raise ValueError(f"unrecognised Hugging Face vision tensor {key!r}; not a CLIP ViT this tool supports")
        else:
            raise ValueError(f"unrecognised Hugging Face vision tensor {key!r}; not a CLIP ViT this tool supports")
    for (layer, param), parts in sorted(qkv.items()):
        absent = [f"vision_model.encoder.layers.{layer}.self_attn.{p}_proj.{param}" for p in "qkv" if p not in parts]
        if absent:
            raise ValueError(f"Hugging Face checkpoint lacks {absent}")
        out[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat([parts[p] for p in "qkv"], dim=0)
    return out, ignored


def _detect(sd: Mapping[str, Any]) -> tuple[str, dict[str, torch.Tensor], int]:
    """Identify the naming scheme; returns (naming, OpenAI-named visual tensors, number of ignored tensors)."""
    tensors = {k: v for k, v in _strip_module(sd).items() if isinstance(v, torch.Tensor)}
    if any(k.startswith(_HF_PREFIX) for k in tensors):
        out, ignored = _from_hf(tensors)
        return "Hugging Face", out, ignored
    if "embeddings.patch_embedding.weight" in tensors:  # CLIPVisionModel saved by transformers >= 5
        raise ValueError(_NO_PROJECTION)
    if "visual.conv1.weight" in tensors:
        visual = {k[len("visual."):]: v for k, v in tensors.items() if k.startswith("visual.")}
        return "OpenAI/open_clip", visual, len(tensors) - len(visual)
    if "conv1.weight" in tensors and "proj" in tensors:
        return "OpenAI visual encoder", tensors, 0
    sample = sorted(tensors)[:5] if tensors else sorted(sd)[:5]
    raise ValueError(f"not a CLIP model: found neither 'visual.conv1.weight' (OpenAI/open_clip) nor "
                     f"'vision_model.*' (Hugging Face) tensors; first keys: {sample}")


def infer_config(sd: Mapping[str, torch.Tensor], heads: int | None = None) -> dict[str, int]:
    """Teacher sizes read off OpenAI-named weights; heads (not visible in shapes) default to width // 64 as in CLIP."""
    absent = [k for k in ("conv1.weight", "positional_embedding", "proj") if k not in sd]
    if absent:
        raise ValueError(f"cannot infer the architecture: the weights lack {absent}")
    width, patch = sd["conv1.weight"].shape[0], sd["conv1.weight"].shape[-1]
    grid = int(round((sd["positional_embedding"].shape[0] - 1) ** 0.5))
    layers = len({int(m.group(1)) for k in sd if (m := _RESBLOCK.match(k))})
    return dict(input_resolution=grid * patch, patch_size=patch, width=width, layers=layers,
                heads=heads or max(width // 64, 1), output_dim=sd["proj"].shape[1])


def convert_state_dict(
    sd: Mapping[str, Any], arch: str | Mapping[str, int], heads: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Convert a CLIP state dict (any supported naming) to the teacher's, validated against ``arch``.

    ``arch`` is a name of ``CLIP_ARCHS``, "custom" (sizes inferred from the weights, ``heads`` or width // 64),
    or an explicit dict of CLIPTeacher sizes. Returns (fp32 state dict, report with naming, arch, config and counts).
    Raises ValueError naming the first tensor that does not fit the architecture.
    """
    naming, visual, ignored = _detect(sd)
    conv = visual.get("conv1.weight")
    if conv is not None and conv.ndim == 4:
        visual["conv1.weight"] = conv.unsqueeze(2)
    if isinstance(arch, str) and arch == "custom":
        config, name = infer_config(visual, heads), "custom"
    elif isinstance(arch, str):
        if arch not in CLIP_ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {[*CLIP_ARCHS, 'custom']}")
        config, name = dict(CLIP_ARCHS[arch]), arch
    else:
        config, name = dict(arch), "custom"
    with torch.device("meta"):
        expected = CLIPTeacher(**config).state_dict()
    for key, want in expected.items():
        if key in visual and visual[key].shape != want.shape:
            raise ValueError(f"weights do not fit {name}: {key} has shape {tuple(visual[key].shape)}, {name} expects "
                             f"{tuple(want.shape)} (wrong --arch?)")
    missing = [k for k in expected if k not in visual]
    unexpected = [k for k in visual if k not in expected]
    if missing or unexpected:
        raise ValueError(f"weights do not fit {name} (a different depth or not a plain CLIP ViT): "
                         f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    out = {k: visual[k].detach().to(torch.float32).contiguous() for k in expected}
    report = dict(naming=naming, arch=name, config=config, num_tensors=len(out), num_ignored=ignored,
                  source_dtype=str(next(iter(visual.values())).dtype).replace("torch.", ""))
    return out, report


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding ``constants.pkl`` (a torch.save zip does not)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _read_hf_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Weights (single or sharded safetensors, or pytorch_model.bin) and config.json of a Hugging Face folder."""
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else None
    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors"), config
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        sd: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            sd.update(load_file(folder / shard))
        return sd, config
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True), config
    raise ValueError(f"{folder}: folder without model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def read_source(path: str | Path) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
    """Read a checkpoint; returns (state dict, container format, Hugging Face config or None)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        sd, config = _read_hf_folder(path)
        return sd, "Hugging Face folder", config
    if path.suffix == ".safetensors":
        return load_file(path), "safetensors file", None
    if _is_torchscript(path):
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict()), "TorchScript archive", None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable checkpoint (PyTorch, TorchScript or safetensors): "
                         f"{type(exc).__name__}: {exc}") from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return dict(obj["state_dict"]), "checkpoint with nested state_dict (open_clip)", None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: not a CLIP model (holds a {type(obj).__name__}, not a state dict)")
    return dict(obj), "plain state dict", None


def _hf_vision_config(config: Mapping[str, Any]) -> tuple[int | None, list[str]]:
    """Attention heads named by a Hugging Face config.json (not visible in shapes), and warnings about it."""
    vision = config.get("vision_config", config)
    act = vision.get("hidden_act", "quick_gelu")
    notes = [] if act == "quick_gelu" else [f"config.json uses hidden_act={act!r}; the teacher uses QuickGELU"]
    return vision.get("num_attention_heads"), notes


def convert_file(src: str | Path, arch: str | Mapping[str, int], out: str | Path) -> dict[str, Any]:
    """Read ``src``, convert it for ``arch`` and torch.save the teacher state dict to ``out``; returns the report."""
    sd, container, hf_config = read_source(src)
    heads, notes = _hf_vision_config(hf_config) if hf_config is not None else (None, [])
    try:
        state, report = convert_state_dict(sd, arch, heads=heads)
        if heads is not None and heads != report["config"]["heads"]:
            raise ValueError(f"config.json has num_attention_heads={heads}, {report['arch']} has "
                             f"{report['config']['heads']} (wrong --arch?)")
    except ValueError as exc:
        raise ValueError(f"{src}: {exc}") from exc
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    for note in notes:
        logger.warning(note)
    return dict(report, source=str(src), container=container, out=str(out), notes=notes)


def main(argv: list[str] | None = None) -> None:
    """Command line: convert, print what was found and written; exit status 2 with the reason on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="OpenAI .pt, open_clip checkpoint, HF folder or .safetensors")
    parser.add_argument("--arch", required=True, choices=[*CLIP_ARCHS, "custom"],
                        help="target architecture; 'custom' infers the sizes from the weights")
    parser.add_argument("--out", required=True, help="output file, e.g. $VIDEOMAMBA_CLIP_DIR/vit_b16.pth")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        report = convert_file(args.src, args.arch, args.out)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"source: {report['source']} ({report['container']}, {report['naming']} names, {report['source_dtype']})")
    print(f"arch: {report['arch']} {report['config']}")
    print(f"wrote {report['num_tensors']} tensors (fp32) to {report['out']}; ignored {report['num_ignored']} "
          "non-visual tensors")


if __name__ == "__main__":
    main()
