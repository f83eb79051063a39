"""What sample weights and ``partial_fit`` cost on one GPU (issue 18's benchmarks).

    SCIPY_ARRAY_API=1 PYTHONPATH=. python3 benchmarks/bench_weights_online.py \
        --out benchmarks/results/gpu_h200_weights_online.json --md build/weights_online.md

1. Weighted vs unweighted pass, side by side in one run: the engine's pass alone
   (``CupyEngine.accumulate``, median of 20) and the public API's EM iteration (a ``fit`` with
   all ``*_init`` given and ``tol=0``: (time at 23 iterations - time at 3) / 20, median of 5),
   on telemetry (10M x 16, K=32, diag: the tensor-core pass) and full (1M x 32, K=16).
2. ``partial_fit`` throughput on telemetry: rows per second over the whole 10M rows in batches
   of 100k and 1M (CuPy batches, and NumPy batches whose upload is included), beside the
   default batch ``fit`` of the same rows (rows x iterations per second, and its wall time).
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

from benchmarks.bench_gpu import initial_params, telemetry  # noqa: E402
from benchmarks.public_api import timed  # noqa: E402
from benchmarks.report import environment, log  # noqa: E402

RESULTS: list[dict[str, Any]] = []


def _pass_and_iteration(
    Xd: Any, start: dict[str, np.ndarray], cov: str, weights: np.ndarray | None
) -> tuple[float, float]:
    """(pass seconds, API seconds per EM iteration) of one weighting; medians."""
    import cupy

    from gmm_core import GaussianMixture
    from gmm_core._cupy import CupyEngine
    from gmm_core._gaussian import Params, cholesky_precisions

    k = start["weights"].shape[0]
    covs = start["covariances"]
    init: dict[str, Any] = {
        "weights_init": start["weights"],
        "means_init": start["means"],
        "precisions_init": np.linalg.inv(covs) if cov == "full" else 1.0 / covs,
    }
    shift = cupy.asnumpy(Xd.mean(0, dtype=cupy.float64))
    kw = {} if weights is None else {"sample_weight": weights}
    engine = CupyEngine()
    data = engine.prepare(Xd, shift, cov, **kw)
    params = Params(
        start["weights"][None],
        (start["means"] - shift)[None],
        covs[None],
        cholesky_precisions(covs[None], cov, np),
    ).map(cupy.asarray)
    active = cupy.ones(1, dtype=bool)
    engine.accumulate(data, params, active)  # compiled, planned
    t_pass = timed(lambda: engine.accumulate(data, params, active), 20)[0]

    def fit(iters: int) -> None:
        gm = GaussianMixture(
            k, covariance_type=cov, backend="cupy", tol=0.0, max_iter=iters, **init
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm.fit(Xd, **kw)

    fit(3)
    per_iter = (timed(lambda: fit(23), 5)[0] - timed(lambda: fit(3), 5)[0]) / 20
    return t_pass, per_iter


def pass_times(name: str, X: np.ndarray, k: int, cov: str, w: np.ndarray) -> None:
    """The engine's pass alone and the API's EM iteration, unweighted and weighted."""
    import cupy

    Xd = cupy.asarray(X)
    start = initial_params(X, k, cov)
    rows: list[dict[str, Any]] = []
    for weights in (None, w):
        t_pass, per_iter = _pass_and_iteration(Xd, start, cov, weights)
        row = {
            "case": name,
            "impl": "unweighted" if weights is None else "weighted",
            "pass_ms": 1e3 * t_pass,
            "api_ms_per_iter": 1e3 * per_iter,
        }
        rows.append(row)
        log(json.dumps(row))
    plain, heavy = rows
    ratio = {
        "case": name,
        "impl": "weighted/unweighted",
        "pass_ratio": heavy["pass_ms"] / plain["pass_ms"],
        "api_ratio": heavy["api_ms_per_iter"] / plain["api_ms_per_iter"],
    }
    log(json.dumps(ratio))
    RESULTS.extend([*rows, ratio])


def online_throughput(X: np.ndarray, k: int) -> None:
    """partial_fit over all rows in batches, beside the default batch fit."""
    import cupy

    from gmm_core import GaussianMixture

    Xd = cupy.asarray(X)
    n = len(X)
    batch_fit = GaussianMixture(k, covariance_type="diag", backend="cupy", random_state=0)
    batch_fit.fit(Xd)  # warm (kernels compiled)
    t_fit = timed(lambda: batch_fit.fit(Xd), 3)[0]
    row = {
        "case": "telemetry",
        "impl": "fit (default, batch)",
        "seconds": t_fit,
        "n_iter": int(batch_fit.n_iter_),
        "rows_per_s": n / t_fit,
        "row_iterations_per_s": n * batch_fit.n_iter_ / t_fit,
    }
    RESULTS.append(row)
    log(json.dumps(row))
    for batch in (100_000, 1_000_000):
        for source in ("cupy", "numpy"):
            data = Xd if source == "cupy" else X

            def sweep(data: Any = data, batch: int = batch) -> GaussianMixture:
                model = GaussianMixture(k, covariance_type="diag", backend="cupy", random_state=0)
                model.partial_fit(data[:batch])  # the first batch: a fit
                for start in range(batch, n, batch):
                    model.partial_fit(data[start : start + batch])
                return model

            sweep()  # warm
            t = timed(sweep, 3)[0]
            model = sweep()
            row = {
                "case": "telemetry",
                "impl": f"partial_fit, {source} batches of {batch:,}",
                "seconds": t,
                "calls": -(-n // batch),
                "rows_per_s": n / t,
                "ms_per_call": 1e3 * t / -(-n // batch),
                "score_vs_fit": float(model.score(Xd[:1_000_000]))
                - float(batch_fit.score(Xd[:1_000_000])),
            }
            RESULTS.append(row)
            log(json.dumps(row))


def markdown(env: dict[str, Any]) -> str:
    lines = [
        f"Device: {env.get('device', '?')}; CuPy {env.get('cupy', '?')}; {env.get('date', '')}",
        "",
        "| case | what | pass (ms) | API ms/iteration | ratio pass / API |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in RESULTS:
        if "pass_ms" in r:
            lines.append(
                f"| {r['case']} | {r['impl']} | {r['pass_ms']:.3f} | {r['api_ms_per_iter']:.3f} | |"
            )
        elif "pass_ratio" in r:
            lines.append(
                f"| {r['case']} | {r['impl']} | | | {r['pass_ratio']:.3f} / {r['api_ratio']:.3f} |"
            )
    lines += [
        "",
        "| what (telemetry 10M x 16, K=32, diag) | seconds | rows/s | ms/call | score - fit's |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in RESULTS:
        if "rows_per_s" in r:
            extra = r.get("ms_per_call")
            lines.append(
                f"| {r['impl']} | {r['seconds']:.3f} | {r['rows_per_s']:.3g} | "
                f"{'' if extra is None else f'{extra:.2f}'} | "
                f"{r.get('score_vs_fit', 0.0):+.2e} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--md", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args(argv)
    scale = 100 if args.quick else 1
    env = environment()
    rng = np.random.default_rng(0)
    tel = telemetry(10_000_000 // scale, 16, 32)
    pass_times("telemetry", tel, 32, "diag", rng.uniform(0.0, 2.0, len(tel)))
    full = telemetry(1_000_000 // scale, 32, 16, seed=1)
    pass_times("full", full, 16, "full", rng.uniform(0.0, 2.0, len(full)))
    del full
    online_throughput(tel, 32)
    md = markdown(env)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "results": RESULTS}, indent=1) + "\n")
    if args.md is not None:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md)
    log(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
