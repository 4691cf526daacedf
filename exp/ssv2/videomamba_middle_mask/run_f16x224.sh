#!/usr/bin/env bash
# Something-Something V2 fine-tuning: VideoMamba-M, 16 frames at 224x224, initialised from masked-pretrained
#   videomamba_m16_ssv2_mask_pt_f8_res224.pth.
# Published: 71.0 top-1 (16x3x2 views) with 16 GPUs x batch 16.
# Env: DATA_PATH (folder with train.csv, val.csv, test.csv), PREFIX (video root), MODEL_PATH (masked-pretrained
#   videomamba_m16_ssv2_mask_pt_f8_res224.pth).
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
    --batch_size 16 \
    --num_sample 2 \
    --input_size 224 \
    --short_side_size 224 \
    --save_ckpt_freq 100 \
    --num_frames 16 \
    --num_workers 12 \
    --warmup_epochs 5 \
    --tubelet_size 1 \
    --epochs 30 \
    --lr 1e-4 \
    --layer_decay 0.8 \
    --drop_path 0.4 \
    --opt adamw \
    --opt_betas 0.9 0.999 \
    --weight_decay 0.05 \
    --test_num_segment 2 \
    --test_num_crop 3 \
    --dist_eval \
    --test_best \
    --bf16 \
    "$@"
