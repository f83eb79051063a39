#!/usr/bin/env bash
# One device call: lks_select's variants timed and checked (benchmarks/select_variants.py), then
# the screened tests on the default build. VARIANTS / CHUNKS override the defaults.
source "$(dirname "$0")/device_prelude.sh" select_variants
timeout "${BENCH_TIMEOUT:-400}" python3 benchmarks/select_variants.py --out "$OUT/select_variants.json" \
    --variants "${VARIANTS:-blocks4=;blocks3=-DLKS_SELECT_BLOCKS=3}" \
    --chunks "${CHUNKS:-64,128}" 2>&1 | grep -v Warning
echo "variants exit $?"
if [ -z "${SKIP_TESTS:-}" ]; then
    gpu_tests gpu_tests "${TEST_TIMEOUT:-240}" tests/gpu/test_gpu_large_k.py \
        -k "sparse or screened or capacity or deterministic"
fi
