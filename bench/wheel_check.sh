#!/usr/bin/env bash
# The wheel a user installs, checked on the GPU machine: `python -m build --wheel` with the extension
# required (MONARCHRT_BUILD_CUDA=1) for every architecture of setup.py's list, installed into an empty
# target, then imported and tested with nvcc off PATH and from outside the source tree (a copy of
# tests/), so the package data, the Triton kernels and the extension all come from the wheel. Text to
# $OUT/wheel-check.txt. Carry .whl: nvidia-cutlass (headers for the build), build, pyproject_hooks and
# packaging (`python -m build` itself). Extra pytest arguments select the tests (default: the CUDA
# backend's and the attention backward's GPU tier).
#   bash bench/wheel_check.sh [pytest args...]
set -uo pipefail
OUT=${OUT:-/tmp/monarchrt-out}
mkdir -p "$OUT"
LOG="$OUT/wheel-check.txt"
SRC=$(pwd)
rm -rf /tmp/dist /tmp/wheel /tmp/buildtools  # a warm machine's earlier wheel must not be the one tested
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/nvidia_cutlass-*.whl
python3 -m pip install -q --no-index --no-deps --target /tmp/buildtools .whl/build-*.whl .whl/pyproject_hooks-*.whl \
  .whl/packaging-*.whl
start=$(date +%s)
# --no-isolation: the machine has no network, so the build uses its installed setuptools, pybind11 and cmake
PYTHONPATH=/tmp/site:/tmp/buildtools MONARCHRT_BUILD_CUDA=1 \
  python3 -m build --wheel --no-isolation --skip-dependency-check --outdir /tmp/dist . > /tmp/wheel-build.log 2>&1
rc=$?
echo "python -m build --wheel: rc $rc in $(($(date +%s) - start)) s" | tee "$LOG"
tail -3 /tmp/wheel-build.log | tee -a "$LOG"
[ "$rc" -eq 0 ] || exit 1
ls -l /tmp/dist | tee -a "$LOG"
python3 -m pip install -q --no-index --no-deps --target /tmp/wheel /tmp/dist/*.whl || exit 1
PATH=$(printf %s "$PATH" | tr ':' '\n' | grep -vi cuda | paste -sd: -)
export PATH
if command -v nvcc > /dev/null; then echo "nvcc is still on PATH: $(command -v nvcc)" | tee -a "$LOG"; exit 1; fi
echo "nvcc: not on PATH" | tee -a "$LOG"
rm -rf /tmp/wheel-tests && mkdir -p /tmp/wheel-tests && cp -r "$SRC/tests" /tmp/wheel-tests/
cd /tmp/wheel-tests || exit 1
export PYTHONPATH=/tmp/wheel
python3 -c "import monarchrt_ops, monarchrt_ops._C as C; print('installed at', monarchrt_ops.__file__); \
print('extension archs', C.compiled_archs()); assert monarchrt_ops.__file__.startswith('/tmp/wheel/'); \
assert {'90a', '100a', '120a'} <= set(C.compiled_archs())" 2>&1 | tee -a "$LOG" || exit 1
python3 -m monarchrt_ops info 2>&1 | tail -2 | tee -a "$LOG"
# (-k also matches module names: every test of test_cuda_backend.py, the gradient tests of test_attention.py)
if [ $# -eq 0 ]; then
  set -- tests/test_cuda_backend.py tests/test_attention.py -k "test_cuda_backend or gradient or far_negative"
fi
timeout 400 python3 -m pytest -q -p no:cacheprovider "$@" 2>&1 | tail -4 | tee -a "$LOG"
