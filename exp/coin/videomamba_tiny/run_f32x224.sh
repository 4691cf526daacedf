#!/usr/bin/env bash
# COIN fine-tuning: VideoMamba-Ti, 32 frames at 224x224, initialised from K400 videomamba_t16_k400_f32_res224.pth.
# Published: 86.2 top-1 (32x3x10 views) with 8 GPUs x batch 32.
# Env: DATA_PATH (folder with train.csv, val.csv, test.csv), PREFIX (video root), MODEL_PATH (K400
#   videomamba_t16_k400_f32_res224.pth).
source "$(dirname "${BASH_SOURCE[0]}")/../../common.sh"
require_paths DATA_PATH PREFIX MODEL_PATH

launch run_class_finetuning.py \
    --model videomamba_tiny \
    --finetune "$MODEL_PATH" \
    --data_path "$DATA_PATH" \
    --prefix "$PREFIX" \
    --data_set Kinetics_sparse \
    --split ',' \
    --nb_classes 180 \
    --batch_size 32 \
    --num_sample 2 \
    --input_size 224 \
    --short_side_size 224 \
    --save_ckpt_freq 100 \
    --num_frames 32 \
    --orig_t_size 32 \
    --num_workers 12 \
    --warmup_epochs 5 \
    --tubelet_size 1 \
    --epochs 40 \
    --lr 2e-4 \
    --layer_decay 0.75 \
    --drop_path 0.1 \
    --aa rand-m5-n2-mstd0.25-inc1 \
    --opt adamw \
    --opt_betas 0.9 0.999 \
    --weight_decay 0.1 \
    --test_num_segment 10 \
    --test_num_crop 3 \
    --dist_eval \
    --test_best \
    --bf16 \
    "$@"
