#!/usr/bin/env bash
# Masked pretraining on Something-Something V2: VideoMamba-M student, CLIP-ViT-B/16 teacher, attention masking
#   (80%),
# 8 frames at 224, 801 epochs, 32 GPUs x batch 64.
# Env: DATA_PATH (the train.csv list itself), PREFIX (video root),
#      CLIP_TEACHER_PATH (teacher weights written by tools/convert_clip.py --arch ViT-B/16).
GPUS="${GPUS:-32}"
source "$(dirname "${BASH_SOURCE[0]}")/../../common.sh"
require_paths DATA_PATH PREFIX CLIP_TEACHER_PATH

launch run_mask_pretrain.py \
    --model videomamba_middle_pretrain \
    --data_path "$DATA_PATH" \
    --prefix "$PREFIX" \
    --split ',' \
    --num_sample 1 \
    --flip True \
    --mask_type attention \
    --mask_ratio 0.8 \
    --clip_teacher clip_b16 \
    --clip_teacher_path "$CLIP_TEACHER_PATH" \
    --clip_loss_ratio 1 \
    --clip_loss_type l2 \
    --clip_decoder_embed_dim 576 \
    --clip_output_dim 512 \
    --clip_norm_type l2 \
    --clip_return_layer 1 \
    --clip_return_interval 1 \
    --clip_student_return_interval 1 \
    --clip_return_cls \
    --clip_return_attn \
    --tubelet_size 1 \
    --lr 1.5e-4 \
    --drop_path 0.4 \
    --batch_size 64 \
    --num_segments 8 \
    --num_frames 8 \
    --sampling_rate 1 \
    --num_workers 12 \
    --opt adamw \
    --opt_betas 0.9 0.95 \
    --warmup_epochs 40 \
    --save_ckpt_freq 1000 \
    --epochs 801 \
    --bf16 \
    "$@"
