#!/usr/bin/env bash
# One device call for the large-K pass's float64 E-step (run from the repository root on the GPU
# machine; results under $OUT): the GPU large-K tests (every variant) and the tests written but
# not yet run on a GPU, then benchmarks/large_k_f64.py (variants, accuracy, public API).
source "$(dirname "$0")/device_prelude.sh" f64_run
if [ -z "${SKIP_TESTS:-}" ]; then
    # shellcheck disable=SC2086  # TESTS is a list of pytest arguments
    gpu_tests gpu_tests "${TEST_TIMEOUT:-240}" ${TESTS:-tests/gpu/test_gpu_large_k.py}
    # GPU tests written in earlier sessions and not yet run on a GPU
    gpu_tests gpu_tests_pending "${PENDING_TIMEOUT:-120}" \
        tests/gpu/test_gpu_selection.py tests/gpu/test_gpu_engine.py -k "weighted or verbose"
fi
timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/large_k_f64.py --out "$OUT/large_k_f64.json" \
    ${BENCH_ARGS:-}
echo "bench exit $?"
# the integer tensor cores at the E-step's product shape (the next path's question)
timeout "${PROBE_TIMEOUT:-90}" python3 benchmarks/probe_int8_gemm.py --out "$OUT/int8_gemm.json"
echo "int8 probe exit $?"
