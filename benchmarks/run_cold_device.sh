#!/usr/bin/env bash
# A cold first fit with gmm_core's kernels built ahead of time, on the GPU machine, in one device
# call (run from the repository root; Python 3.12 + CuPy + NVRTC there, no Airflow; results under
# $OUT, default ./build/cold_run):
#   1. python -m gmm_core.build_kernels --arch native: this GPU's architecture (sm_90 on an H200),
#      every core (the whole grid: ~1,250 kernels, about 2-3 min on 16 cores; BUILD_ARGS adds
#      options, e.g. "--shape 16,32,diag,float32,1 --shape 32,16,full,float32,1" for seconds;
#      SKIP_BUILD=1 uses a gmm_core/cuda/prebuilt/ carried along instead),
#   2. the prebuilt-kernel GPU tests (tests/gpu/test_gpu_prebuilt_kernels.py),
#   3. benchmarks/profile_cold.py per case of $CASES (default "telemetry full blobs_500k"), each in
#      a fresh process with an empty CUPY_CACHE_DIR: with the prebuilt kernels, then (unless
#      COMPARE_NVRTC=0) with GMM_CORE_PREBUILT_KERNELS=0, today's NVRTC path.
set -u
OUT="${OUT:-build/cold_run}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L | tee "$OUT/gpus.txt"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    # shellcheck disable=SC2086
    timeout "${BUILD_TIMEOUT:-420}" python3 -m gmm_core.build_kernels --arch native \
        --jobs "$(nproc)" ${BUILD_ARGS:-} >"$OUT/build_kernels.txt" 2>&1
    echo "build_kernels exit $?"
    grep -E "^sm_|gmm_core.build_kernels|Error" "$OUT/build_kernels.txt" | tail -n 5
fi
du -sh gmm_core/cuda/prebuilt/* 2>/dev/null
timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -rs -p no:cacheprovider -o addopts="" \
    tests/gpu/test_gpu_prebuilt_kernels.py >"$OUT/gpu_tests.txt" 2>&1
echo "prebuilt gpu tests exit $?"
grep -E "passed|failed|^FAILED|^E  |SKIPPED" "$OUT/gpu_tests.txt" | tail -n 12
modes=(prebuilt)
[ "${COMPARE_NVRTC:-1}" = 1 ] && modes+=(nvrtc)
for case in ${CASES:-telemetry full blobs_500k}; do
    for mode in "${modes[@]}"; do
        cache="$(mktemp -d)"
        enabled=1
        [ "$mode" = nvrtc ] && enabled=0
        CUPY_CACHE_DIR="$cache" GMM_CORE_PREBUILT_KERNELS="$enabled" timeout 300 \
            python3 benchmarks/profile_cold.py --case "$case" >"$OUT/cold_${case}_${mode}.txt" 2>&1
        echo "cold $case ($mode) exit $?"
        grep -E "^== cold|fit_timings_|modules compiled|gmm_core kernels" \
            "$OUT/cold_${case}_${mode}.txt" | cut -c1-220
        rm -rf "$cache"
    done
done
