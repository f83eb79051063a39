#!/usr/bin/env bash
# Full-covariance pass checks on a GPU host, in one go (run from the repository root):
#   1. compute-sanitizer memcheck and racecheck of a small full_pass_tc pass,
#   2. gpu-marked tests selected by $TESTS_K (default: the full-covariance and accumulate tests),
#   3. benchmarks/tune_full.py (correctness table, variants and timing at 1M x 32, K=16).
# Results go to $OUT (default ./build/full_run).
set -u
OUT="${OUT:-build/full_run}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L | tee "$OUT/gpus.txt"
for tool in memcheck racecheck; do
    timeout 240 compute-sanitizer --tool "$tool" python3 benchmarks/sanitize_full.py \
        >"$OUT/sanitize_$tool.txt" 2>&1
    echo "sanitizer $tool exit $?"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|worst relative|Error|hazard" "$OUT/sanitize_$tool.txt" | head -5
done
timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -rs -m gpu -p no:cacheprovider \
    -k "${TESTS_K:-full or accumulate}" tests/test_gpu_engine.py >"$OUT/gpu_tests.txt" 2>&1
echo "gpu tests exit $?"
grep -E "passed|failed|error|SKIPPED|FAILED|Error" "$OUT/gpu_tests.txt" | tail -n 25
timeout "${TUNE_TIMEOUT:-240}" python3 benchmarks/tune_full.py --json "$OUT/tune_full.json" \
    2>&1 | tee "$OUT/tune_full.txt"
