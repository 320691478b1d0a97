#!/usr/bin/env bash
# One call on the GPU machine: install, GPU test tier, benchmarks; results under $OUT.
#   bash bench/device_run.sh [bench args...]
set -uo pipefail
OUT=${OUT:-/tmp/monarchrt-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -m monarchrt_ops info | tee "$OUT/info.txt"
timeout 300 python3 -m pytest -q -x tests/test_attention_triton.py 2>&1 | tee "$OUT/pytest.txt" | tail -5
python3 bench/bench_attention.py --json "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.txt"
