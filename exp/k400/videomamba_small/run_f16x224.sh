#!/usr/bin/env bash
# Kinetics-400 fine-tuning: VideoMamba-S, 16 frames at 224x224, initialised from ImageNet-1K weights
#   videomamba_s16_in1k_res224.pth.
# Published: 80.8 top-1 (16x3x4 views) with 16 GPUs x batch 32.
# Env: DATA_PATH (folder with train.csv, val.csv, test.csv), PREFIX (video root), MODEL_PATH (ImageNet-1K weights
#   videomamba_s16_in1k_res224.pth).
GPUS="${GPUS:-16}"
source "$(dirname "${BASH_SOURCE[0]}")/../../common.sh"
require_paths DATA_PATH PREFIX MODEL_PATH

launch run_class_finetuning.py \
    --model videomamba_small \
    --finetune "$MODEL_PATH" \
    --data_path "$DATA_PATH" \
    --prefix "$PREFIX" \
    --data_set Kinetics_sparse \
    --split ',' \
    --nb_classes 400 \
    --batch_size 32 \
    --num_sample 2 \
    --input_size 224 \
    --short_side_size 224 \
    --save_ckpt_freq 100 \
    --num_frames 16 \
    --num_workers 12 \
    --warmup_epochs 5 \
    --tubelet_size 1 \
    --epochs 50 \
    --lr 2e-4 \
    --layer_decay 0.75 \
    --drop_path 0.35 \
    --opt adamw \
    --opt_betas 0.9 0.999 \
    --weight_decay 0.05 \
    --test_num_segment 4 \
    --test_num_crop 3 \
    --dist_eval \
    --test_best \
    --bf16 \
    "$@"
