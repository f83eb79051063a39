"""Why a Lloyd pass (EM pass of the "hard" mixture) costs more than an EM pass, on one case.

    PYTHONPATH=. python3 benchmarks/probe_hard_pass.py [--case telemetry]

Times ``engine.accumulate`` with the fitted (soft) mixture and with hard mixtures of several
precisions (median of 10, device synchronised), and one EM iteration of the public fit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.profile_init import timed  # noqa: E402


def main() -> None:
    import cupy as cp

    from benchmarks.public_api import cases
    from gmm_core import GaussianMixture, _kmeans
    from gmm_core._cupy import CupyEngine
    from gmm_core._engine import Params

    parser = argparse.ArgumentParser()
    parser.add_argument("--case", default="telemetry")
    args = parser.parse_args()
    case = next(c for c in cases(False) if c["name"] == args.case)
    X = cp.asarray(case["X"])
    k, cov = case["k"], case["cov"]
    gm = GaussianMixture(k, covariance_type=cov, backend="cupy", random_state=0).fit(X)
    engine = CupyEngine()
    data = engine.prepare(X, "auto", cov)
    shift = cp.asarray(data.shift)
    soft = Params(
        cp.asarray(gm.weights_)[None],
        (cp.asarray(gm.means_) - shift)[None],
        cp.asarray(gm.covariances_)[None],
        cp.asarray(gm.precisions_cholesky_)[None],
    )
    active = cp.ones(1, bool)
    ms, _ = timed(lambda: engine.accumulate(data, soft, active), 10)
    print(f"== {args.case}: accumulate, fitted mixture {ms:.3f} ms")
    total = float(data.variance.sum())
    for hp in (1e2, 1e4, 1e6, 1e8, 1e10, _kmeans.HARD_PRECISION):
        hard = _kmeans.hard_params(soft.means, cov, hp / total, cp)
        ms, st = timed(lambda hard=hard: engine.accumulate(data, hard, active), 10)
        nk = cp.asnumpy(st.nk[0])
        print(f"   hard precision {hp:8.0e}/var: {ms:.3f} ms  (nk min {nk.min():.0f})")
    gm2 = GaussianMixture(
        k,
        covariance_type=cov,
        backend="cupy",
        tol=0,
        max_iter=20,
        weights_init=gm.weights_,
        means_init=gm.means_,
        precisions_init=gm.precisions_,
    )
    ms20, _ = timed(lambda: gm2.fit(X), 3)
    gm2.set_params(max_iter=10)
    ms10, _ = timed(lambda: gm2.fit(X), 3)
    print(f"   public fit: {(ms20 - ms10) / 10:.3f} ms per iteration")


if __name__ == "__main__":
    main()
