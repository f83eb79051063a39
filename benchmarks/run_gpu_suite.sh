#!/usr/bin/env bash
# One device call: the whole GPU test suite on the defaults, then the screened pass's steps
# (benchmarks/profile_large_k_sparse.py at its default chunk). Results under $OUT.
source "$(dirname "$0")/device_prelude.sh" gpu_suite
gpu_tests gpu_suite "${SUITE_TIMEOUT:-420}" tests/gpu
timeout "${PROFILE_TIMEOUT:-120}" python3 benchmarks/profile_large_k_sparse.py \
    --out "$OUT/profile.json" --chunks 128 2>&1 | grep -v Warning
echo "profile exit $?"
