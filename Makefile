# Set-up and checks. `make demo` and `make test` work on a fresh machine with only Python:
# the first call makes .venv and installs everything into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# torch 2.13.0 is pinned for the CPU machines (a local CPU build); triton runs there under
# TRITON_INTERPRET=1, whose numpy use needs numpy<2.4.
$(STAMP): pyproject.toml setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 triton==3.6.0 "numpy<2.4"
	$(BIN)/pip install -q -e ".[dev]"
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
