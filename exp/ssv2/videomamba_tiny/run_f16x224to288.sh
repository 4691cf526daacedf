#!/usr/bin/env bash
# Something-Something V2 fine-tuning: VideoMamba-Ti, 16 frames at 288x288, initialised from
#   videomamba_t16_ssv2_f16_res224.pth.
# Published: 66.2 top-1 (16x3x2 views) with 16 GPUs x batch 32.
# Env: DATA_PATH (folder with train.csv, val.csv, test.csv), PREFIX (video root), MODEL_PATH
#   (videomamba_t16_ssv2_f16_res224.pth).
# Differs from the official script: --model videomamba_tiny, 16 frames from the f16 SSv2 model (the official one
#   names small, 64 frames).
GPUS="${GPUS:-16}"
source "$(dirname "${BASH_SOURCE[0]}")/../../common.sh"
require_paths DATA_PATH PREFIX MODEL_PATH

launch run_class_finetuning.py \
    --model videomamba_tiny \
    --finetune "$MODEL_PATH" \
    --data_path "$DATA_PATH" \
    --prefix "$PREFIX" \
    --data_set SSV2 \
    --nb_classes 174 \
    --batch_size 32 \
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
    --layer_decay 0.75 \
    --drop_path 0.1 \
    --aa rand-m5-n2-mstd0.25-inc1 \
    --opt adamw \
    --opt_betas 0.9 0.999 \
    --weight_decay 1e-8 \
    --test_num_segment 2 \
    --test_num_crop 3 \
    --dist_eval \
    --test_best \
    --bf16 \
    "$@"
