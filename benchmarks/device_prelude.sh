# Sourced by a run_*_device.sh from the repository root on the GPU machine: results under $OUT
# (default build/<$1>), everything also in $OUT/run.log, the tree on PYTHONPATH, the GPU named.
# gpu_tests NAME TIMEOUT PYTEST_ARGS...: a pytest run into $OUT/NAME.txt and its summary lines.
set -u
OUT="${OUT:-build/$1}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" SCIPY_ARRAY_API=1 PYTHONUNBUFFERED=1
nvidia-smi -L

gpu_tests() {
    local name="$1" limit="$2"
    shift 2
    timeout "$limit" python3 -m pytest -q -rfEs -p no:cacheprovider -o addopts="" "$@" \
        >"$OUT/$name.txt" 2>&1
    echo "$name exit $?"
    grep -E "passed|failed|^FAILED|^ERROR" "$OUT/$name.txt" | tail -n 30
}
