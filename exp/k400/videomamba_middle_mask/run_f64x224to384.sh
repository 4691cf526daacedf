#!/usr/bin/env bash
# Kinetics-400 fine-tuning: VideoMamba-M, 64 frames at 384x384, initialised from
#   videomamba_m16_k400_mask_ft_f64_res224.pth.
# Published: 85.0 top-1 (64x3x4 views) with 16 GPUs x batch 1 x update_freq 2.
# Env: DATA_PATH (folder with train.csv, val.csv, test.csv), PREFIX (video root), MODEL_PATH
#   (videomamba_m16_k400_mask_ft_f64_res224.pth).
GPUS="${GPUS:-16}"
source "$(dirname "${BASH_SOURCE[0]}")/../../common.sh"
require_paths DATA_PATH PREFIX MODEL_PATH

launch run_class_finetuning.py \
    --model videomamba_middle \
    --finetune "$MODEL_PATH" \
    --data_path "$DATA_PATH" \
    --prefix "$PREFIX" \
    --data_set Kinetics_sparse \
    --split ',' \
    --nb_classes 400 \
    --batch_size 1 \
    --update_freq 2 \
    --num_sample 2 \
    --input_size 384 \
    --short_side_size 384 \
    --save_ckpt_freq 100 \
    --num_frames 64 \
    --orig_t_size 64 \
    --num_workers 12 \
    --warmup_epochs 1 \
    --tubelet_size 1 \
    --epochs 6 \
    --lr 5e-6 \
    --layer_decay 0.8 \
    --drop_path 0.4 \
    --opt adamw \
    --opt_betas 0.9 0.999 \
    --weight_decay 1e-8 \
    --test_num_segment 4 \
    --test_num_crop 3 \
    --dist_eval \
    --test_best \
    --bf16 \
    "$@"
