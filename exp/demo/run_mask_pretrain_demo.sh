#!/usr/bin/env bash
# End-to-end check of the masked-pretraining pipeline on CPU in about a minute: a few epochs of attention-masked
# distillation from a small *randomly initialised* CLIP-style teacher (--clip_teacher_random; it teaches nothing
# useful), then fine-tuning a classifier from the resulting student checkpoint and its multi-view test.
# Real pretraining passes --clip_teacher_path (converted weights, see tools/convert_clip.py) instead.
# Override with the environment: DEMO_DIR (work folder), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-.venv/bin/python}
DEMO_DIR=${DEMO_DIR:-${TMPDIR:-/tmp}/videomamba_mask_demo}
# One compute thread plus one decoding worker fill 2 cores without oversubscription; on a busy 2-core machine
# two compute threads were measured ~8x slower per step. DEMO_THREADS overrides.
export OMP_NUM_THREADS=${DEMO_THREADS:-1}
SIZE=(--depth 4 --embed_dim 64 --num_frames 8 --tubelet_size 1 --input_size 32 --batch_size 8 --device cpu
      --num_workers 1)

rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"

"$PYTHON" tools/make_synthetic_dataset.py --out "$DEMO_DIR/data" --num_train 32 --num_val 16 --num_test 16 \
    --size 64 --frames 16

"$PYTHON" run_mask_pretrain.py "${SIZE[@]}" \
    --model videomamba_tiny_pretrain --data_path "$DEMO_DIR/data/train.csv" --prefix "$DEMO_DIR/data" \
    --mask_type attention --mask_ratio 0.5 --clip_teacher clip_b16 --clip_teacher_random \
    --clip_teacher_width 64 --clip_teacher_layers 2 --clip_teacher_heads 2 --clip_output_dim 64 \
    --clip_input_resolution 32 --clip_return_cls --clip_return_attn --clip_loss_type l2 \
    --epochs 3 --warmup_epochs 0 --lr 1e-3 --min_lr 1e-5 --no_lr_scale --opt_betas 0.9 0.95 \
    --output_dir "$DEMO_DIR/pretrain" --print_freq 4

"$PYTHON" run_class_finetuning.py "${SIZE[@]}" \
    --model videomamba_tiny --finetune "$DEMO_DIR/pretrain/checkpoint-latest.pth" \
    --data_set SSV2 --data_path "$DEMO_DIR/data" --prefix "$DEMO_DIR/data" --nb_classes 4 --short_side_size 32 \
    --num_sample 1 --epochs 2 --warmup_epochs 0 --lr 1e-3 --min_lr 1e-5 --no_lr_scale --layer_decay 1.0 \
    --aa none --reprob 0 --mixup 0 --cutmix 0 --test_num_segment 2 --test_num_crop 1 --test_best \
    --output_dir "$DEMO_DIR/finetune" --print_freq 4

echo "mask-pretraining demo finished; outputs in $DEMO_DIR"
