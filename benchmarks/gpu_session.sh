#!/usr/bin/env bash
# One command for a short loan of a GPU machine that has torch but not our kernels: build mamba-ssm's and
# causal-conv1d's CUDA kernels for this GPU from carried sdists (about 2 minutes, both at once), then run the GPU
# self-test (benchmarks/gpu_check.py, about 4 minutes on an H200). Run from the repository root:
#
#     bash benchmarks/gpu_session.sh [BUILD_SCRIPT] [-- gpu_check.py options, e.g. --quick]
#
# BUILD_SCRIPT (default .gpu/build_kernels.py) is a copy of ../shared/gpu/build_kernels.py: ../shared does not
# travel to the lent machine. Results go to $OUT (default .gpu/out): gpu_check.json, gpu_check.log and the build logs.
# The exit status is gpu_check.py's (1 when a check failed).
#
# Preparation, once, on the development machine, from the repository root (from ../shared/gpu/README.md; .gpu/ stays
# out of git and travels only when named in the device tool's `carry`):
#   echo /.gpu/ >> .git/info/exclude
#   mkdir -p .gpu/src .gpu/whl && cp ../shared/gpu/build_kernels.py .gpu/
#   MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE .venv/bin/python -m pip download --no-deps \
#       --no-build-isolation --no-binary :all: -d .gpu/src mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0
#   (cd .gpu/src && for f in *.tar.gz; do tar xzf "$f"; done && rm *.tar.gz)
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .gpu/whl \
#       "timm==$(.venv/bin/python -c 'import timm; print(timm.__version__)')" einops
# and then, on the lent machine: device run with command "bash benchmarks/gpu_session.sh" and carry [".gpu"].
# (einops is what mamba_ssm's Python wrappers need beyond torch and triton; they run the composed-path rows.)
set -euo pipefail

BUILD_SCRIPT=.gpu/build_kernels.py
if [ $# -gt 0 ] && [ "$1" != "--" ]; then BUILD_SCRIPT=$1; shift; fi
if [ "${1:-}" = "--" ]; then shift; fi
PY=${PYTHON:-python3}
OUT=${OUT:-.gpu/out}
BUILD=build/gpu_kernels  # ignored by git, so a warm machine keeps it between runs (rebuilds are then no-ops)
SITE=.gpu/site
mkdir -p "$OUT" "$BUILD" "$SITE"
MAMBA=$(ls -d "$PWD"/.gpu/src/mamba_ssm-*/ | head -n 1)
CONV=$(ls -d "$PWD"/.gpu/src/causal_conv1d-*/ | head -n 1)
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-8} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

# Our timm (the machine's may be older or missing) and einops, first on the path: pure-Python wheels are zip files.
for wheel in .gpu/whl/*.whl; do
    [ -e "$wheel" ] && "$PY" -m zipfile -e "$wheel" "$SITE"
done

start=$(date +%s)
"$PY" "$BUILD_SCRIPT" scan "$MAMBA" "$BUILD" > "$OUT/build_scan.log" 2>&1 & scan=$!
"$PY" "$BUILD_SCRIPT" conv "$CONV" "$BUILD" > "$OUT/build_conv.log" 2>&1 & conv=$!
status=0
wait $scan || { status=1; tail -n 20 "$OUT/build_scan.log"; }
wait $conv || { status=1; tail -n 20 "$OUT/build_conv.log"; }
echo "kernels built in $(( $(date +%s) - start )) s"
[ $status -eq 0 ] || { echo "gpu_session: a kernel build failed (logs in $OUT)"; exit 1; }

export PYTHONPATH="$PWD/$SITE:$PWD/$BUILD/selective_scan_cuda:$PWD/$BUILD/causal_conv1d_cuda:$MAMBA:$CONV${PYTHONPATH:+:$PYTHONPATH}"
# mamba_ssm's __init__ imports all of the package (triton kernels, transformers, ...); when that fails, a stand-in
# package that only points at the sdist's folder lets `mamba_ssm.ops.selective_scan_interface` import alone.
if ! "$PY" -c "import mamba_ssm" > "$OUT/mamba_ssm_import.log" 2>&1; then
    version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$MAMBA/mamba_ssm/__init__.py")
    mkdir -p .gpu/shim/mamba_ssm
    printf '__version__ = "%s"\n__path__ = ["%s"]\n' "$version" "${MAMBA}mamba_ssm" > .gpu/shim/mamba_ssm/__init__.py
    export PYTHONPATH="$PWD/.gpu/shim:$PYTHONPATH"
    echo "gpu_session: mamba_ssm's own __init__ does not import ($(tail -n 1 "$OUT/mamba_ssm_import.log")); using .gpu/shim"
fi

"$PY" benchmarks/gpu_check.py --json "$OUT/gpu_check.json" "$@" 2>&1 | tee "$OUT/gpu_check.log"
