"""What differs between jobs that share the training loop: loss, outputs and metric.

A task (``engines.contracts.Task`` / ``EvalTask``) turns a batch (``utils.batch``) into a loss for training
(``training_loss``) and, for evaluation, into per-sample outputs (``predict``) and summable statistics
(``batch_stats``).
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from engines.masking import attention_mask, with_cls_column
from utils.batch import EvalBatch, MaskedBatch, TrainBatch

logger = logging.getLogger(__name__)


def _video(batch: TrainBatch | EvalBatch | MaskedBatch, device: torch.device,
           dtype: torch.dtype | None) -> torch.Tensor:
    x = batch.video.to(device, non_blocking=True)
    return x.to(dtype) if dtype is not None else x


class ClassificationTask:
    """Cross-entropy (soft targets with mixup, label smoothing otherwise); metrics top-1/top-5 accuracy (%)."""

    name = "classification"
    best_key, higher_is_better = "acc1", True
    stat_keys = ("loss", "acc1", "acc5", "n")  # of batch_stats

    def __init__(self, num_classes: int, smoothing: float = 0.0, mixup: Callable | None = None) -> None:
        self.num_classes = num_classes
        self.mixup = mixup
        if mixup is not None:
            self.criterion: torch.nn.Module = SoftTargetCrossEntropy()
        elif smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=smoothing)
        else:
            self.criterion = torch.nn.CrossEntropyLoss()

    def training_loss(self, model: torch.nn.Module, batch: TrainBatch, device: torch.device,
                      dtype: torch.dtype | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        x = _video(batch, device, dtype)
        target = batch.label.to(device, non_blocking=True).long()
        if self.mixup is not None:
            x, target = self.mixup(x, target)
        logits = model(x).float()
        loss = self.criterion(logits, target)
        if self.mixup is not None:
            return loss, {}
        # The official "class_acc": the fraction of the batch whose arg-max is the label (without mixup only).
        return loss, {"class_acc": float((logits.detach().argmax(-1) == target).float().mean())}

    def predict(self, model: torch.nn.Module, batch: EvalBatch, device: torch.device,
                dtype: torch.dtype | None = None) -> torch.Tensor:
        """Logits (B, num_classes) in fp32."""
        return model(_video(batch, device, dtype)).float()

    def batch_stats(self, outputs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Sums over the batch: ``loss``, ``acc1``, ``acc5`` (counts ×100) and ``n``. With fewer than 5 classes
        ``acc5`` is top-1, as the official validation (``maxk = 5 if nb_classes >= 5 else 1``)."""
        labels = labels.long().to(outputs.device)
        k = 5 if outputs.shape[1] >= 5 else 1
        top = outputs.topk(k, dim=1).indices
        hits = top.eq(labels[:, None])
        return {"loss": float(F.cross_entropy(outputs, labels, reduction="sum")),
                "acc1": 100.0 * float(hits[:, 0].sum()), "acc5": 100.0 * float(hits.any(dim=1).sum()),
                "n": float(len(labels))}


class RegressionTask:
    """One real-valued output per clip (``--nb_classes 1``); loss and metric are MSE."""

    name = "regression"
    best_key, higher_is_better = "mse", False
    stat_keys = ("loss", "mse", "n")  # of batch_stats

    def training_loss(self, model: torch.nn.Module, batch: TrainBatch, device: torch.device,
                      dtype: torch.dtype | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        pred = self.predict(model, batch, device, dtype)
        target = batch.label.to(device, non_blocking=True).float().reshape(-1)
        return F.mse_loss(pred.reshape(-1), target), {}

    def predict(self, model: torch.nn.Module, batch: TrainBatch | EvalBatch, device: torch.device,
                dtype: torch.dtype | None = None) -> torch.Tensor:
        """Predictions (B, 1) in fp32."""
        out = model(_video(batch, device, dtype)).float()
        if out.ndim != 2 or out.shape[1] != 1:
            raise ValueError(f"regression needs a model with one output (--nb_classes 1), got {tuple(out.shape)}")
        return out

    def batch_stats(self, outputs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        err = outputs.reshape(-1) - labels.float().to(outputs.device).reshape(-1)
        sq = float((err**2).sum())
        return {"loss": sq, "mse": sq, "n": float(err.numel())}


def distillation_loss(student: torch.Tensor, target: torch.Tensor, loss_type: str) -> torch.Tensor:
    """``l2``: mean(2 − 2⟨s, t⟩) over tokens (features L2-normalised); ``mse``; ``smooth_l1``. Shapes (K, B, N, D)."""
    if loss_type == "l2":
        return (2 - 2 * (student * target).sum(dim=-1)).mean()
    if loss_type == "mse":
        return F.mse_loss(student, target)
    if loss_type == "smooth_l1":
        return F.smooth_l1_loss(student, target)
    raise ValueError(f"unknown --clip_loss_type {loss_type!r} (l2, mse, smooth_l1)")


class DistillationTask:
    """Masked distillation of a frozen CLIP teacher into the student's visible tokens.

    Masks are patch-token masks (B, T'·H'·W') (``utils.batch``): the batch's, or drawn from the teacher's attention
    (``mask_type`` attention). The student takes them with a cls column (``with_cls_column``, here only) and returns
    its cls feature first; with ``align_cls`` (``--clip_return_cls``) the teacher returns one too and both are
    compared, otherwise the student's is dropped.
    """

    name = "distillation"
    best_key, higher_is_better = "loss", False

    def __init__(self, teacher: torch.nn.Module, mask_type: str, mask_ratio: float, loss_type: str,
                 loss_ratio: float, clip_input_resolution: int, clip_input_norm: str, align_cls: bool) -> None:
        if clip_input_norm not in ("imagenet", "clip"):
            raise ValueError(f"--clip_input_norm must be imagenet or clip, got {clip_input_norm!r}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.mask_type = mask_type
        self.mask_ratio = mask_ratio
        self.loss_type = loss_type
        self.loss_ratio = loss_ratio
        self.resolution = clip_input_resolution
        self.num_prefix = 1 if align_cls else 0
        # ImageNet-normalised → CLIP-normalised is one affine map per channel: x · scale + shift.
        self.renorm: tuple[torch.Tensor, torch.Tensor] | None = None
        if clip_input_norm == "clip":
            im_mean, im_std, cl_mean, cl_std = (
                torch.tensor(v).view(1, 3, 1, 1, 1)
                for v in (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
            self.renorm = (im_std / cl_std, (im_mean - cl_mean) / cl_std)

    def teacher_input(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) ImageNet-normalised → resized to the CLIP resolution, optionally CLIP-normalised."""
        b, c, t, h, w = video.shape
        x = video.float()
        if self.renorm is not None:
            scale, shift = (t.to(x.device) for t in self.renorm)
            x = x * scale + shift
        if (h, w) != (self.resolution, self.resolution):
            frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
            frames = F.interpolate(frames, size=(self.resolution, self.resolution), mode="bicubic", align_corners=False)
            x = frames.reshape(b, t, c, self.resolution, self.resolution).permute(0, 2, 1, 3, 4)
        return x

    def targets_and_mask(self, batch: MaskedBatch, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher features of the visible tokens (K, B, [1 +] N_vis, D), the cls feature first with
        ``align_cls``, and the patch-token mask (B, T'·H'·W')."""
        with torch.no_grad():
            out = self.teacher(self.teacher_input(video))
            feats, attn = out if isinstance(out, tuple) else (out, None)
            if self.mask_type == "attention":
                if attn is None:
                    raise ValueError("--mask_type attention needs the teacher's attention (--clip_return_attn)")
                mask = attention_mask(attn, video.shape[0], self.mask_ratio)
            else:
                if batch.mask is None:
                    raise ValueError(f"--mask_type {self.mask_type}: the batch carries no mask")
                mask = batch.mask.to(video.device)
            k, b, n, d = feats.shape
            if n != self.num_prefix + mask.shape[1]:
                raise ValueError(f"teacher returns {n} tokens but the mask covers {mask.shape[1]} patch tokens"
                                 f"{' + cls (--clip_return_cls)' if self.num_prefix else ''} (check --input_size, "
                                 "--clip_input_resolution and the teacher patch size)")
            patches = feats[:, :, self.num_prefix:][:, ~mask].reshape(k, b, -1, d)
            targets = torch.cat([feats[:, :, :self.num_prefix], patches], dim=2).float()
        return targets, mask

    def training_loss(self, model: torch.nn.Module, batch: MaskedBatch, device: torch.device,
                      dtype: torch.dtype | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        video = batch.video.to(device, non_blocking=True)
        targets, mask = self.targets_and_mask(batch, video)
        student = model(video.to(dtype) if dtype is not None else video, with_cls_column(mask)).float()
        student = student[:, :, 1 - self.num_prefix:]  # its cls feature comes first: kept only when aligned
        if student.shape != targets.shape:
            raise ValueError(f"student output {tuple(student.shape)} does not match teacher targets "
                             f"{tuple(targets.shape)} (check --clip_return_layer and --clip_output_dim)")
        loss_clip = distillation_loss(student, targets, self.loss_type)
        # As the official engine: loss = loss_pixel (always 0 here) + clip_loss_ratio * loss_clip; both terms logged.
        return loss_clip * self.loss_ratio, {"loss_pixel": 0.0, "loss_clip": float(loss_clip.detach())}
