#!/usr/bin/env bash
# The GPU tests and the public-API benchmark in one device call (run from the repository root on
# the GPU machine; results under $OUT). Carry the torchgmm wheel: run(carry=[".whl"]) after
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl torchgmm==0.1.4
# Budget: ~2 min of tests, ~6-7 min of benchmark with the cold fits and the telemetry KMeans
# comparison (5 seeds); BENCH_ARGS narrows it (e.g. "--api-skip cold --init-max-rows 1000000").
set -u
OUT="${OUT:-build/api_run}"
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/emflow-peers .whl/*.whl
fi
export PYTHONPATH="$PWD:/tmp/emflow-peers${PYTHONPATH:+:$PYTHONPATH}" SCIPY_ARRAY_API=1
nvidia-smi -L | tee "$OUT/gpus.txt"
timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -rs -p no:cacheprovider -o addopts="" \
    tests/gpu >"$OUT/gpu_tests.txt" 2>&1
echo "gpu tests exit $?"
grep -E "passed|failed|^FAILED|^E  " "$OUT/gpu_tests.txt" | tail -n 20
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/bench_gpu.py --cases api ${BENCH_ARGS:-} \
    --out "$OUT/gpu_h200_api.json" --md "$OUT/gpu_h200_api.md" >"$OUT/bench.log" 2>&1
echo "bench exit $?"
grep -E "<=|whole fit|init quality" "$OUT/gpu_h200_api.md" | cut -c1-220
