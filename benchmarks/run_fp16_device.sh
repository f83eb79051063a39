#!/usr/bin/env bash
# The next device call for issue 17 (run from the repository root on the GPU machine; results
# under $OUT), what the CPU sessions prepared without a GPU:
#   1. benchmarks/probe_mma_rounding.py: which model of mma.sync's sums the device follows, bit
#      for bit (tc_emulate's model rests on it),
#   2. benchmarks/probe_mma_peak.py: mma.sync TF32, FP16 and BF16 rates (FP16's is assumed 2x),
#   3. benchmarks/probe_fp16_lse.py: lkt_lse in three FP16 products, timed on the 1M case beside
#      the engine's kernels, against float64 and the emulation,
#   4. the large-K GPU tests (both passes) and large_k_fused.py --bias --variants: the fused
#      pass's review mends of 2026-12-04, not yet run on a GPU,
#   5. the sweep over K with every candidate's k-means init in shared passes (2026-12-05): the
#      device-init and selection GPU tests, then bench_select.py (issue 17's 10M x 16 case).
# Budget: ~1 min of probes, ~3 min for 3 (host packing of 1M rows and the emulation's 4,096), ~4
# min for 4, ~3 min for 5. SKIP_FUSED=1 / SKIP_SELECT=1 leave 4 / 5 out. Logs in $OUT/run.log,
# JSON beside it.
set -u
OUT="${OUT:-build/fp16_run}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 120 python3 benchmarks/probe_mma_rounding.py --out "$OUT/mma_rounding.json" | tail -n 14
echo "rounding exit $?"
timeout 120 python3 benchmarks/probe_mma_peak.py --out "$OUT/mma_peak.json"
echo "peak exit $?"
timeout 300 python3 benchmarks/probe_fp16_lse.py --out "$OUT/fp16_lse.json"
echo "fp16 lse exit $?"
if [ -z "${SKIP_FUSED:-}" ]; then
    timeout 180 python3 -m pytest -q -rfEs -p no:cacheprovider -o addopts="" \
        tests/gpu/test_gpu_large_k.py >"$OUT/large_k_tests.txt" 2>&1
    echo "large-K tests exit $?"
    grep -E "passed|failed|^FAILED|^ERROR" "$OUT/large_k_tests.txt" | tail -n 20
    timeout 240 python3 benchmarks/large_k_fused.py --bias --variants --json "$OUT/fused.json"
    echo "fused exit $?"
fi
if [ -z "${SKIP_SELECT:-}" ]; then
    timeout 240 python3 -m pytest -q -rfEs -p no:cacheprovider -o addopts="" \
        tests/gpu/test_device_init.py tests/gpu/test_gpu_selection.py >"$OUT/select_tests.txt" 2>&1
    echo "selection tests exit $?"
    grep -E "passed|failed|^FAILED|^ERROR" "$OUT/select_tests.txt" | tail -n 20
    SCIPY_ARRAY_API=1 timeout 240 python3 benchmarks/bench_select.py --out "$OUT/select.json"
    echo "select bench exit $?"
fi
