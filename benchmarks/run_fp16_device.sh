#!/usr/bin/env bash
# The next device calls for issue 17 and the CPU sessions' GPU changes (run from the repository
# root on the GPU machine; results under $OUT). What the CPU sessions prepared without a GPU, in
# stages (STAGES, default "probes fused select"; each call must stay under the 10 min limit):
#   probes  1. benchmarks/probe_mma_rounding.py: which model of mma.sync's sums the device
#              follows, bit for bit (tc_emulate's model rests on it),
#           2. benchmarks/probe_mma_peak.py: mma.sync TF32, FP16 and BF16 rates,
#           3. benchmarks/probe_fp16_lse.py: lkt_lse in three FP16 products, timed on the 1M case
#              beside the engine's kernels, against float64 and the emulation (~4 min in all),
#   fused   the large-K GPU tests (both passes) and large_k_fused.py --bias --variants: the fused
#           pass's review mends of 2026-12-04, not yet run on a GPU (~4 min),
#   select  the sweep over K with every candidate's k-means init in shared passes (2026-12-05):
#           the device-init and selection GPU tests, then bench_select.py (issue 17's 10M x 16
#           case; ~3 min),
#   init    benchmarks/profile_select_init.py: where the sweep's shared init spends its time,
#   tests   the whole GPU suite (~5 min): the M-step's shift (2026-12-05: device loop,
#           full_mstep) and everything else not yet run on a GPU.
# Two calls cover it: STAGES="probes fused" and STAGES="select tests". Logs in $OUT/run.log,
# JSON and test logs beside it. Run on 2026-12-05 (docs/benchmarks.md, top section): select,
# init, probes, tests; of fused only the tests (in the suite), not large_k_fused.py.
set -u
OUT="${OUT:-build/fp16_run}"
STAGES="${STAGES:-probes fused select}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTEST=(python3 -m pytest -q -rfEs -p no:cacheprovider -o addopts="")
nvidia-smi -L
for stage in $STAGES; do
    echo "== stage $stage $(date -u +%H:%M:%S)"
    case "$stage" in
    probes)
        timeout 120 python3 benchmarks/probe_mma_rounding.py --out "$OUT/mma_rounding.json" | tail -n 14
        echo "rounding exit $?"
        timeout 120 python3 benchmarks/probe_mma_peak.py --out "$OUT/mma_peak.json"
        echo "peak exit $?"
        timeout 300 python3 benchmarks/probe_fp16_lse.py --out "$OUT/fp16_lse.json"
        echo "fp16 lse exit $?"
        ;;
    fused)
        timeout 180 "${PYTEST[@]}" tests/gpu/test_gpu_large_k.py >"$OUT/large_k_tests.txt" 2>&1
        echo "large-K tests exit $?"
        grep -E "passed|failed|^FAILED|^ERROR" "$OUT/large_k_tests.txt" | tail -n 20
        timeout 240 python3 benchmarks/large_k_fused.py --bias --variants --json "$OUT/fused.json"
        echo "fused exit $?"
        ;;
    select)
        timeout 240 "${PYTEST[@]}" tests/gpu/test_device_init.py tests/gpu/test_gpu_selection.py \
            >"$OUT/select_tests.txt" 2>&1
        echo "selection tests exit $?"
        grep -E "passed|failed|^FAILED|^ERROR" "$OUT/select_tests.txt" | tail -n 20
        SCIPY_ARRAY_API=1 timeout 240 python3 benchmarks/bench_select.py --out "$OUT/select.json"
        echo "select bench exit $?"
        ;;
    init)
        timeout 150 python3 benchmarks/profile_select_init.py --json "$OUT/select_init.json"
        echo "select init profile exit $?"
        ;;
    tests)
        timeout 420 "${PYTEST[@]}" tests/gpu >"$OUT/gpu_tests.txt" 2>&1
        echo "GPU tests exit $?"
        grep -E "passed|failed|^FAILED|^ERROR" "$OUT/gpu_tests.txt" | tail -n 30
        ;;
    *) echo "unknown stage $stage" ;;
    esac
done
