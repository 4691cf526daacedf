#!/usr/bin/env bash
# Something-Something V2 fine-tuning: VideoMamba-M, 16 frames at 288x288, initialised from
#   videomamba_m16_ssv2_mask_ft_f16_res224.pth.
# Published: 71.4 top-1 (16x3x2 views) with 16 GPUs x batch 6.
# Env: DATA_PATH (folder with train.csv, val.csv, test.csv), PREFIX (video root), MODEL_PATH
#   (videomamba_m16_ssv2_mask_ft_f16_res224.pth).
# Differs from the official script: --data_set SSV2 (the official one names Kinetics_sparse).
GPUS="${GPUS:-16}"
source "$(dirname "${BASH_SOURCE[0]}")/../../common.sh"
require_paths DATA_PATH PREFIX MODEL_PATH

launch run_class_finetuning.py \
    --model videomamba_middle \
    --finetune "$MODEL_PATH" \
    --data_path "$DATA_PATH" \
    --prefix "$PREFIX" \
    --data_set SSV2 \
    --nb_classes 174 \
    --batch_size 6 \
    --num_sample 2 \
    --input_size 288 \
    --short_side_size 288 \
    --save_ckpt_freq 100 \
    --num_frames 16 \
    --orig_t_size 16 \
    --num_workers 12 \
    --warmup_epochs 2 \
    --tubelet_size 1 \
    --epochs 10 \
    --lr 5e-6 \
    --layer_decay 0.8 \
    --drop_path 0.4 \
    --opt adamw \
    --opt_betas 0.9 0.999 \
    --weight_decay 1e-8 \
    --test_num_segment 2 \
    --test_num_crop 3 \
    --dist_eval \
    --test_best \
    --bf16 \
    "$@"
