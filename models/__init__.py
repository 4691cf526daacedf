"""VideoMamba classifiers, pretraining students and CLIP teachers; importing this package registers them with timm."""
from .videomamba import VideoMamba, videomamba_middle, videomamba_small, videomamba_tiny
from .videomamba_pretrain import (
    VideoMambaPretrain,
    videomamba_middle_pretrain,
    videomamba_small_pretrain,
    videomamba_tiny_pretrain,
)
from .clip_teacher import CLIPTeacher, clip_b16, clip_l14, clip_l14_336
