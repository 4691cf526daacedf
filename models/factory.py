"""The models of the entry scripts, built from the typed configuration (``utils.config``) through timm.

``build_classifier`` (fine-tuning: VideoMamba with its ``--finetune`` weights: a file, URL, pretrained tag or
``hf-hub:`` id), ``build_student`` (masked
pretraining) and ``build_teacher`` (the frozen CLIP teacher; weights from ``--clip_teacher_path``, else the
canonical file in ``$VIDEOMAMBA_CLIP_DIR``, which ``models.clip_teacher`` reads).
"""
from __future__ import annotations

import logging
from typing import Any

import timm
import torch

from models.build import check_model_name
from models.checkpoint import load_finetune_checkpoint, read_label_map
from models.clip_teacher import CLIP_VARIANTS, build_clip_teacher
from models.ops import get_backend
from utils.config import ClassifierConfig, ModelConfig, StudentConfig, TeacherConfig
from utils.errors import UsageError

logger = logging.getLogger(__name__)


def _scan_backend(model: ModelConfig) -> str:
    """``--scan_backend``, else the process default (``models.ops.get_backend``); a bad environment variable is a
    usage error."""
    if model.scan_backend is not None:
        return model.scan_backend
    try:
        return get_backend()
    except ValueError as err:
        raise UsageError(str(err)) from None


def _backbone_kwargs(model: ModelConfig) -> dict[str, Any]:
    """Constructor arguments shared by the classifier and the student; every mixer gets the run's scan backend
    (``--scan_backend``, else the process default: ``$VIDEOMAMBA_SCAN_BACKEND``, else auto) as its own
    ``backend``; ``--mamba_dt_init`` keeps Mamba's dt projection init instead of the official blanket Linear init."""
    kwargs: dict[str, Any] = dict(ssm_cfg={"backend": _scan_backend(model)},
                                  img_size=model.input_size, num_frames=model.num_frames,
                                  kernel_size=model.tubelet_size, drop_path_rate=model.drop_path,
                                  use_checkpoint=model.use_checkpoint, checkpoint_num=model.checkpoint_num,
                                  mamba_dt_init=model.mamba_dt_init)
    if model.depth is not None:
        kwargs["depth"] = model.depth
    if model.embed_dim is not None:
        kwargs["embed_dim"] = model.embed_dim
    return kwargs


def build_classifier(model: ClassifierConfig) -> torch.nn.Module:
    """The VideoMamba classifier (``nb_classes`` 1: the regressor), with the ``--finetune`` weights loaded."""
    check_model_name(model.model, "videomamba")
    net = timm.create_model(model.model, num_classes=model.nb_classes, drop_rate=model.drop,
                            fc_drop_rate=model.fc_drop_rate, **_backbone_kwargs(model))
    if model.finetune:
        label_map = read_label_map(model.label_map) if model.label_map else None
        load_finetune_checkpoint(net, model.finetune, model_key=model.model_key, model_prefix=model.model_prefix,
                                 delete_head=model.delete_head, orig_t_size=model.orig_t_size, label_map=label_map,
                                 trust_checkpoint=model.trust_checkpoint, flag="--finetune")
    logger.info("model %s: %d parameters", model.model, sum(p.numel() for p in net.parameters()))
    return net


def build_student(model: StudentConfig) -> torch.nn.Module:
    """The masked-pretraining student with its CLIP-space decoders."""
    check_model_name(model.model, "videomamba_pretrain")
    return timm.create_model(
        model.model, clip_decoder_embed_dim=model.clip_decoder_embed_dim, clip_output_dim=model.clip_output_dim,
        clip_norm_type=model.clip_norm_type, clip_return_layer=model.clip_return_layer,
        clip_student_return_interval=model.clip_student_return_interval, **_backbone_kwargs(model))


def build_teacher(teacher: TeacherConfig) -> torch.nn.Module:
    """The frozen teacher; size overrides also set its output width to ``clip_output_dim``."""
    arch = CLIP_VARIANTS[teacher.clip_teacher]
    kwargs: dict[str, Any] = dict(
        clip_norm_type=teacher.clip_norm_type, input_resolution=teacher.clip_input_resolution,
        kernel_size=teacher.tubelet_size, return_attn=teacher.clip_return_attn,
        clip_return_layer=teacher.clip_return_layer, clip_return_interval=teacher.clip_return_interval,
        clip_return_cls=teacher.clip_return_cls)
    sizes = {"width": teacher.clip_teacher_width, "layers": teacher.clip_teacher_layers,
             "heads": teacher.clip_teacher_heads}
    overrides = {k: v for k, v in sizes.items() if v is not None}
    if overrides:
        kwargs.update(overrides, output_dim=teacher.clip_output_dim)
    if teacher.clip_teacher_random:
        logger.warning("--clip_teacher_random: the teacher is randomly initialised (demo/test only)")
        return build_clip_teacher(arch, None, **kwargs)
    return build_clip_teacher(arch, teacher.clip_teacher_path or True, **kwargs)
