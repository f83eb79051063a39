"""cProfile of whole public ``fit`` calls on the GPU (the default settings a user gets).

    PYTHONPATH=. python3 benchmarks/profile_fit.py [--quick] [--case telemetry|full|blobs]

Prints, per case, ``fit_timings_`` (validate, transfer, init, EM, finish), ``n_iter_``, the peak
device memory of the fit, and the 25 most expensive functions by cumulative time (one fit after a
warm-up that compiles the kernels).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import cupy as cp

    from benchmarks.public_api import cases
    from gmm_core import GaussianMixture

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--case", action="append")
    args = parser.parse_args()
    for case in cases(args.quick):
        if args.case and case["name"] not in args.case:
            continue
        X = cp.asarray(case["X"])

        def fit(X=X, case=case) -> GaussianMixture:
            return GaussianMixture(case["k"], covariance_type=case["cov"], backend="cupy").fit(X)

        fit()
        cp.cuda.Device().synchronize()
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        gm = fit()
        cp.cuda.Device().synchronize()
        prof.disable()
        wall = time.perf_counter() - t0
        print(f"== {case['name']} {X.shape} K={case['k']} {case['cov']}: {1e3 * wall:.1f} ms")
        print(f"   n_iter_ {gm.n_iter_}, peak device bytes {gm.device_peak_bytes_}")
        print("   fit_timings_ (ms):", {k: round(1e3 * v, 2) for k, v in gm.fit_timings_.items()})
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
        print(out.getvalue())


if __name__ == "__main__":
    main()
