#!/usr/bin/env bash
# Multi-GPU and Dask-on-GPU checks on a GPU host, in one go (run from the repository root):
#   1. gpu-marked tests of the multi-GPU engine and of the Dask engine's GPU workers,
#   2. benchmarks/bench_multigpu.py (telemetry 10M x 16 K=32 diag: 1 GPU vs all GPUs; 100M x 16
#      generated on the GPUs and trained; estimator backend="multigpu" vs "cupy").
# Results go to $OUT (default ./build/multigpu_run): gpu_tests.txt, bench.log, multigpu_*.json.
# dask/distributed are not installed on the GPU machine: when build/wheelhouse-dask holds their
# wheels (pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64
# dask distributed -d build/wheelhouse-dask; carry build/wheelhouse-dask to the device), they are
# installed into /tmp/emflow-dask-pkgs on PYTHONPATH; without them the Dask GPU test skips and
# says why.
set -u
OUT="${OUT:-build/multigpu_run}"
mkdir -p "$OUT"
PY=python3
# (a --system-site-packages venv does not see the machine's pytest: install into a folder instead)
if [ -d build/wheelhouse-dask ]; then
    if python3 -m pip install -q --no-index --find-links build/wheelhouse-dask \
        --target /tmp/emflow-dask-pkgs distributed >"$OUT/pip.log" 2>&1; then
        export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/emflow-dask-pkgs"
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L | tee "$OUT/gpus.txt"
"$PY" -c "import distributed; print('distributed', distributed.__version__)" 2>&1 | tail -1

timeout "${TEST_TIMEOUT:-200}" "$PY" -m pytest -q -rs -m gpu -p no:cacheprovider \
    tests/test_multigpu_engine.py tests/test_dask_engine.py >"$OUT/gpu_tests.txt" 2>&1
echo "gpu tests exit $?"
grep -E "passed|failed|error|SKIPPED|FAILED" "$OUT/gpu_tests.txt" | tail -n 25

name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr 'A-Z ' 'a-z_' |
    sed 's/nvidia_//')
count=$(nvidia-smi -L | wc -l)
timeout "${BENCH_TIMEOUT:-370}" "$PY" benchmarks/bench_multigpu.py \
    --out "$OUT/multigpu_${name}x${count}.json" >"$OUT/bench.log" 2>&1
echo "bench exit $?"
grep -vE "^\s*$" "$OUT/bench.log" | tail -n 30
