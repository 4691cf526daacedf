#!/usr/bin/env bash
# `make demo`: build the synthetic motion dataset (4 classes: a shape moving right, left, down or up), fine-tune
# VideoMamba-Ti (embed 192, depth 24) from scratch on CPU at 32x32 px and 8 frames, then run the multi-view test
# (2 clips x 3 crops per video) on the best checkpoint and print its top-1. Chance is 25%.
# SSV2 mode is used because it never flips horizontally: a flip would turn "moving right" into "moving left".
# Override with the environment: DEMO_DIR (work folder), PYTHON, EPOCHS, DEPTH.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-.venv/bin/python}
DEMO_DIR=${DEMO_DIR:-${TMPDIR:-/tmp}/videomamba_demo}
EPOCHS=${EPOCHS:-6}
DEPTH=${DEPTH:-24}
# One compute thread plus one decoding worker fill 2 cores without oversubscription; on a busy 2-core machine
# two compute threads were measured ~8x slower per step. DEMO_THREADS overrides.
export OMP_NUM_THREADS=${DEMO_THREADS:-1}

rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
start=$(date +%s)

"$PYTHON" tools/make_synthetic_dataset.py --out "$DEMO_DIR/data" --num_train 192 --num_val 32 --num_test 32 \
    --size 64 --frames 16

"$PYTHON" run_class_finetuning.py \
    --model videomamba_tiny --depth "$DEPTH" \
    --data_set SSV2 --data_path "$DEMO_DIR/data" --prefix "$DEMO_DIR/data" --nb_classes 4 \
    --num_frames 8 --input_size 32 --short_side_size 32 \
    --batch_size 8 --num_sample 1 --epochs "$EPOCHS" --warmup_epochs 1 \
    --lr 1e-3 --min_lr 1e-5 --no_lr_scale --weight_decay 0.05 --drop_path 0.0 \
    --aa none --reprob 0 --mixup 0 --cutmix 0 --smoothing 0.1 \
    --test_num_segment 2 --test_num_crop 3 --test_best \
    --device cpu --num_workers 1 --print_freq 12 \
    --output_dir "$DEMO_DIR/output" --log_dir "$DEMO_DIR/tensorboard"

echo "demo finished in $(( $(date +%s) - start )) s; outputs in $DEMO_DIR/output"
