#!/usr/bin/env bash
# One device call for the screened large-K pass (run from the repository root on the GPU
# machine; results under $OUT): its GPU tests, the GPU tests of what it serves by default
# (selection, cold fits), then benchmarks/large_k_sparse.py (the pass against the float32 GEMM
# pass, accuracy, the public API, the default fit).
source "$(dirname "$0")/device_prelude.sh" sparse_run
if [ -z "${SKIP_TESTS:-}" ]; then
    # shellcheck disable=SC2086  # TESTS is a list of pytest arguments
    gpu_tests gpu_tests "${TEST_TIMEOUT:-240}" \
        ${TESTS:-tests/gpu/test_gpu_large_k.py -k "sparse or screened or capacity or deterministic or bf16"}
    gpu_tests gpu_tests_default "${DEFAULT_TIMEOUT:-240}" \
        tests/gpu/test_gpu_selection.py tests/gpu/test_cold_compiles.py
fi
timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/large_k_sparse.py \
    --out "$OUT/large_k_sparse.json" ${BENCH_ARGS:-}
echo "bench exit $?"
