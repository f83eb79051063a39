# emflow: one install recipe, two commands (make demo, make test).
# uv comes from PyPI when the machine has none; every install resolves from the committed uv.lock.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
export UV_PYTHON_DOWNLOADS := never
# trust the system certificate store (machines behind a TLS-inspecting proxy)
export UV_SYSTEM_CERTS := 1
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/.venv
# bytecode written at install: with PYTHONDONTWRITEBYTECODE set (as on these machines) every
# emflow command otherwise compiled MLflow, pandas, SQLAlchemy ... from source (3 s of 5 s)
export UV_COMPILE_BYTECODE := 1
RUN := $(UV) run --frozen --no-sync
EMFLOW_HOME ?= $(CURDIR)/.emflow
export EMFLOW_HOME

.PHONY: help setup demo test check lint typecheck cuda-check kernels bench bench-gpu clean

help:
	@echo "make demo   set up and run the retraining demo on the embedded default (SQLite, local files, CPU if no GPU)"
	@echo "make test   set up and run the linters, the type check and every test (what CI runs)"
	@echo "make check  lint + the fast unit tests (the edit loop, < 90 s on 2 cores)"
	@echo "make kernels  build the CUDA kernels ahead of time (sm_80, sm_90) into gmm_core/cuda/prebuilt"
	@echo "make lint | typecheck | cuda-check | bench | bench-gpu | clean"

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet --disable-pip-version-check "uv>=0.13,<1"

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra gpu
	@touch $@

setup: .venv/.synced

demo: setup
	$(RUN) emflow demo

# ruff format --check: the whole tree but what [tool.ruff.format] exclude names (pyproject.toml)
lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck: setup
	$(RUN) mypy

cuda-check: setup
	$(RUN) pytest -q tests/unit/gmm_core/test_cuda_compile.py

# gmm_core's CUDA kernels compiled ahead of time (NVRTC, no GPU needed; ~25 min on 2 cores), so a
# first fit loads them instead of compiling; says why and builds nothing where NVRTC is missing.
# KERNELS_ARGS narrows it, e.g. "--arch sm_90" or "--shape 16,32,diag,float32,1"
kernels: setup
	$(RUN) python -m gmm_core.build_kernels --if-available $(KERNELS_ARGS)

# the edit loop: lint and the unit tests that take seconds (no services, no GPU, nothing slow)
check: setup lint
	$(RUN) pytest -q tests/unit -m "not slow and not integration and not gpu"

test: setup lint typecheck
	$(RUN) pytest

bench: setup
	$(RUN) python benchmarks/bench_cpu.py --out benchmarks/results/cpu_2core.json

# on a CUDA machine: emflow's CuPy engine against its peers (JSON + markdown table)
bench-gpu: setup
	$(RUN) python benchmarks/bench_gpu.py --out benchmarks/results/gpu_$$(date +%Y%m%d).json

clean:
	rm -rf .venv .tools .pytest_cache .ruff_cache .mypy_cache .emflow
