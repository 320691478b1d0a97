# Set-up and checks. `make demo` and `make test` work on a fresh machine with only Python:
# the first call makes .venv and installs everything into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The CUDA extension (csrc/, CMakeLists.txt) is built, and must build, wherever nvcc is on PATH.
export MONARCHRT_BUILD_CUDA ?= $(if $(shell command -v nvcc),1,0)

# torch 2.13.0 is pinned for the CPU machines (a local CPU build); triton runs there under
# TRITON_INTERPRET=1, whose numpy use needs numpy<2.4. nvidia-cutlass is only its headers (no deps).
# diffusers (+ transformers, which WanPipeline imports) for the integration tests: neither depends on
# torch, and torch==2.13.0 in the same command keeps pip from replacing the local CPU build.
$(STAMP): pyproject.toml setup.py CMakeLists.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==2.13.0 triton==3.6.0 "numpy<2.4" pybind11 ninja
	$(BIN)/pip install -q --no-deps nvidia-cutlass==4.2.0.0
	$(BIN)/pip install -q --no-build-isolation -e ".[dev]"
	$(BIN)/pip install -q torch==2.13.0 diffusers==0.42.1 transformers==5.24.0
	touch $(STAMP)

.PHONY: demo test lint info
demo: $(STAMP)
	$(BIN)/python -m monarchrt_ops demo
	$(BIN)/python -m monarchrt_ops info

info: $(STAMP)
	$(BIN)/python -m monarchrt_ops info

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
