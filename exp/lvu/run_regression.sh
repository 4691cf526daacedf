#!/usr/bin/env bash
# LVU regression (like ratio / view count, MSE): VideoMamba-Ti, 32 frames at 224, initialised from K400
#   videomamba_t16_k400_f32_res224.pth,
# sparse sampling over the whole movie clip (data_set Kinetics_sparse).
# No LVU checkpoint was released; the paper's VideoMamba-Ti f32 numbers are listed in MODEL_ZOO.md.
# Env: DATA_PATH (task folder with train.csv, val.csv, test.csv), PREFIX (video root), MODEL_PATH.
# Regression labels must be pre-normalised as in ViS4mer.
# Differs from the official script: data_set Kinetics_sparse (the official one names LVU, whose windowing needs the
#   trimmed variant).
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
require_paths DATA_PATH PREFIX MODEL_PATH

launch run_regression_finetuning.py \
    --model videomamba_tiny \
    --finetune "$MODEL_PATH" \
    --data_path "$DATA_PATH" \
    --prefix "$PREFIX" \
    --data_set Kinetics_sparse \
    --split ',' \
    --nb_classes 1 \
    --batch_size 8 \
    --num_sample 2 \
    --input_size 224 \
    --short_side_size 224 \
    --save_ckpt_freq 100 \
    --num_frames 32 \
    --orig_t_size 32 \
    --num_workers 12 \
    --warmup_epochs 5 \
    --tubelet_size 1 \
    --epochs 70 \
    --lr 4e-4 \
    --layer_decay 0.75 \
    --drop_path 0.15 \
    --aa rand-m5-n2-mstd0.25-inc1 \
    --opt adamw \
    --opt_betas 0.9 0.999 \
    --weight_decay 0.1 \
    --test_num_segment 4 \
    --test_num_crop 3 \
    --dist_eval \
    --test_best \
    --bf16 \
    "$@"
