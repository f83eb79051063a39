"""Where a public large-K ``fit`` iteration goes beyond the screened pass (cProfile + events).

    SCIPY_ARRAY_API=1 PYTHONPATH=. python3 benchmarks/profile_large_k_fit.py --out f.json

``bench_large_k``'s case (1M x 128, K = 1024) from its start, as the benchmark's public-API
figure runs it (``fit_from_start``, ``tol=0``): per covariance type, the fit of 7 iterations
under cProfile (after a warm-up fit), its 30 most expensive functions by own and by cumulative
time, and the screened pass's device milliseconds per step over the same fit
(``large_k_sparse.profile``), so the time outside the pass is what is left.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_large_k import fit_from_start, make_data, start_of  # noqa: E402
from benchmarks.report import environment, log  # noqa: E402


def case(X: Any, cov: str, iters: int) -> dict[str, Any]:
    from gmm_core._cupy import large_k_sparse

    start = start_of(X, cov)
    fit_from_start(X, cov, start, iters)  # warm-up: compiles
    t0 = time.perf_counter()
    fit_from_start(X, cov, start, iters)
    wall = time.perf_counter() - t0
    large_k_sparse.profile = {}
    fit_from_start(X, cov, start, iters)
    steps, large_k_sparse.profile = large_k_sparse.profile, None
    prof = cProfile.Profile()
    prof.enable()
    fit_from_start(X, cov, start, iters)
    prof.disable()
    out: dict[str, Any] = {"iterations": iters, "fit_s": wall, "pass_steps_ms": steps}
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(30)
        out[f"top_{key}"] = buf.getvalue()
        log(buf.getvalue())
    log(
        f"  {cov}: fit of {iters} iterations {wall:.3f} s; pass steps (ms, whole fit): "
        + "  ".join(f"{k} {v:.1f}" for k, v in sorted(steps.items(), key=lambda t: -t[1]))
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--covs", default="spherical,diag")
    parser.add_argument("--iters", type=int, default=7)
    args = parser.parse_args()
    report: dict[str, Any] = {"environment": environment(), "cases": {}}
    X = make_data()
    for cov in args.covs.split(","):
        report["cases"][cov] = case(X, cov, args.iters)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
