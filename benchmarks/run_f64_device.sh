#!/usr/bin/env bash
# One device call for the large-K pass's float64 E-step (run from the repository root on the GPU
# machine; results under $OUT): the GPU large-K tests (every variant) and the tests written but
# not yet run on a GPU, then benchmarks/large_k_f64.py (variants, accuracy, public API).
set -u
OUT="${OUT:-build/f64_run}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" SCIPY_ARRAY_API=1 PYTHONUNBUFFERED=1
nvidia-smi -L
if [ -z "${SKIP_TESTS:-}" ]; then
    timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -rfEs -p no:cacheprovider -o addopts="" \
        ${TESTS:-tests/gpu/test_gpu_large_k.py} >"$OUT/gpu_tests.txt" 2>&1
    echo "gpu tests exit $?"
    grep -E "passed|failed|^FAILED|^ERROR" "$OUT/gpu_tests.txt" | tail -n 30
    # GPU tests written in earlier sessions and not yet run on a GPU
    timeout "${PENDING_TIMEOUT:-120}" python3 -m pytest -q -rfEs -p no:cacheprovider -o addopts="" \
        tests/gpu/test_gpu_selection.py tests/gpu/test_gpu_engine.py -k "weighted or verbose" \
        >"$OUT/gpu_tests_pending.txt" 2>&1
    echo "pending gpu tests exit $?"
    grep -E "passed|failed|^FAILED|^ERROR" "$OUT/gpu_tests_pending.txt" | tail -n 10
fi
timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/large_k_f64.py --out "$OUT/large_k_f64.json" \
    ${BENCH_ARGS:-}
echo "bench exit $?"
# the integer tensor cores at the E-step's product shape (the next path's question)
timeout "${PROBE_TIMEOUT:-90}" python3 benchmarks/probe_int8_gemm.py --out "$OUT/int8_gemm.json"
echo "int8 probe exit $?"
