"""gmm_core's NumPy backend against scikit-learn, side by side in one run.

Equal iterations (tol=0, fixed max_iter) and the same initial parameters for both (weights,
means and precisions passed as ``*_init``, so no k-means time is counted). Prints a table and
writes JSON with the machine described.

    python benchmarks/bench_cpu.py --out benchmarks/results/cpu_<host>.json [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np


def datasets(quick: bool) -> list[tuple[str, np.ndarray, int, str, int]]:
    """(name, X, n_components, covariance_type, iterations)."""
    from sklearn.datasets import load_iris, load_wine, make_blobs, make_circles, make_moons

    scale = 10 if quick else 1
    its = 20 if quick else 100
    return [
        ("iris", load_iris().data, 3, "diag", its),
        ("wine", load_wine().data, 3, "diag", its),
        ("moons_200k", make_moons(200_000 // scale, noise=0.05, random_state=0)[0], 2, "diag", its),
        (
            "circles_200k",
            make_circles(200_000 // scale, noise=0.05, factor=0.5, random_state=0)[0],
            2,
            "diag",
            its,
        ),
        ("blobs_500k", make_blobs(500_000 // scale, centers=5, random_state=0)[0], 5, "diag", its),
        (
            "telemetry_1M_d16_k16",
            make_blobs(1_000_000 // scale, n_features=16, centers=16, random_state=0)[0].astype(
                np.float32
            ),
            16,
            "diag",
            10 if quick else 20,
        ),
        (
            "full_200k_d16_k8",
            make_blobs(200_000 // scale, n_features=16, centers=8, random_state=0)[0],
            8,
            "full",
            10 if quick else 20,
        ),
    ]


def initial_parameters(X: np.ndarray, k: int, covariance_type: str) -> dict:
    rng = np.random.RandomState(0)
    means = X[rng.choice(len(X), k, replace=False)].astype(np.float64)
    var = X.var(axis=0).mean()
    d = X.shape[1]
    precisions = {
        "full": np.stack([np.eye(d) / var] * k),
        "diag": np.full((k, d), 1 / var),
    }[covariance_type]
    return {"weights_init": np.full(k, 1 / k), "means_init": means, "precisions_init": precisions}


def time_fit(make, X, repeats: int) -> tuple[float, object]:
    best, model = np.inf, None
    for _ in range(repeats):
        est = make()
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X)
        best = min(best, time.perf_counter() - t0)
        model = est
    return best, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="10x smaller data, fewer iterations")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import sklearn
    from sklearn.mixture import GaussianMixture as SkGaussianMixture
    from threadpoolctl import threadpool_info

    from gmm_core import GaussianMixture

    rows = []
    print(
        f"{'case':24s} {'N':>9s} {'D':>3s} {'K':>3s} {'it':>4s} {'sklearn s':>10s} "
        f"{'gmm_core s':>10s} {'speed-up':>8s} {'|dLL|':>9s}"
    )
    for name, X, k, cov, iters in datasets(args.quick):
        common = dict(
            n_components=k,
            covariance_type=cov,
            max_iter=iters,
            tol=0.0,
            **initial_parameters(X, k, cov),
        )
        # millisecond fits are timed best-of-20 (best-of-2 is mostly scheduler noise there)
        repeats = max(args.repeats, 20) if X.size * k < 100_000 else args.repeats
        t_sk, sk = time_fit(lambda c=common: SkGaussianMixture(**c), X, repeats)
        t_ours, ours = time_fit(lambda c=common: GaussianMixture(backend="numpy", **c), X, repeats)
        dll = abs(ours.lower_bound_ - sk.lower_bound_)
        row = dict(
            case=name,
            n_samples=len(X),
            n_features=X.shape[1],
            n_components=k,
            covariance_type=cov,
            dtype=str(X.dtype),
            iterations=iters,
            sklearn_seconds=t_sk,
            gmm_core_seconds=t_ours,
            speedup=t_sk / t_ours,
            sklearn_lower_bound=float(sk.lower_bound_),
            gmm_core_lower_bound=float(ours.lower_bound_),
            abs_lower_bound_diff=dll,
            label_agreement=float((ours.predict(X) == sk.predict(X)).mean()),
        )
        rows.append(row)
        print(
            f"{name:24s} {len(X):9d} {X.shape[1]:3d} {k:3d} {iters:4d} {t_sk:10.3f} "
            f"{t_ours:10.3f} {t_sk / t_ours:7.2f}x {dll:9.2e}",
            flush=True,
        )
    speedups = [r["speedup"] for r in rows]
    geo = float(np.exp(np.mean(np.log(speedups))))
    print(f"geometric-mean speed-up: {geo:.2f}x")
    result = {
        "benchmark": "gmm_core numpy backend vs scikit-learn, equal iterations, same init",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "blas": [
                {k: i.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                for i in threadpool_info()
            ],
        },
        "quick": args.quick,
        "timing": f"best of {args.repeats} fits (of 20 for cases under 100k data cells x K), "
        "wall clock, initialisation given (no k-means)",
        "geometric_mean_speedup": geo,
        "cases": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
