"""Clip transforms: numpy uint8 frames (T, H, W, 3) → ImageNet-normalised float tensor (C, T, H, W).

Every geometric op is sampled once per clip and applied to all frames at once on a uint8 (T, C, H, W) view of the
frames (channels-last memory, torch's fast uint8 resize path); the clip is cropped, resized exactly once, and only
then converted to float and normalised. Resizes are bilinear without antialiasing, as in the official pipeline
(cv2 ``INTER_LINEAR`` on uint8 frames / ``F.interpolate``), except the pretraining crop, which follows the official
PIL bilinear resize (antialiased). Geometric draws use Python's ``random``; RandAugment also uses
``np.random`` and erasing noise and colour jitter use torch, so seeding all three makes a transform reproducible
(the datasets run every training transform under ``utils.seeding.seeded_rngs``).
"""
from __future__ import annotations

import math
import random
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import ColorJitter

from datasets.rand_augment import VideoRandAugment
from datasets.random_erasing import ClipRandomErasing
from utils.config import AugmentConfig, PretrainAugmentConfig

Box = tuple[int, int, int, int]  # top, left, height, width

_MEAN_255 = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1, 1) * 255.0
_INV_STD_255 = 1.0 / (torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1, 1) * 255.0)

RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """View uint8 frames (T, H, W, 3) as a uint8 tensor (T, 3, H, W) (no copy for contiguous frames)."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 \
            or 0 in frames.shape:
        desc = f"{type(frames).__name__} {getattr(frames, 'dtype', '')} {getattr(frames, 'shape', '')}"
        raise ValueError(f"clip transform expects numpy uint8 frames of shape (T, H, W, 3), got {desc}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


def normalize_clip(clip: torch.Tensor) -> torch.Tensor:
    """uint8 (T, 3, H, W) → ImageNet-normalised float (C, T, H, W), contiguous (one conversion pass)."""
    frames, channels, height, width = clip.shape
    out = torch.empty((channels, frames, height, width), dtype=torch.float32)
    out.copy_(clip.permute(1, 0, 2, 3))
    return out.sub_(_MEAN_255).mul_(_INV_STD_255)


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Official keep-ratio rule: the short side becomes ``size``, the long side int(size · long / short)."""
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize_clip(clip: torch.Tensor, size: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """Bilinear resize of a uint8 (T, 3, H, W) clip to ``size`` (h, w) → uint8 (T, 3, h, w)."""
    if tuple(clip.shape[-2:]) == tuple(size):
        return clip
    return F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=antialias)


def resize_short_side(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 (T, 3, H, W) clip so its short side is ``size`` (``short_side_size`` rule) → uint8."""
    return resize_clip(clip, short_side_size(clip.shape[2], clip.shape[3], size))


def sample_resized_crop_box(height: int, width: int, scale: tuple[float, float] = RRC_SCALE,
                            ratio: tuple[float, float] = RRC_RATIO, attempts: int = 10) -> Box:
    """Inception-style box: area fraction uniform in ``scale``, log-uniform aspect in ``ratio``; after ``attempts``
    misses, the largest centred box whose aspect lies in ``ratio``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = random.uniform(*scale) * area
        aspect = math.exp(random.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return random.randint(0, height - h), random.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def sample_jittered_crop_box(height: int, width: int, jitter: tuple[int, int], scale: tuple[float, float] = RRC_SCALE,
                             ratio: tuple[float, float] = RRC_RATIO) -> Box:
    """Short-side jitter then random resized crop, returned as a box of the *original* frame.

    The short side is drawn uniformly in ``jitter`` (rounded), the box is drawn on the virtually rescaled frame and
    mapped back, so the frames are resized once (box → output). The crop is area-relative, so the jitter only sets
    the pixel grid the box is drawn on; the official code, given scale and ratio, skips the jitter altogether.
    """
    size = int(round(random.uniform(*jitter)))
    new_h, new_w = short_side_size(height, width, size)
    top, left, h, w = sample_resized_crop_box(new_h, new_w, scale, ratio)
    fy, fx = height / new_h, width / new_w
    y0, x0 = min(int(round(top * fy)), height - 1), min(int(round(left * fx)), width - 1)
    y1, x1 = min(int(round((top + h) * fy)), height), min(int(round((left + w) * fx)), width)
    return y0, x0, max(y1 - y0, 1), max(x1 - x0, 1)


def sample_multiscale_crop_box(height: int, width: int, input_size: int,
                               scales: tuple[float, ...] = MULTISCALE_SCALES, max_distort: int = 1) -> Box:
    """GroupMultiScaleCrop box (official pretraining): side lengths int(short · s) for s in ``scales`` (snapped to
    ``input_size`` when within 3 px), height and width scale indices at most ``max_distort`` apart, placed at one of
    13 fixed positions (corners, centre, edge centres and quarter points) on a 4-step grid."""
    base = min(height, width)
    sides = [input_size if abs(int(base * s) - input_size) < 3 else int(base * s) for s in scales]
    pairs = [(min(h, height), min(w, width)) for i, h in enumerate(sides) for j, w in enumerate(sides)
             if abs(i - j) <= max_distort]
    crop_h, crop_w = random.choice(pairs)
    h_step, w_step = (height - crop_h) // 4, (width - crop_w) // 4
    grid = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1), (3, 3)]
    row, col = random.choice(grid)
    return row * h_step, col * w_step, crop_h, crop_w


def _crop_resize(clip: torch.Tensor, box: Box, size: int, antialias: bool = False) -> torch.Tensor:
    """Crop a uint8 (T, 3, H, W) clip to ``box`` and resize to ``size``² bilinearly → uint8 (T, 3, size, size)."""
    top, left, h, w = box
    return resize_clip(clip[:, :, top:top + h, left:left + w], (size, size), antialias)


class TrainTransform:
    """Training clip augmentation, the same draw for every frame of a clip.

    Order (official): RandAugment on the decoded frames (when ``aa``), short-side jitter + random resized crop
    (scale ``RRC_SCALE``, ratio ``RRC_RATIO``) to ``input_size``, horizontal flip with p = 0.5 (when ``flip``),
    normalisation, random erasing (when ``erasing``).
    """

    def __init__(self, input_size: int, flip: bool, jitter: tuple[int, int],
                 rand_augment: VideoRandAugment | None = None, erasing: ClipRandomErasing | None = None,
                 scale: tuple[float, float] = RRC_SCALE) -> None:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"--train_crop_scale must satisfy 0 < MIN <= MAX <= 1, got {scale}")
        self.input_size = input_size
        self.flip = flip
        self.jitter = jitter
        self.scale = tuple(scale)
        self.rand_augment = rand_augment
        self.erasing = erasing

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        clip = frames_to_tensor(frames)
        if self.rand_augment is not None:
            clip = torch.from_numpy(self.rand_augment(frames)).permute(0, 3, 1, 2)
        box = sample_jittered_crop_box(clip.shape[2], clip.shape[3], self.jitter, self.scale)
        out = _crop_resize(clip, box, self.input_size)
        if self.flip and random.random() < 0.5:
            out = out.flip(-1)
        out = normalize_clip(out)
        if self.erasing is not None:
            out = self.erasing(out)
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.input_size}, jitter={self.jitter}, scale={self.scale}, "
                f"flip={self.flip}, "
                f"rand_augment={self.rand_augment}, erasing={self.erasing})")


class ValTransform:
    """Validation: short side → ``short_side``, centre crop ``crop_size``² (offset round((side − crop) / 2))."""

    def __init__(self, short_side: int, crop_size: int) -> None:
        if short_side < crop_size:
            raise ValueError(f"--short_side_size {short_side} is smaller than --input_size {crop_size}")
        self.short_side = short_side
        self.crop_size = crop_size

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        clip = resize_short_side(frames_to_tensor(frames), self.short_side)
        height, width = clip.shape[-2:]
        top, left = int(round((height - self.crop_size) / 2)), int(round((width - self.crop_size) / 2))
        return normalize_clip(clip[:, :, top:top + self.crop_size, left:left + self.crop_size])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(short_side={self.short_side}, crop={self.crop_size})"


class TestTransform:
    """Multi-crop test view: short side → ``short_side``, then crop k of K, a ``short_side``² square starting at
    int(k · (long − short) / (K − 1)) along the long side (K = 1: int((long − short) / 2), the centre)."""

    def __init__(self, short_side: int, num_crops: int) -> None:
        if num_crops < 1:
            raise ValueError(f"--test_num_crop {num_crops}: must be >= 1")
        self.short_side = short_side
        self.num_crops = num_crops

    def crop_start(self, long_side: int, crop_index: int) -> int:
        """Offset along the long side of crop ``crop_index`` (0-based)."""
        if not 0 <= crop_index < self.num_crops:
            raise ValueError(f"crop index {crop_index} out of range for --test_num_crop {self.num_crops}")
        spare = long_side - self.short_side
        if self.num_crops == 1:
            return int(spare / 2)
        return int(crop_index * spare / (self.num_crops - 1))

    def __call__(self, frames: np.ndarray, crop_index: int) -> torch.Tensor:
        clip = resize_short_side(frames_to_tensor(frames), self.short_side)
        height, width = clip.shape[-2:]
        start = self.crop_start(max(height, width), crop_index)
        size = self.short_side
        if height >= width:
            clip = clip[:, :, start:start + size, :]
        else:
            clip = clip[:, :, :, start:start + size]
        return normalize_clip(clip)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(short_side={self.short_side}, crops={self.num_crops})"


class PretrainTransform:
    """Masked pretraining, in the official order: multi-scale crop (``sample_multiscale_crop_box``) resized to
    ``input_size``² (bilinear, antialiased like PIL); with ``color_jitter`` > 0, torchvision's ColorJitter
    (brightness, contrast and saturation of that strength) drawn independently for every frame, as the official
    per-image jitter does (torch RNG; computed on uint8 tensors, which differ from PIL's by rounding);
    horizontal flip with p = 0.5 when ``flip``; normalisation."""

    def __init__(self, input_size: int, flip: bool, color_jitter: float = 0.0) -> None:
        if color_jitter < 0:
            raise ValueError(f"--color_jitter {color_jitter}: must be >= 0")
        self.input_size = input_size
        self.flip = flip
        self.color_jitter = color_jitter
        self.jitter = ColorJitter(color_jitter, color_jitter, color_jitter) if color_jitter > 0 else None

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        clip = frames_to_tensor(frames)
        box = sample_multiscale_crop_box(clip.shape[2], clip.shape[3], self.input_size)
        out = _crop_resize(clip, box, self.input_size, antialias=True)
        if self.jitter is not None:
            out = torch.stack([self.jitter(frame) for frame in out])
        if self.flip and random.random() < 0.5:
            out = out.flip(-1)
        return normalize_clip(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.input_size}, flip={self.flip}, color_jitter={self.color_jitter})"


def jitter_range(input_size: int) -> tuple[int, int]:
    """Short-side jitter range, [256, 320] scaled with the crop: round(size · 256/224) to round(size · 320/224)."""
    return int(round(input_size * 256 / 224)), int(round(input_size * 320 / 224))


def build_train_transform(augment: AugmentConfig, flip: bool) -> Callable[[np.ndarray], torch.Tensor]:
    """Training transform of ``augment`` (input_size, aa, train_interpolation, reprob, remode, recount,
    train_crop_scale: the random-resized-crop area range).

    Short-side jitter range: ``jitter_range(input_size)`` = [256, 320] at 224, scaled linearly otherwise.
    ``flip`` is False for SSv2 (left/right carries the label there). ``train_interpolation`` is the filter of
    RandAugment's geometric ops; the crop resize is bilinear as in the official code.
    """
    rand_augment = None
    if augment.aa is not None:
        rand_augment = VideoRandAugment(augment.aa, augment.input_size, augment.train_interpolation)
    erasing = None
    if augment.reprob > 0:
        erasing = ClipRandomErasing(augment.reprob, mode=augment.remode, max_count=augment.recount,
                                    num_splits=augment.recount)
    return TrainTransform(augment.input_size, flip, jitter_range(augment.input_size), rand_augment, erasing,
                          augment.train_crop_scale)


def build_val_transform(augment: AugmentConfig) -> Callable[[np.ndarray], torch.Tensor]:
    """Validation transform: short side → ``short_side_size``, centre crop ``input_size``."""
    return ValTransform(augment.short_side_size, augment.input_size)


def build_test_transform(augment: AugmentConfig) -> Callable[[np.ndarray, int], torch.Tensor]:
    """Test transform called as ``t(frames, crop_index)``: ``test_num_crop`` crops of ``short_side_size``² (reads
    only those two attributes)."""
    return TestTransform(augment.short_side_size, augment.test_num_crop)


def build_pretrain_transform(augment: PretrainAugmentConfig) -> Callable[[np.ndarray], torch.Tensor]:
    """Pretraining transform: multi-scale crop to ``input_size``, per-frame colour jitter when
    ``color_jitter`` > 0, horizontal flip when ``flip``."""
    return PretrainTransform(augment.input_size, augment.flip, augment.color_jitter)
