#!/usr/bin/env bash
# One device call (run from the repository root on the GPU machine; results under $OUT):
#   1. the prebuilt kernels (unless carried), packed into $OUT as prebuilt.tar.* for later calls,
#   2. the GPU tests,
#   3. benchmarks/probe_mma_peak.py (mma.sync TF32 throughput),
#   4. benchmarks/bench_large_k.py with its peers (torchgmm from .whl, Flash-GMM from
#      .peers/flash-gmm: carry both, see benchmarks/peers/flash_gmm.py),
#   5. benchmarks/bench_select.py.
# Budget: ~3 min build, ~2.5 min tests, ~3-4 min benchmarks. At most 8 files come back from a
# device call: logs go to $OUT/run.log, the test log and the JSON results beside it.
set -u
OUT="${OUT:-build/large_k_run}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/emflow-peers .whl/*.whl
fi
export PYTHONPATH="$PWD:/tmp/emflow-peers${PYTHONPATH:+:$PYTHONPATH}" SCIPY_ARRAY_API=1
export PYTHONUNBUFFERED=1
nvidia-smi -L
if [ ! -f gmm_core/cuda/prebuilt/sm_90/index.json ] || [ -n "${REBUILD:-}" ]; then
    /usr/bin/time -f "build %e s" python3 -m gmm_core.build_kernels --arch native \
        --jobs "$(nproc)" 2>&1 | tail -n 3
    if [ -n "${PACK_PREBUILT:-}" ]; then
        tar cf - gmm_core/cuda/prebuilt | split -b 15M - "$OUT/prebuilt.tar."
    fi
fi
if [ -z "${SKIP_TESTS:-}" ]; then
    timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -rfEs -p no:cacheprovider -o addopts="" \
        ${TESTS:-tests/gpu} >"$OUT/gpu_tests.txt" 2>&1
    echo "gpu tests exit $?"
    grep -E "passed|failed|^FAILED|^ERROR" "$OUT/gpu_tests.txt" | tail -n 20
fi
timeout 60 python3 benchmarks/probe_mma_peak.py --out "$OUT/mma_peak.json"
timeout "${LARGE_K_TIMEOUT:-300}" python3 benchmarks/bench_large_k.py --out "$OUT/large_k.json" \
    ${LARGE_K_ARGS:-}
echo "large-K exit $?"
if [ -z "${SKIP_SELECT:-}" ]; then
    timeout 120 python3 benchmarks/bench_select.py --out "$OUT/select.json"
    echo "select exit $?"
fi
