#!/usr/bin/env bash
# One device call for the screened large-K pass (run from the repository root on the GPU
# machine; results under $OUT): its GPU tests, then benchmarks/large_k_sparse.py (the pass
# against the float32 GEMM pass, accuracy, the public API, the default fit).
set -u
OUT="${OUT:-build/sparse_run}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" SCIPY_ARRAY_API=1 PYTHONUNBUFFERED=1
nvidia-smi -L
if [ -z "${SKIP_TESTS:-}" ]; then
    timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -rfEs -p no:cacheprovider -o addopts="" \
        -x ${TESTS:-tests/gpu/test_gpu_large_k.py -k "sparse or screened or capacity or deterministic"} \
        >"$OUT/gpu_tests.txt" 2>&1
    echo "gpu tests exit $?"
    grep -E "passed|failed|^FAILED|^ERROR|Error|error" "$OUT/gpu_tests.txt" | tail -n 30
fi
timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/large_k_sparse.py \
    --out "$OUT/large_k_sparse.json" ${BENCH_ARGS:-}
echo "bench exit $?"
