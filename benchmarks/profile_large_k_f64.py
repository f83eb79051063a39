"""Where the float64 E-step pass spends its time: each cuBLAS call and kernel, CUDA-event timed.

    SCIPY_ARRAY_API=1 PYTHONPATH=. python3 benchmarks/profile_large_k_f64.py [--chunk-mb 64]

The issue-17 case (``bench_large_k``'s data and start), one pass per covariance type after a
warm-up: the device time of every ``gemm`` call (by precision) and every kernel (by name) of
``large_k_f64.accumulate``, summed over the pass, beside the pass's own time.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_large_k import make_data, start_of, start_params  # noqa: E402


def main() -> None:
    import cupy

    from gmm_core._cupy import CupyEngine, large_k_f64

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-mb", type=int, default=large_k_f64.CHUNK_BYTES >> 20)
    args = parser.parse_args()
    large_k_f64.CHUNK_BYTES = args.chunk_mb << 20
    X = make_data()
    totals: dict[str, float] = defaultdict(float)
    gemm, load = large_k_f64.gemm, large_k_f64.load_kernel

    def timed(name: str, fn: Any, *a: Any, **kw: Any) -> Any:
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        out = fn(*a, **kw)
        stop.record()
        stop.synchronize()
        totals[name] += cupy.cuda.get_elapsed_time(start, stop)
        return out

    def gemm_timed(*a: Any, **kw: Any) -> None:
        name = f"gemm {kw['precision']}" + (" batched" if kw.get("batch", 1) > 1 else "")
        return timed(name, gemm, *a, **kw)

    def load_timed(ref: Any, options: tuple[str, ...] = ()) -> Any:
        kern = load(ref, options)
        return lambda *a, **kw: timed(ref.expr, kern, *a, **kw)

    for cov in ("spherical", "diag"):
        engine = CupyEngine()
        engine.config.large_k_fused, engine.config.large_k_f64 = False, True
        data = engine.prepare(X, None, cov)
        params = start_params(start_of(X, cov))
        engine.large_k.accumulate(data, params)  # warm-up: compile, scratch
        large_k_f64.gemm, large_k_f64.load_kernel = gemm_timed, load_timed
        totals.clear()
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        engine.large_k.accumulate(data, params)
        stop.record()
        stop.synchronize()
        large_k_f64.gemm, large_k_f64.load_kernel = gemm, load
        whole = cupy.cuda.get_elapsed_time(start, stop)
        print(f"{cov}, chunks of {args.chunk_mb} MB: pass {whole:.2f} ms (synchronised per call)")
        for name, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
            print(f"  {name:22s} {ms:7.2f} ms")


if __name__ == "__main__":
    main()
