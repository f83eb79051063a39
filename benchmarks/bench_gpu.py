"""GPU benchmark: emflow's CuPy engine side by side with its peers, one run, one device.

Cases (../shared/DESIGN.md, "Performance targets"): the seed paper's five data sets (diag, 500
iterations), telemetry 10M x 16 K=32 diag float32, full 1M x 32 K=16 float32, restarts (the
telemetry case with n_init=8). Every implementation starts from the same parameters and runs a
fixed number of iterations (tol=0). Kernel compile time and host-to-device copy are reported
separately from the EM time. scikit-learn runs on all CPU cores on a subset and/or fewer
iterations, and its figure is extrapolated per iteration (labelled ``extrapolated``).

Run from the repository root::

    PYTHONPATH=. python3 benchmarks/bench_gpu.py --out benchmarks/results/gpu_h100.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.peers.runners import (  # noqa: E402
    cupy_plain,
    sklearn_fit,
    sklearn_timing,
    sync,
    torch_plain,
    torchgmm_peer,
)
from benchmarks.report import environment, log, write_results  # noqa: E402

RESULTS: list[dict[str, Any]] = []


def log_accuracy(name: str, acc: dict[str, Any]) -> None:
    log(f"  {name}: accuracy rel_diff {acc['rel_diff']:.2e}, labels {acc['label_agreement']:.5f}")


# ---------------------------------------------------------------------------------------------
# data and initial parameters


def paper_datasets(quick: bool) -> list[tuple[str, np.ndarray, int]]:
    from sklearn.datasets import load_iris, load_wine, make_blobs, make_circles, make_moons

    big = 20_000 if quick else None
    out = [
        ("iris", load_iris().data, 3),
        ("wine", load_wine().data, 3),
        ("moons_200k", make_moons(big or 200_000, noise=0.05, random_state=0)[0], 2),
        (
            "circles_200k",
            make_circles(big or 200_000, noise=0.05, factor=0.5, random_state=0)[0],
            2,
        ),
        ("blobs_500k", make_blobs(big or 500_000, n_features=2, centers=5, random_state=0)[0], 5),
    ]
    return [(name, X.astype(np.float32), k) for name, X, k in out]


def telemetry(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    import cupy as cp

    rs = cp.random.RandomState(seed)
    centers = rs.normal(0, 4, size=(k, d)).astype(cp.float32)
    scales = rs.uniform(0.5, 1.5, size=(k, d)).astype(cp.float32)
    labels = rs.randint(0, k, size=n)
    X = centers[labels] + rs.standard_normal((n, d), dtype=cp.float32) * scales[labels]
    return cp.asnumpy(X)


def initial_params(X: np.ndarray, k: int, cov: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights uniform, means = k distinct random rows, covariances = the data's (co)variance."""
    rng = np.random.default_rng(seed)
    Xd = X.astype(np.float64)
    means = Xd[rng.choice(len(X), size=k, replace=False)]
    var = Xd.var(0) + 1e-6
    if cov == "full":
        covs = np.repeat(
            (np.cov(Xd[: min(len(X), 200_000)].T) + 1e-6 * np.eye(X.shape[1]))[None], k, 0
        )
    else:
        covs = np.repeat(var[None], k, 0)
    return {"weights": np.full(k, 1.0 / k), "means": means, "covariances": covs}


# ---------------------------------------------------------------------------------------------
# implementations


def emflow_fused(
    X: np.ndarray,
    inits: list[dict],
    cov: str,
    iters: int,
    use_graphs: bool = True,
    shared_accumulators: bool = False,
    tensor_cores: bool | None = None,
) -> dict[str, Any]:
    """Device EM loop of the CuPy engine (run_em: kernels in CUDA graphs), all restarts at once.

    ``tensor_cores=None`` is the engine's default (the tensor-core pass where it applies).
    """
    import cupy as cp

    from gmm_core import _cuda_loader
    from gmm_core._cupy import CupyEngine
    from gmm_core._gaussian import Params, cholesky_precisions

    engine = CupyEngine(
        use_graphs=use_graphs, shared_accumulators=shared_accumulators, tensor_cores=tensor_cores
    )
    shift = X.mean(0, dtype=np.float64)
    t0 = time.perf_counter()
    data = engine.prepare(X, shift, cov)
    h2d = time.perf_counter() - t0
    covs = np.stack([i["covariances"] for i in inits])
    params = Params(
        np.stack([i["weights"] for i in inits]),
        np.stack([i["means"] for i in inits]) - shift,
        covs,
        cholesky_precisions(covs, cov, np),
    ).map(cp.asarray)
    eps = 10 * float(np.finfo(X.dtype).eps)
    c0 = _cuda_loader.compile_seconds
    t0 = time.perf_counter()
    # first fit of this shape: compiles the kernels and captures the CUDA graph (reported apart)
    engine.run_em(data, params, reg_covar=1e-6, eps=eps, tol=0.0, max_iter=iters)
    sync()
    warm = time.perf_counter() - t0
    compile_s = _cuda_loader.compile_seconds - c0
    capture_s = engine.last_run_info.get("capture_s")
    best = math.inf
    for _ in range(2 if iters * X.shape[0] < 1e9 else 1):
        sync()
        t0 = time.perf_counter()
        out = engine.run_em(data, params, reg_covar=1e-6, eps=eps, tol=0.0, max_iter=iters)
        sync()
        best = min(best, time.perf_counter() - t0)
    assert out is not None
    p, history, n_iter, _ = out
    return {
        "seconds": best,
        "per_iter_ms": 1e3 * best / iters,
        "compile_s": compile_s,
        "first_call_s": warm,
        "graph_capture_s": capture_s,
        "h2d_s": h2d,
        "lower_bound": [float(history[iters - 1, r]) for r in range(len(inits))],
        "run_info": dict(engine.last_run_info),
        "params": p,
        "shift": shift,
        "engine": engine,
        "data": data,
    }


def emflow_engine_loop(
    X: np.ndarray, init: dict, cov: str, iters: int, tensor_cores: bool | None = None
) -> dict[str, Any]:
    """The estimator's generic loop on the CuPy engine: accumulate + M-step per iteration (the
    engine's M-step kernel where it has one, as ``GaussianMixture`` calls it, else CuPy ops)."""
    import cupy as cp

    from gmm_core import _cuda_loader
    from gmm_core._cupy import CupyEngine
    from gmm_core._gaussian import Params, cholesky_precisions, m_step

    engine = CupyEngine(tensor_cores=tensor_cores)
    shift = X.mean(0, dtype=np.float64)
    t0 = time.perf_counter()
    data = engine.prepare(X, shift, cov)
    h2d = time.perf_counter() - t0
    params = Params(
        init["weights"][None],
        (init["means"] - shift)[None],
        init["covariances"][None],
        cholesky_precisions(init["covariances"][None], cov, np),
    ).map(cp.asarray)
    eps = 10 * float(np.finfo(X.dtype).eps)
    active = cp.ones(1, bool)
    c0 = _cuda_loader.compile_seconds
    p = params

    def step(stats):
        out = engine.m_step(stats, cov, 1e-6, eps)
        return out if out is not None else m_step(stats, cov, 1e-6, eps, cp)

    for _ in range(2):
        p = step(engine.accumulate(data, p, active))
    sync()
    compile_s = _cuda_loader.compile_seconds - c0
    p = params
    bounds = []
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        stats = engine.accumulate(data, p, active)
        bounds.append(stats.loglik / stats.n_samples)
        p = step(stats)
    sync()
    secs = time.perf_counter() - t0
    return {
        "seconds": secs,
        "per_iter_ms": 1e3 * secs / iters,
        "compile_s": compile_s,
        "h2d_s": h2d,
        "lower_bound": [float(bounds[-1][0])],
        "params": p,
        "shift": shift,
        "engine": engine,
        "data": data,
    }


def accuracy(X: np.ndarray, init: dict, cov: str, iters: int) -> dict[str, Any]:
    """emflow (fit dtype, fused or GEMM path) vs scikit-learn float64, same init and iterations."""
    import cupy as cp

    from gmm_core._gaussian import Params

    ref, _ = sklearn_fit(X, init, cov, iters)
    if cov in ("diag", "spherical"):
        ours = emflow_fused(X, [init], cov, iters)
    else:
        ours = emflow_engine_loop(X, init, cov, iters)
    p = ours["params"].take(0)
    engine, data = ours["engine"], ours["data"]
    wlp = engine.weighted_log_prob(
        data, Params(*(a for a in (p.weights, p.means, p.covariances, p.precisions_cholesky)))
    )
    labels = cp.asnumpy(wlp.argmax(1))
    # scikit-learn's lower_bound_ is the mean log-likelihood of the last E-step (before its M-step)
    ours_bound = ours["lower_bound"][0]
    ref_bound = float(ref.lower_bound_)
    return {
        "iters": iters,
        "rows": len(X),
        "mean_loglik_emflow": ours_bound,
        "mean_loglik_sklearn_f64": ref_bound,
        "rel_diff": abs(ours_bound - ref_bound) / abs(ref_bound),
        "label_agreement": float((labels == ref.predict(X.astype(np.float64))).mean()),
    }


# ---------------------------------------------------------------------------------------------
# cases


def record(case: str, impl: str, **fields: Any) -> None:
    row = {"case": case, "impl": impl}
    row.update({k: v for k, v in fields.items() if k not in ("params", "engine", "data", "shift")})
    RESULTS.append(row)
    per = row.get("per_iter_ms")
    tot = row.get("seconds")
    log(
        f"  {case:16s} {impl:28s} per-iter {per:10.4f} ms"
        + (f"  total {tot:8.4f} s" if tot else "")
    )


def safe(case: str, impl: str, fn, *args) -> dict | None:
    try:
        out = fn(*args)
    except Exception as exc:  # keep the other rows
        import traceback

        traceback.print_exc()
        RESULTS.append({"case": case, "impl": impl, "error": f"{type(exc).__name__}: {exc}"})
        log(f"  {case:16s} {impl:28s} FAILED: {exc}")
        return None
    record(case, impl, **out)
    return out


def record_api(case: str, impl: str, **fields: Any) -> None:
    """A public-API row (``benchmarks/public_api.py``)."""
    RESULTS.append({"case": case, "impl": impl, "api": True, **fields})
    shown = {k: v for k, v in fields.items() if k != "fit_timings"}
    log(f"  {case:16s} {impl:48s} {json.dumps(shown, default=str)}")
    if "fit_timings" in fields:
        log(f"  {'':16s} {'':48s} fit_timings {json.dumps(fields['fit_timings'])}")


def run_api(quick: bool) -> None:
    from benchmarks import public_api

    skip = tuple(p for p in ARGS.api_skip.split(",") if p)
    public_api.run(
        quick, record_api, init_seeds=ARGS.init_seeds, skip=skip, init_max_rows=ARGS.init_max_rows
    )


def run_paper(quick: bool) -> None:
    iters = 500
    for name, X, k in paper_datasets(quick):
        log(f"paper/{name}: {X.shape}, K={k}, diag, {iters} iterations")
        init = initial_params(X, k, "diag")
        safe(name, "emflow-fused", emflow_fused, X, [init], "diag", iters)
        if name == "blobs_500k":
            safe(name, "emflow-fused (no graph)", emflow_fused, X, [init], "diag", iters, False)
            safe(
                name,
                "emflow-fused (shared acc)",
                emflow_fused,
                X,
                [init],
                "diag",
                iters,
                True,
                True,
            )
        safe(name, "emflow-engine-loop", emflow_engine_loop, X, init, "diag", 50)
        safe(name, "cupy-plain", cupy_plain, X, init, "diag", iters)
        safe(name, "torch-plain", torch_plain, X, init, "diag", iters)
        if name == "blobs_500k":
            safe(name, "torchgmm", torchgmm_peer, X, init, "diag", 50)
        sub = X[: min(len(X), 50_000)]
        safe(
            name,
            "sklearn(f64, all cores)",
            sklearn_timing,
            sub,
            init,
            "diag",
            10 if len(X) > 1000 else iters,
            len(X),
        )
        acc_iters = 500 if len(X) < 1000 else (50 if quick else 20)
        try:
            acc = accuracy(X, init, "diag", acc_iters)
            RESULTS.append({"case": name, "impl": "accuracy", **acc})
            log_accuracy(name, acc)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            RESULTS.append({"case": name, "impl": "accuracy", "error": str(exc)})


def run_telemetry(quick: bool) -> None:
    n = 1_000_000 if quick else 10_000_000
    d, k = 16, 32
    log(f"telemetry: {n} x {d}, K={k}, diag float32")
    X = telemetry(n, d, k)
    init = initial_params(X, k, "diag")
    one = safe("telemetry", "emflow-fused", emflow_fused, X, [init], "diag", 20)
    simt = (True, False, False)  # graphs, no shared accumulators, no tensor cores
    safe("telemetry", "emflow-fused (SIMT pass)", emflow_fused, X, [init], "diag", 20, *simt)
    safe("telemetry", "emflow-engine-loop", emflow_engine_loop, X, init, "diag", 10)
    safe("telemetry", "cupy-plain", cupy_plain, X, init, "diag", 3)
    safe("telemetry", "torch-plain", torch_plain, X, init, "diag", 5)
    safe("telemetry", "torchgmm", torchgmm_peer, X, init, "diag", 5)
    safe("telemetry", "sklearn(f64, all cores)", sklearn_timing, X[:200_000], init, "diag", 2, n)
    inits = [initial_params(X, k, "diag", seed=s) for s in range(8)]
    eight = safe("restarts_n8", "emflow-fused n_init=8", emflow_fused, X, inits, "diag", 20)
    eight_simt = "emflow-fused n_init=8 (SIMT pass)"
    safe("restarts_n8", eight_simt, emflow_fused, X, inits, "diag", 20, *simt)
    if one and eight:
        RESULTS.append(
            {
                "case": "restarts_n8",
                "impl": "ratio",
                "ratio_vs_one": eight["seconds"] / one["seconds"],
            }
        )
        log(f"  restarts n_init=8 / n_init=1 time ratio: {eight['seconds'] / one['seconds']:.2f}")
    sub = X[:200_000]
    try:
        acc = accuracy(sub, init, "diag", 10)
        RESULTS.append({"case": "telemetry", "impl": "accuracy", **acc})
        log_accuracy("telemetry (200k subset)", acc)
    except Exception as exc:
        import traceback

        traceback.print_exc()
        RESULTS.append({"case": "telemetry", "impl": "accuracy", "error": str(exc)})


def run_full(quick: bool) -> None:
    n = 100_000 if quick else 1_000_000
    d, k = 32, 16
    log(f"full: {n} x {d}, K={k}, full float32")
    X = telemetry(n, d, k, seed=1)
    init = initial_params(X, k, "full")
    safe("full", "emflow-engine-loop", emflow_engine_loop, X, init, "full", 10)
    # the same loop on the GEMM path (cuBLAS over cached quadratic features), for comparison
    safe("full", "emflow-gemm-path", emflow_engine_loop, X, init, "full", 10, False)
    safe("full", "cupy-plain", cupy_plain, X, init, "full", 3)
    safe("full", "torch-plain", torch_plain, X, init, "full", 5)
    safe("full", "torchgmm", torchgmm_peer, X, init, "full", 5)
    safe("full", "sklearn(f64, all cores)", sklearn_timing, X[:50_000], init, "full", 2, n)
    try:
        acc = accuracy(X[:50_000], init, "full", 5)
        RESULTS.append({"case": "full", "impl": "accuracy", **acc})
        log_accuracy("full (50k subset)", acc)
    except Exception as exc:
        import traceback

        traceback.print_exc()
        RESULTS.append({"case": "full", "impl": "accuracy", "error": str(exc)})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="JSON result path")
    parser.add_argument("--md", type=Path, default=None, help="markdown table path")
    parser.add_argument("--cases", default="api,paper,telemetry,full")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument(
        "--init-seeds", type=int, default=5, help="seeds of the k-means init comparison (api)"
    )
    parser.add_argument("--api-skip", default="", help="api parts to skip: init,peers,cold,...")
    parser.add_argument(
        "--init-max-rows", type=int, default=None, help="init comparison only up to this size"
    )


ARGS = argparse.Namespace(init_seeds=5, api_skip="", init_max_rows=None)


def run(args: argparse.Namespace) -> int:
    global ARGS
    ARGS = args
    env = environment()
    log(json.dumps(env))
    out = args.out or REPO / "benchmarks" / "results" / f"gpu_{dt.date.today():%Y%m%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    runners = {"api": run_api, "paper": run_paper, "telemetry": run_telemetry, "full": run_full}
    cases = args.cases.split(",")
    unknown = sorted(set(cases) - set(runners))
    if unknown:
        raise SystemExit(f"unknown --cases {unknown}; choose from {sorted(runners)}")
    md = ""
    for i, case in enumerate(cases):
        runners[case](args.quick)
        # written after every case group: a run cut short still leaves its figures
        md = write_results(
            RESULTS, out, args.md, env, quick=args.quick, complete=i == len(cases) - 1
        )
    log(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
