"""The screened large-K pass (``gmm_core/_cupy/large_k_sparse.py``) checked and timed.

    SCIPY_ARRAY_API=1 PYTHONPATH=. python3 benchmarks/large_k_sparse.py --out sparse.json

The issue-17 case (1M x 128 float32, K = 1024, spherical and diag; ``bench_large_k``'s data and
start), in one device call, the float32 GEMM pass and the screened pass on each screen (TF32,
BF16 GEMMs, BF16 in the selecting kernel's tensor-core tiles: "mma") side by side:

1. the pass (``engine.large_k.accumulate``, median of 5) at the start (means on random rows:
   the rows of clusters without a mean have their responsibilities spread, the hard case) and
   at the parameters of a 6-iteration fit from it; each with its accuracy against the float64
   GEMM path on float64 data (mean log-likelihood, statistics' largest error relative to each
   statistic's largest magnitude) and the screened pass's rows listed for the dense pass and
   pairs kept;
2. the public API per iteration (``fit`` with the start given, 7 against 2 iterations, median
   of 3), and what each of the 7 iterations listed;
3. the default ``fit`` (device k-means init, default tol): time, iterations, lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_large_k import (  # noqa: E402
    K,
    N,
    default_fit,
    fit_from_start,
    make_data,
    per_iteration,
    start_of,
    start_params,
)
from benchmarks.large_k_f64 import errors  # noqa: E402
from benchmarks.public_api import timed  # noqa: E402
from benchmarks.report import environment, log  # noqa: E402

ENV = "GMM_CORE_LARGE_K_SPARSE"
SCREEN_ENV = "GMM_CORE_LARGE_K_SCREEN"
#: the passes side by side: name, screened, screen
VARIANTS = (
    ("float32_gemm", False, "tf32"), ("sparse", True, "tf32"), ("sparse_bf16", True, "bf16"),
    ("sparse_mma", True, "mma"),
)  # fmt: skip


def fitted_params(gm: Any) -> Any:
    """A fitted model's parameters as the engine's one-restart device parameters."""
    import cupy
    import numpy as np

    from gmm_core._gaussian import Params

    def host(a: Any) -> Any:
        return np.asarray(a.get() if hasattr(a, "get") else a, dtype=np.float64)

    return Params(
        host(gm.weights_)[None], host(gm.means_)[None], host(gm.covariances_)[None],
        host(gm.precisions_cholesky_)[None],
    ).map(cupy.asarray)  # fmt: skip


def after_six(X: Any, cov: str, start: dict[str, Any] | None = None) -> Any:
    """The parameters of a 6-iteration dense fit from ``start`` (default ``start_of``): the
    steady state of the public API's iterations, as the engine's device parameters."""
    os.environ[ENV] = "0"
    try:
        return fitted_params(
            fit_from_start(X, cov, start_of(X, cov) if start is None else start, 6)
        )
    finally:
        os.environ.pop(ENV)


def profiled(engine: Any, data: Any, params: Any) -> tuple[float, dict[str, float], Any]:
    """The pass's median milliseconds (5 runs), its steps' device milliseconds (mean of 3
    passes under ``large_k_sparse.profile``) and its statistics."""
    from gmm_core._cupy import large_k_sparse

    seconds, stats = timed(lambda: engine.large_k.accumulate(data, params), 5)
    large_k_sparse.profile = {}
    try:
        for _ in range(3):
            engine.large_k.accumulate(data, params)
        steps = {k: v / 3 for k, v in large_k_sparse.profile.items()}
    finally:
        large_k_sparse.profile = None
    return 1e3 * seconds, steps, stats


def chosen(names: str) -> list[tuple[str, bool, str]]:
    """The ``VARIANTS`` named (comma list; empty: all), in ``VARIANTS``' order."""
    wanted = [n for n in names.split(",") if n]
    unknown = set(wanted) - {v[0] for v in VARIANTS}
    if unknown:
        names_known = [v[0] for v in VARIANTS]
        raise SystemExit(f"unknown variants {sorted(unknown)}: choose from {names_known}")
    return [v for v in VARIANTS if not wanted or v[0] in wanted]


def pass_case(
    X: Any, cov: str, params: Any, label: str, variants: list[tuple[str, bool, str]]
) -> dict[str, Any]:
    import cupy

    from gmm_core._cupy import CupyEngine, large_k_sparse

    engine = CupyEngine()
    data = engine.prepare(X, None, cov)
    data64 = engine.prepare(X.astype(cupy.float64), None, cov)
    ref = engine.gemm.accumulate(data64, params)
    del data64
    out: dict[str, Any] = {}
    for name, on, screen in variants:
        engine.config.large_k_fused = engine.config.large_k_f64 = False
        engine.config.large_k_sparse = on
        engine.config.large_k_screen = screen

        def run() -> Any:
            return engine.large_k.accumulate(data, params)

        ms = 1e3 * timed(run, 5)[0]
        large_k_sparse.trace = []
        row = {"ms": ms, **errors(run(), ref)}
        if on:
            row.update(large_k_sparse.trace[-1])
        large_k_sparse.trace = None
        out[name] = row
        extra = f" listed {row['listed']} pairs {row['pairs']}" if on else ""
        log(
            f"  {cov} {label} {name:14s} {ms:7.2f} ms  ll {row['mean_ll_diff_nats']:.1e}  nk "
            f"{row['nk_max_rel']:.1e} sx {row['sx_max_rel']:.1e} sxx {row['sxx_max_rel']:.1e}"
            + extra
        )
    return out


def api_case(
    X: Any, cov: str, start: dict[str, Any], variants: list[tuple[str, bool, str]]
) -> dict[str, Any]:
    from gmm_core._cupy import large_k_sparse

    def fit(iters: int) -> Any:
        return fit_from_start(X, cov, start, iters)

    out: dict[str, Any] = {}
    for key, on, screen in sorted(variants, key=lambda v: not v[1]):  # the dense pass last
        os.environ[ENV] = "1" if on else "0"
        os.environ[SCREEN_ENV] = screen
        row: dict[str, Any] = dict(per_iteration(fit))
        large_k_sparse.trace = [] if on else None
        row["lower_bound_7"] = float(fit(7).lower_bound_)
        if on:
            row["per_pass"], large_k_sparse.trace = large_k_sparse.trace, None
        log(
            f"  {cov} API {key}: {row['per_iter_ms']:.2f} ms per iteration, lower bound "
            f"{row['lower_bound_7']:.6f}" + (f", passes {row['per_pass']}" if on else "")
        )
        row.update(default_fit(X, cov, f"{cov} {key}"))
        out[key] = row
    os.environ.pop(ENV)
    os.environ.pop(SCREEN_ENV)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--covs", default="spherical,diag")
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--variants", default="", help="comma list of VARIANTS' names (all)")
    args = parser.parse_args()
    import cupy

    variants = chosen(args.variants)
    report: dict[str, Any] = {"environment": environment(), "cases": {}}
    X = make_data()
    for cov in args.covs.split(","):
        log(f"{N} x {X.shape[1]}, K={K}, {cov}")
        start = start_of(X, cov)
        later = after_six(X, cov, start)
        case: dict[str, Any] = {
            "pass_at_start": pass_case(X, cov, start_params(start), "start", variants),
            "pass_after_6": pass_case(X, cov, later, "iter 6", variants),
        }
        if not args.skip_api:
            case["api"] = api_case(X, cov, start, variants)
        report["cases"][cov] = case
        cupy.get_default_memory_pool().free_all_blocks()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
