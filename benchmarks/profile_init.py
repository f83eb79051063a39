"""Where the device initialisation's time goes (``gmm_core._init`` on the CuPy engine).

    PYTHONPATH=. python3 benchmarks/profile_init.py [--quick]

Per case: the column moments, the k-means++ seeding (and one seeding step's parts), the Lloyd
iterations (count, ms each), the hard-statistics pass, and the EM loop from the result, each
timed with the device synchronised (medians of 5).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn, repeat: int = 5):
    import cupy as cp

    out, times = None, []
    for _ in range(repeat):
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        out = fn()
        cp.cuda.Device().synchronize()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), out


def main() -> None:
    from benchmarks.public_api import cases

    for case in cases("--quick" in sys.argv):
        profile_case(case)


def profile_case(case: dict) -> None:
    import math

    import cupy as cp
    import numpy as np

    from gmm_core import _kmeans, _kmeans_seeding
    from gmm_core._cupy import CupyEngine

    X = cp.asarray(case["X"])
    k, cov = case["k"], case["cov"]
    engine = CupyEngine()
    ms, data = timed(lambda: engine.prepare(X, "auto", cov))
    print(f"== {case['name']} {X.shape} K={k} {cov}: prepare (moments) {ms:.2f} ms")
    rs = np.random.RandomState(0)
    first = np.array([rs.randint(len(X))])
    u = rs.uniform(size=(1, k - 1, 2 + int(math.log(k))))
    ms, (centres, _) = timed(lambda: _kmeans_seeding.kmeans_plusplus(engine, data, k, first, u))
    print(f"   k-means++ seeding {ms:.2f} ms ({k - 1} steps)")
    kern = _kmeans_seeding._kernels(engine, data.dtype)
    # the seeding's centres are float64; its kernels take centres and candidates in the data's type
    rows = centres.astype(data.dtype)
    closest = cp.empty((1, len(X)), dtype=cp.float32)
    _kmeans_seeding._update_closest(
        engine, data, cp.ascontiguousarray(rows[:, 0]), closest, kern, True
    )
    cand = cp.ascontiguousarray(rows[0, :5])
    u_dev = cp.asarray(u[:, 0, :])
    parts = {
        "sample (block sums + search)": lambda: _kmeans_seeding._sample(
            engine, closest, u_dev, kern
        ),
        "potentials (5 candidates)": lambda: _kmeans_seeding._potentials(
            engine, data, cand, closest, 5, kern
        ),
        "update closest": lambda: _kmeans_seeding._update_closest(
            engine, data, cp.ascontiguousarray(rows[:, 1]), closest, kern
        ),
    }
    for name, fn in parts.items():
        print(f"     {name:28s} {timed(fn, 10)[0]:.3f} ms")
    total = float(data.variance.sum())
    prec = _kmeans.HARD_PRECISION / total
    tol = _kmeans.KMEANS_TOL * total / data.n_features
    ms, (final, n_iter) = timed(
        lambda: _kmeans.lloyd(engine, data, centres, tol=tol, precision=prec), 3
    )
    it = int(n_iter[0])
    print(f"   Lloyd {ms:.2f} ms, {it} iterations ({ms / max(it, 1):.3f} ms each)")
    ms, _ = timed(
        lambda: _kmeans.lloyd_coarse_to_fine(engine, data, centres, tol=tol, precision=prec), 3
    )
    print(f"   Lloyd coarse-to-fine (every {_kmeans.COARSE_STEP}th row first) {ms:.2f} ms")
    coarse = engine.subsample(data, _kmeans.COARSE_STEP)
    ms, (c_centres, c_iter) = timed(
        lambda: _kmeans.lloyd(engine, coarse, centres, tol=tol, precision=prec), 3
    )
    it = int(c_iter[0])
    print(f"     coarse Lloyd {ms:.2f} ms, {it} iterations ({ms / max(it, 1):.3f} ms each)")
    ms, (_, f_iter) = timed(
        lambda: _kmeans.lloyd(engine, data, c_centres, tol=tol, precision=prec), 3
    )
    it = int(f_iter[0])
    print(f"     then all rows {ms:.2f} ms, {it} iterations ({ms / max(it, 1):.3f} ms each)")
    ms, _ = timed(lambda: _kmeans_seeding.kmeans_plusplus(engine, coarse, k, first, u))
    print(f"   k-means++ seeding on the coarse rows {ms:.2f} ms")
    diag = engine.retype(data, "diag")
    hard = _kmeans.hard_params(final, "diag", prec, cp)
    active = cp.ones(1, bool)
    ms, _ = timed(lambda: engine.accumulate(diag, hard, active), 10)
    print(f"   one hard diag pass {ms:.3f} ms")
    hard = _kmeans.hard_params(final, cov, prec, cp)
    ms, _ = timed(lambda: engine.accumulate(data, hard, active), 10)
    print(f"   one hard {cov} pass {ms:.3f} ms")


if __name__ == "__main__":
    main()
