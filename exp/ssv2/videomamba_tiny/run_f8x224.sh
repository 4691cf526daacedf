#!/usr/bin/env bash
# Something-Something V2 fine-tuning: VideoMamba-Ti, 8 frames at 224x224, initialised from ImageNet-1K weights
#   videomamba_t16_in1k_res224.pth.
# Published: 65.1 top-1 (8x3x2 views) with 8 GPUs x batch 64.
# Env: DATA_PATH (folder with train.csv, val.csv, test.csv), PREFIX (video root), MODEL_PATH (ImageNet-1K weights
#   videomamba_t16_in1k_res224.pth).
source "$(dirname "${BASH_SOURCE[0]}")/../../common.sh"
require_paths DATA_PATH PREFIX MODEL_PATH

launch run_class_finetuning.py \
    --model videomamba_tiny \
    --finetune "$MODEL_PATH" \
    --data_path "$DATA_PATH" \
    --prefix "$PREFIX" \
    --data_set SSV2 \
    --nb_classes 174 \
    --batch_size 64 \
    --num_sample 2 \
    --input_size 224 \
    --short_side_size 224 \
    --save_ckpt_freq 100 \
    --num_frames 8 \
    --num_workers 12 \
    --warmup_epochs 5 \
    --tubelet_size 1 \
    --epochs 35 \
    --lr 4e-4 \
    --layer_decay 0.75 \
    --drop_path 0.1 \
    --aa rand-m5-n2-mstd0.25-inc1 \
    --opt adamw \
    --opt_betas 0.9 0.999 \
    --weight_decay 0.1 \
    --test_num_segment 2 \
    --test_num_crop 3 \
    --dist_eval \
    --test_best \
    --bf16 \
    "$@"
