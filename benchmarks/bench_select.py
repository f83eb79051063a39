"""Choosing K on one GPU: the sweep against the K=32 fit alone and a loop of fits (issue 17).

    SCIPY_ARRAY_API=1 PYTHONPATH=. python3 benchmarks/bench_select.py \
        --out benchmarks/results/gpu_h200_select.json [--quick]

Case: telemetry 10M x 16 float32 as a CuPy array, diag, K = 1..32, one restart each, 20 EM
iterations each without early stop (``tol=0, max_iter=20``), every init on the device. In one run:

1. the K=32 fit alone: ``GaussianMixture(32, ...).fit(X)``, median of 3;
2. ``GaussianMixtureSelect(range(1, 33), ...).fit(X)``: median of 3, with its phase times
   (``fit_timings_``: init, EM, the train-score pass);
3. a loop of 32 ``GaussianMixture(K, ...)`` fits: one run (it is the slow side), and the largest
   difference between its lower bounds and the sweep's table (the sweep's candidates are those
   fits);
4. the arithmetic: a sweep's EM does sum(K) = 528 components' work per row where the K=32 fit
   does 32 (16.5x); the per-iteration EM time of both, and what the sweep's passes cost per
   component against the K=32 fit's.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_gpu import telemetry  # noqa: E402
from benchmarks.public_api import timed  # noqa: E402
from benchmarks.report import environment, log  # noqa: E402

KS = range(1, 33)
KW: dict[str, Any] = {
    "covariance_type": "diag",
    "backend": "cupy",
    "tol": 0.0,
    "max_iter": 20,
    "random_state": 0,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="1M rows")
    args = parser.parse_args()
    import cupy
    from sklearn.exceptions import ConvergenceWarning

    from gmm_core import GaussianMixture, GaussianMixtureSelect

    warnings.simplefilter("ignore", ConvergenceWarning)
    n = 1_000_000 if args.quick else 10_000_000
    X = cupy.asarray(telemetry(n, 16, 32))
    report: dict[str, Any] = {"environment": environment(), "rows": n, "ks": list(KS), **KW}

    GaussianMixture(32, **KW).fit(X)  # compiles this shape's kernels
    secs, gm = timed(lambda: GaussianMixture(32, **KW).fit(X), 3)
    report["k32_fit_s"] = secs
    report["k32_fit_timings"] = gm.fit_timings_
    log(f"K=32 fit alone: {secs:.3f} s ({gm.fit_timings_})")

    GaussianMixtureSelect(KS, **KW).fit(X)  # compiles every candidate's kernels
    secs, sel = timed(lambda: GaussianMixtureSelect(KS, **KW).fit(X), 3)
    report["sweep_s"] = secs
    report["sweep_timings"] = sel.fit_timings_
    report["sweep_batched"] = bool(sel.batched_)
    report["sweep_best_k"] = int(sel.best_params_["n_components"])
    log(f"sweep K=1..32: {secs:.3f} s ({sel.fit_timings_}), BIC chooses K={report['sweep_best_k']}")

    loop_bounds: list[float] = []

    def loop() -> None:
        loop_bounds.clear()
        for k in KS:
            loop_bounds.append(GaussianMixture(k, **KW).fit(X).lower_bound_)

    secs, _ = timed(loop, 1)
    report["loop_s"] = secs
    diff = np.abs(np.asarray(loop_bounds) - sel.results_["lower_bound"])
    report["sweep_vs_loop_max_lower_bound_diff"] = float(np.nanmax(diff))
    log(f"loop of {len(KS)} fits: {secs:.3f} s; sweep vs loop lower bounds: {np.nanmax(diff):.1e}")

    iters = KW["max_iter"]
    k32_em = report["k32_fit_timings"]["em"] / iters
    sweep_em = report["sweep_timings"]["em"] / iters
    work = sum(KS) / max(KS)
    report["arithmetic"] = {
        "component_work_ratio": work,
        "k32_em_ms_per_iteration": 1e3 * k32_em,
        "sweep_em_ms_per_iteration": 1e3 * sweep_em,
        "sweep_em_per_component_vs_k32": (sweep_em / sum(KS)) / (k32_em / max(KS)),
    }
    report["ratios"] = {
        "sweep_over_k32_fit": report["sweep_s"] / report["k32_fit_s"],
        "loop_over_sweep": report["loop_s"] / report["sweep_s"],
        "target_sweep_over_k32_fit": 3.0,
    }
    log(f"ratios: {report['ratios']}; arithmetic: {report['arithmetic']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
