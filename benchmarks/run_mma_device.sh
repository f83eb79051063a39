#!/usr/bin/env bash
# One device call for the "mma" screen (lks_mma + lks_exact; GMM_CORE_LARGE_K_SCREEN=mma), never
# yet run on a GPU when written: its GPU tests first (-x: the first failure stops them, with
# its traceback in $OUT/gpu_tests.txt), then the screens side by side at the pass
# (select_variants.py: BF16 GEMM screen, mma at 2 and 1 blocks per SM), then, unless
# SKIP_BENCH, benchmarks/large_k_sparse.py (every screen at the pass, the public API, the
# default fit). Results under $OUT.
source "$(dirname "$0")/device_prelude.sh" mma_run
gpu_tests gpu_tests "${TEST_TIMEOUT:-240}" tests/gpu/test_gpu_large_k.py -x \
    -k "${TESTS_K:-mma or deterministic or screened or capacity}"
timeout "${VARIANTS_TIMEOUT:-200}" python3 benchmarks/select_variants.py \
    --out "$OUT/select_variants.json" --chunks 128 \
    --variants "${VARIANTS:-bf16=screen:bf16;mma=screen:mma;mma1=screen:mma -DLKM_BLOCKS=1}" \
    2>&1 | grep -v Warning
echo "variants exit $?"
if [ -z "${SKIP_BENCH:-}" ]; then
    timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/large_k_sparse.py \
        --out "$OUT/large_k_sparse.json" \
        ${BENCH_ARGS:---variants float32_gemm,sparse_bf16,sparse_mma}
    echo "bench exit $?"
fi
