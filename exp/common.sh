# Shared by every launcher under exp/: environment checks, then one distributed launch.
#
# A launcher sources this file, names the paths it needs with `require_paths`, and calls
# `launch ENTRY.py --flag value ... "$@"`. Settings come from the environment:
#   DATA_PATH, PREFIX, MODEL_PATH, CLIP_TEACHER_PATH   paths (checked by require_paths); MODEL_PATH may also name
#       released weights: a pretrained tag (videomamba_small.in1k_res224, see MODEL_ZOO.md) or hf-hub:<org>/<repo>/<file>
#   GPUS (default 8, or the launcher's published count), GPUS_PER_NODE (default min(GPUS, 8)),
#   CPUS_PER_TASK (16), PARTITION (set: slurm srun; unset: torchrun), JOB_NAME, OUTPUT_DIR,
#   NODE_RANK / MASTER_ADDR (multi-node torchrun), MASTER_PORT, PYTHON and TORCHRUN (default: the repository's
#   .venv/bin/python and .venv/bin/torchrun when .venv exists, so no venv needs activating; else from PATH).
# Nothing is started while a required path is unset, still a placeholder, or missing.

set -euo pipefail

EXP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$EXP_DIR")"
LAUNCHER="$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)/$(basename "${BASH_SOURCE[1]}")"
LAUNCHER_REL="${LAUNCHER#"$EXP_DIR"/}"

GPUS="${GPUS:-8}"
GPUS_PER_NODE="${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}"
CPUS_PER_TASK="${CPUS_PER_TASK:-16}"
PARTITION="${PARTITION:-}"
VENV_BIN="$REPO_ROOT/.venv/bin"
if [[ -x "$VENV_BIN/python" ]]; then
    PYTHON="${PYTHON:-$VENV_BIN/python}"
fi
if [[ -x "$VENV_BIN/torchrun" ]]; then
    TORCHRUN="${TORCHRUN:-$VENV_BIN/torchrun}"
fi
PYTHON="${PYTHON:-python}"
TORCHRUN="${TORCHRUN:-torchrun}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export MASTER_PORT="${MASTER_PORT:-$(( 12000 + RANDOM % 20000 ))}"

die() {
    echo "exp/$LAUNCHER_REL: error: $*" >&2
    exit 2
}

# is_weights_name VALUE: a pretrained tag (arch.tag, not a file name) or an hf-hub: id, which the entry script checks.
is_weights_name() {
    [[ "$1" == hf-hub:* ]] && return 0
    [[ "$1" =~ ^[A-Za-z0-9_]+\.([A-Za-z0-9_]+)$ && ! -e "$1" ]] || return 1
    [[ ! "${BASH_REMATCH[1],,}" =~ ^(pth|pt|bin|safetensors|ckpt|tar|pkl)$ ]]
}

# require_paths NAME...: each named variable must hold an existing path that is not a placeholder (MODEL_PATH: or
# the name of released weights).
require_paths() {
    local name value
    for name in "$@"; do
        value="${!name:-}"
        if [[ -z "$value" ]]; then
            die "$name is not set; export $name=... (see the header of exp/$LAUNCHER_REL)"
        fi
        if [[ "$name" == MODEL_PATH ]] && is_weights_name "$value"; then
            continue
        fi
        if [[ "$value" == your_* || "$value" == */your_* || "$value" == /path/to/* || "$value" == path/to/* ]]; then
            die "$name='$value' is still a placeholder; point it at your real path"
        fi
        if [[ ! -e "$value" ]]; then
            die "$name='$value' does not exist"
        fi
    done
}

# launch ENTRY ARGS...: run ENTRY (relative to the repository root) on GPUS processes.
launch() {
    local entry="$1"
    shift
    [[ -f "$REPO_ROOT/$entry" ]] || die "entry script $entry not found in $REPO_ROOT"
    [[ "$GPUS" =~ ^[1-9][0-9]*$ && "$GPUS_PER_NODE" =~ ^[1-9][0-9]*$ ]] \
        || die "GPUS ('$GPUS') and GPUS_PER_NODE ('$GPUS_PER_NODE') must be positive integers"
    (( GPUS_PER_NODE <= GPUS && GPUS % GPUS_PER_NODE == 0 )) \
        || die "GPUS=$GPUS must be a multiple of GPUS_PER_NODE=$GPUS_PER_NODE"
    local default_name="${LAUNCHER_REL%.sh}"
    JOB_NAME="${JOB_NAME:-${default_name//\//_}}"
    OUTPUT_DIR="${OUTPUT_DIR:-$REPO_ROOT/work_dirs/${LAUNCHER_REL%.sh}}"
    cd "$REPO_ROOT"
    mkdir -p "$OUTPUT_DIR"
    local common=(--output_dir "$OUTPUT_DIR" --log_dir "$OUTPUT_DIR")

    if [[ -n "$PARTITION" ]]; then
        echo "exp/$LAUNCHER_REL: srun on partition $PARTITION, $GPUS GPUs, output in $OUTPUT_DIR" >&2
        exec srun --partition="$PARTITION" \
            --job-name="$JOB_NAME" \
            --gres="gpu:$GPUS_PER_NODE" \
            --ntasks="$GPUS" \
            --ntasks-per-node="$GPUS_PER_NODE" \
            --cpus-per-task="$CPUS_PER_TASK" \
            --kill-on-bad-exit=1 \
            "$PYTHON" -u "$entry" "${common[@]}" "$@"
    fi

    local nnodes=$(( (GPUS + GPUS_PER_NODE - 1) / GPUS_PER_NODE ))
    if (( nnodes > 1 )) && [[ -z "${NODE_RANK:-}" || -z "${MASTER_ADDR:-}" ]]; then
        die "GPUS=$GPUS needs $nnodes nodes of $GPUS_PER_NODE: set PARTITION to use slurm, or run this on" \
            "every node with NODE_RANK and MASTER_ADDR set (or lower GPUS)"
    fi
    echo "exp/$LAUNCHER_REL: torchrun on $nnodes node(s) x $GPUS_PER_NODE processes, output in $OUTPUT_DIR" >&2
    exec "$TORCHRUN" --nnodes="$nnodes" \
        --node_rank="${NODE_RANK:-0}" \
        --master_addr="${MASTER_ADDR:-127.0.0.1}" \
        --master_port="$MASTER_PORT" \
        --nproc_per_node="$GPUS_PER_NODE" \
        "$entry" "${common[@]}" "$@"
}
