#!/usr/bin/env bash
# One call on the GPU machine: install (building the CUDA extension for this GPU), the GPU test
# tier (SKIP_TESTS=1 skips it), optionally the tuner, and monarchrt-bench. Text goes to
# $OUT/log.txt; results to $OUT/<gpu>.json and .png (commit them under bench/results/).
#   [TESTS="tests/..."] [TUNE="--shapes ... --trials N --backward"] [SKIP_BENCH=1] \
#     bash bench/device_run.sh [monarchrt-bench args...]
# Carry .whl: optuna and its needs for the tuner, nvidia-cutlass (headers) for the extension.
set -uo pipefail
OUT=${OUT:-/tmp/monarchrt-out}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 MONARCHRT_CUDA_ARCHS=90a  # the extension for this GPU only; CI compiles all three
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
MONARCHRT_BUILD_CUDA=1 python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 \
  | grep -iE "error|fail" | tail -5 | tee -a "$LOG"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | tee -a "$LOG"
TESTS=${TESTS:-tests/test_attention.py tests/test_hadamard.py tests/test_monarch_matmul.py tests/test_cuda_backend.py}
# shellcheck disable=SC2086
[ -n "${SKIP_TESTS:-}" ] || timeout 300 python3 -m pytest -q -rf $TESTS 2>&1 | tee -a "$LOG" | tail -30
if [ -n "${TUNE:-}" ]; then
  mkdir -p "$OUT/tuned"
  # shellcheck disable=SC2086
  timeout 330 python3 -m monarchrt_ops.autotune.cli --gpu "${GPU_TABLE:-h100}" --out "$OUT/tuned" $TUNE 2>&1 \
    | tee -a "$LOG" | tail -4
  export MONARCHRT_TUNED_CONFIGS="$OUT/tuned"
fi
python3 -m monarchrt_ops info 2>&1 | tee -a "$LOG" | tail -3
if [ -n "${SKIP_BENCH:-}" ]; then exit 0; fi
python3 -m monarchrt_ops.bench.cli --out "$OUT" "$@" 2>&1 | tee -a "$LOG" | tail -24
