#!/usr/bin/env bash
# Device calls for the "mma" screen (lks_mma + lks_exact; GMM_CORE_LARGE_K_SCREEN=mma), never
# yet run on a GPU when written. Results under $OUT.
#   call 1 (default): its GPU tests (-x: the first failure stops them, with its traceback in
#           $OUT/gpu_tests.txt), then the screens side by side at the pass (select_variants.py:
#           the BF16 GEMM screen; mma at 2 and 1 blocks per SM, and with 64-index stages)
#   call 2 (BENCH=1 SKIP_TESTS=1 SKIP_VARIANTS=1): benchmarks/large_k_sparse.py (the dense pass
#           and both BF16 screens at the pass, the public API, the default fit)
# (each part takes minutes, NVRTC compiling every variant: together past a call's 600 s)
source "$(dirname "$0")/device_prelude.sh" mma_run
if [ -z "${SKIP_TESTS:-}" ]; then
    gpu_tests gpu_tests "${TEST_TIMEOUT:-240}" tests/gpu/test_gpu_large_k.py -x \
        -k "${TESTS_K:-mma or deterministic or screened or capacity}"
fi
if [ -z "${SKIP_VARIANTS:-}" ]; then
    timeout "${VARIANTS_TIMEOUT:-300}" python3 benchmarks/select_variants.py \
        --out "$OUT/select_variants.json" --chunks 128 \
        --variants "${VARIANTS:-bf16=screen:bf16;mma=screen:mma;mma1=screen:mma -DLKM_BLOCKS=1;mma_kc64=screen:mma -DLKM_KC=64}" \
        2>&1 | grep -v Warning
    echo "variants exit $?"
fi
if [ -n "${BENCH:-}" ]; then
    timeout "${BENCH_TIMEOUT:-540}" python3 benchmarks/large_k_sparse.py \
        --out "$OUT/large_k_sparse.json" \
        ${BENCH_ARGS:---variants float32_gemm,sparse_bf16,sparse_mma}
    echo "bench exit $?"
fi
