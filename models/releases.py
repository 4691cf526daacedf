"""The released VideoMamba checkpoints as timm pretrained tags (``timm.list_pretrained("videomamba*")``).

Every file of the official release lives in the Hugging Face hub repository ``OpenGVLab/VideoMamba``. The file
``videomamba_{t,s,m}16_<tag>.pth`` is the tag ``videomamba_{tiny,small,middle}.<tag>`` (the masked-pretraining
students, ``..._mask_pt_...``: ``videomamba_middle_pretrain.<tag>``), and ``release_cfg`` reads its classes, frames
and resolution from the name: ``videomamba_t16_k400_f8_res224.pth`` is ``videomamba_tiny.k400_f8_res224``, 400
classes, 8 frames at 224 px. The ImageNet-1K initialisations are image models; their tags build 8-frame clips (the
supervised recipes' start), with the 2D patch kernel inflated and the temporal table at zero (``num_frames=1`` gives
the image classifier). The first file of each architecture in ``RELEASES`` is its default tag: the ImageNet-1K
model at 224 px, which every supervised recipe starts from and which keeps ``timm.create_model("videomamba_tiny")``
at 1000 classes and 8x224x224 clips.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from timm.models import PretrainedCfg

from models.build import default_video_cfg

HF_HUB_ID = "OpenGVLab/VideoMamba"
IMAGE_MODEL_FRAMES = 8

_SIZES = {"t": ("tiny", "Ti"), "s": ("small", "S"), "m": ("middle", "M")}
_DATASETS = {"in1k": ("ImageNet-1K", 1000), "k400": ("Kinetics-400", 400), "ssv2": ("Something-Something V2", 174),
             "breakfast": ("Breakfast", 10), "coin": ("COIN", 180)}
_FILE_NAME = re.compile(r"videomamba_(?P<size>[tsm])16_(?P<tag>(?P<data>[a-z0-9]+)_(?P<mask>mask_pt_|mask_ft_)?"
                        r"(?:f(?P<frames>\d+)_)?res(?:\d+to)*(?P<res>\d+))\.pth")

# (official file name, published top-1 in %: the MODEL_ZOO.md tables; None: no accuracy published).
RELEASES: tuple[tuple[str, float | None], ...] = (
    # ImageNet-1K initialisations (official image_sm model zoo); the first of each size is its default tag
    ("videomamba_t16_in1k_res224.pth", 76.9),
    ("videomamba_s16_in1k_res224.pth", 81.2),
    ("videomamba_m16_in1k_res224.pth", 82.8),
    ("videomamba_t16_in1k_res224to448.pth", 79.3),
    ("videomamba_t16_in1k_res224to448to576.pth", 79.6),
    ("videomamba_s16_in1k_res224to448.pth", 83.2),
    ("videomamba_s16_in1k_res224to448to576.pth", 83.5),
    ("videomamba_m16_in1k_res224to448.pth", 83.8),
    ("videomamba_m16_in1k_res224to448to576.pth", 84.0),
    # masked pretraining (students)
    ("videomamba_m16_k400_mask_pt_f8_res224.pth", None),
    ("videomamba_m16_ssv2_mask_pt_f8_res224.pth", None),
    # Kinetics-400
    ("videomamba_t16_k400_f8_res224.pth", 76.9),
    ("videomamba_t16_k400_f16_res224.pth", 78.1),
    ("videomamba_t16_k400_f32_res224.pth", 78.8),
    ("videomamba_t16_k400_f64_res224.pth", 79.6),
    ("videomamba_t16_k400_f64_res224to384.pth", 80.3),
    ("videomamba_s16_k400_f8_res224.pth", 79.3),
    ("videomamba_s16_k400_f16_res224.pth", 80.8),
    ("videomamba_s16_k400_f32_res224.pth", 81.5),
    ("videomamba_s16_k400_f64_res224.pth", 81.8),
    ("videomamba_s16_k400_f64_res224to384.pth", 82.7),
    ("videomamba_m16_k400_f8_res224.pth", 80.6),
    ("videomamba_m16_k400_f16_res224.pth", 81.9),
    ("videomamba_m16_k400_f32_res224.pth", 82.4),
    ("videomamba_m16_k400_f64_res224.pth", 82.8),
    ("videomamba_m16_k400_f64_res224to384.pth", 83.3),
    ("videomamba_m16_k400_mask_ft_f8_res224.pth", 82.0),
    ("videomamba_m16_k400_mask_ft_f16_res224.pth", 83.4),
    ("videomamba_m16_k400_mask_ft_f32_res224.pth", 83.9),
    ("videomamba_m16_k400_mask_ft_f64_res224.pth", 84.3),
    ("videomamba_m16_k400_mask_ft_f64_res224to384.pth", 85.0),
    # Something-Something V2
    ("videomamba_t16_ssv2_f8_res224.pth", 65.1),
    ("videomamba_t16_ssv2_f16_res224.pth", 66.0),
    ("videomamba_t16_ssv2_f16_res224to288.pth", 66.2),
    ("videomamba_s16_ssv2_f8_res224.pth", 66.6),
    ("videomamba_s16_ssv2_f16_res224.pth", 67.7),
    ("videomamba_s16_ssv2_f16_res224to288.pth", 68.1),
    ("videomamba_m16_ssv2_f8_res224.pth", 67.3),
    ("videomamba_m16_ssv2_f16_res224.pth", 68.3),
    ("videomamba_m16_ssv2_f16_res224to288.pth", 68.4),
    ("videomamba_m16_ssv2_mask_ft_f8_res224.pth", 70.2),
    ("videomamba_m16_ssv2_mask_ft_f16_res224.pth", 71.0),
    ("videomamba_m16_ssv2_mask_ft_f16_res224to288.pth", 71.4),
    # Breakfast and COIN
    ("videomamba_t16_breakfast_f32_res224.pth", 94.3),
    ("videomamba_t16_breakfast_f64_res224.pth", 94.3),
    ("videomamba_s16_breakfast_f32_res224.pth", 95.3),
    ("videomamba_s16_breakfast_f64_res224.pth", 97.4),
    ("videomamba_m16_breakfast_f32_res224.pth", 94.8),
    ("videomamba_m16_breakfast_f64_res224.pth", 95.8),
    ("videomamba_m16_breakfast_mask_ft_f32_res224.pth", 97.9),
    ("videomamba_m16_breakfast_mask_ft_f64_res224.pth", 96.9),
    ("videomamba_t16_coin_f32_res224.pth", 86.2),
    ("videomamba_t16_coin_f64_res224.pth", 87.0),
    ("videomamba_s16_coin_f32_res224.pth", 88.4),
    ("videomamba_s16_coin_f64_res224.pth", 88.7),
    ("videomamba_m16_coin_f32_res224.pth", 88.3),
    ("videomamba_m16_coin_f64_res224.pth", 89.5),
    ("videomamba_m16_coin_mask_ft_f32_res224.pth", 89.6),
    ("videomamba_m16_coin_mask_ft_f64_res224.pth", 90.4),
)


@dataclass
class VideoPretrainedCfg(PretrainedCfg):
    """timm's ``PretrainedCfg`` plus ``top1``: the published top-1 accuracy (%) of the release, on the data set its
    head predicts (ImageNet-1K for the initialisations); None when none was published. timm keeps the subclass
    through ``generate_default_cfgs`` and ``resolve_pretrained_cfg``, so it reaches ``model.pretrained_cfg``."""

    top1: Optional[float] = None


def _parse(file: str) -> re.Match:
    match = _FILE_NAME.fullmatch(file)
    if match is None or match["data"] not in _DATASETS:
        raise ValueError(f"{file} is not a VideoMamba release file name (videomamba_[tsm]16_<data>_..._res<N>.pth)")
    return match


def release_name(file: str) -> str:
    """The model name with tag of an official file name: ``videomamba_t16_k400_f8_res224.pth`` ->
    ``videomamba_tiny.k400_f8_res224``; ``ValueError`` for a name outside the release's pattern."""
    match = _parse(file)
    student = "_pretrain" if match["mask"] == "mask_pt_" else ""
    return f"videomamba_{_SIZES[match['size']][0]}{student}.{match['tag']}"


def release_cfg(file: str, top1: float | None) -> VideoPretrainedCfg:
    """The pretrained cfg of an official file: hub id and file name, classes, clip size (3, T, H, W), top-1."""
    match = _parse(file)
    size = _SIZES[match["size"]][1]
    dataset, classes = _DATASETS[match["data"]]
    frames, res = int(match["frames"] or IMAGE_MODEL_FRAMES), int(match["res"])
    if match["mask"] == "mask_pt_":
        fields: dict[str, Any] = dict(num_classes=0, classifier=None, description=(
            f"VideoMamba-{size} masked-pretraining student on {dataset} (CLIP-ViT-B/16 teacher), {frames} frames "
            f"at {res} px"))
    elif match["data"] == "in1k":
        fields = dict(num_classes=classes, description=(
            f"VideoMamba-{size} ImageNet-1K classifier at {res} px (an image model: built for {frames}-frame clips "
            f"with its patch kernel inflated; num_frames=1 gives the image classifier)"))
    else:
        origin = ", fine-tuned from the masked-pretrained model" if match["mask"] else ""
        fields = dict(num_classes=classes, description=(
            f"VideoMamba-{size} {dataset} classifier, {frames} frames at {res} px{origin}"))
    cfg = default_video_cfg(
        hf_hub_id=HF_HUB_ID, hf_hub_filename=file, input_size=(3, frames, res, res), license="apache-2.0",
        paper_name="VideoMamba: State Space Model for Efficient Video Understanding", paper_ids="arXiv:2403.06977",
        origin_url="https://github.com/OpenGVLab/VideoMamba", **fields)
    return VideoPretrainedCfg(**cfg, top1=top1)


def release_cfgs(architectures: Iterable[str]) -> dict[str, VideoPretrainedCfg]:
    """``{"arch.tag": cfg}`` of the releases of ``architectures``, in ``RELEASES`` order (for
    ``timm.models.generate_default_cfgs``: the first of an architecture is its default)."""
    wanted = set(architectures)
    out = {}
    for file, top1 in RELEASES:
        name = release_name(file)
        if name.split(".", 1)[0] in wanted:
            out[name] = release_cfg(file, top1)
    return out
