#!/usr/bin/env bash
# One call on the GPU machine: install, GPU test tier, (optionally) tune, benchmarks; results under $OUT.
#   [TUNE="--shapes ... --trials N --backward"] [SKIP_ATTENTION=1] bash bench/device_run.sh [bench_attention args...]
# Carry .whl: optuna and its needs for the tuner, nvidia-cutlass (headers) for the extension.
set -uo pipefail
OUT=${OUT:-/tmp/monarchrt-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
# the CUDA extension for this GPU only (CI compiles all three architectures)
MONARCHRT_BUILD_CUDA=1 MONARCHRT_CUDA_ARCHS=90a python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . \
  2>&1 | grep -iE "error|fail" | tail -5
python3 -c "import monarchrt_ops._C as c; print('extension', c.compiled_archs())"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
timeout 300 python3 -m pytest -q tests/test_attention_triton.py tests/test_hadamard.py tests/test_monarch_matmul.py \
  tests/test_cuda_backend.py 2>&1 | tee "$OUT/pytest.txt" | tail -4
if [ -n "${TUNE:-}" ]; then
  # shellcheck disable=SC2086
  timeout 330 python3 -m monarchrt_ops.autotune.cli --gpu "${GPU_TABLE:-h100}" --out "$OUT" $TUNE 2>&1 | tee "$OUT/tune.txt"
  export MONARCHRT_TUNED_CONFIGS="$OUT"
fi
python3 -m monarchrt_ops info | tee "$OUT/info.txt"
python3 bench/bench_hadamard.py --json "$OUT/bench_hadamard.json" 2>&1 | tee "$OUT/bench_hadamard.txt" | tail -16
python3 bench/bench_monarch_matmul.py --json "$OUT/bench_monarch_matmul.json" 2>&1 | tail -4
if [ -z "${SKIP_ATTENTION:-}" ]; then
  python3 bench/bench_attention.py --json "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.txt"
fi
