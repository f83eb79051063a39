"""Multi-GPU benchmark: the same EM on one GPU and on every GPU of the host, side by side.

Cases (../shared/DESIGN.md and issue 8):

``telemetry``
    10M x 16, K=32, diag, float32, a fixed number of iterations (tol=0) from the same initial
    parameters: one GPU (the CuPy engine's device loop ``run_em`` in CUDA graphs, and the same
    multi-GPU device loop restricted to one device) against all GPUs (``MultiGpuEngine.run_em``),
    plus the estimator's generic loop (engine pass + CuPy M-step) on one and on all GPUs. The
    speed-up is reported against the faster one-GPU figure; lower bounds are compared.
``large``
    100M x 16, K=32, diag, float32, generated directly on the GPUs (one shard per device, no
    host copy): trained to convergence (tol=1e-3, max_iter=100) on all GPUs; the same data on
    one GPU for a fixed-iteration timing when it fits.
``estimator``
    ``GaussianMixture(backend="multigpu")`` against ``backend="cupy"`` on a 2M-row subset: the
    public path works and agrees.

Run from the repository root (writes JSON with the devices named)::

    PYTHONPATH=. python3 benchmarks/bench_multigpu.py --out benchmarks/results/multigpu_h200x2.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_gpu import emflow_engine_loop, emflow_fused, initial_params  # noqa: E402
from benchmarks.report import log  # noqa: E402

RESULTS: list[dict[str, Any]] = []
_NOT_JSON = ("params", "engine", "data", "shift")


def sync_all() -> None:
    import cupy as cp

    for device in range(cp.cuda.runtime.getDeviceCount()):
        cp.cuda.Device(device).synchronize()


def record(case: str, impl: str, out: dict[str, Any]) -> dict[str, Any]:
    row = {"case": case, "impl": impl, **{k: v for k, v in out.items() if k not in _NOT_JSON}}
    RESULTS.append(row)
    log(f"  {case:10s} {impl:44s} {row.get('per_iter_ms', math.nan):9.3f} ms/iteration")
    return out


def safe(case: str, impl: str, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
    """Run one measurement; a failure is recorded with its error and the others still run."""
    try:
        return record(case, impl, fn(*args, **kwargs))
    except Exception as exc:
        traceback.print_exc()
        RESULTS.append({"case": case, "impl": impl, "error": f"{type(exc).__name__}: {exc}"})
        log(f"  {case:10s} {impl:44s} FAILED: {type(exc).__name__}: {exc}")
        return None


# ---------------------------------------------------------------------------------------------
# data generated on the devices


def mixture_spec(d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Centres and per-feature scales of the synthetic telemetry mixture (host, float32)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 4.0, size=(k, d)).astype(np.float32)
    scales = rng.uniform(0.5, 1.5, size=(k, d)).astype(np.float32)
    return centers, scales


def telemetry_on_device(n: int, centers: np.ndarray, scales: np.ndarray, seed: int) -> Any:
    """``n`` rows of the mixture drawn on the current device, float32 (no host copy)."""
    import cupy as cp

    rs = cp.random.RandomState(seed)
    k, d = centers.shape
    labels = rs.randint(0, k, size=n)
    X = rs.standard_normal((n, d), dtype=cp.float32)
    X *= cp.asarray(scales)[labels]
    X += cp.asarray(centers)[labels]
    del labels
    return X


def device_shards(n: int, devices: list[int], centers: np.ndarray, scales: np.ndarray) -> list:
    """One shard per device, shard ``i`` drawn on ``devices[i]`` with seed ``i``."""
    import cupy as cp

    edges = np.linspace(0, n, len(devices) + 1).round().astype(np.int64)
    shards = []
    for i, device in enumerate(devices):
        with cp.cuda.Device(device):
            shards.append(telemetry_on_device(int(edges[i + 1] - edges[i]), centers, scales, i))
    sync_all()
    return shards


def moments(shards: list) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (float64) of the rows of every device shard."""
    import cupy as cp

    n = sum(s.shape[0] for s in shards)
    total = np.zeros(shards[0].shape[1])
    total_sq = np.zeros_like(total)
    for s in shards:
        with s.device:
            s64 = s.astype(cp.float64)
            total += cp.asnumpy(s64.sum(0))
            total_sq += cp.asnumpy((s64 * s64).sum(0))
            del s64
    mean = total / n
    return mean, total_sq / n - mean**2


def initial_params_on_devices(shards: list, k: int, seed: int = 0) -> dict[str, Any]:
    """Initial parameters as ``bench_gpu.initial_params``: K rows of shard 0, data variance."""
    import cupy as cp

    _, var = moments(shards)
    rng = np.random.default_rng(seed)
    rows = rng.choice(shards[0].shape[0], size=k, replace=False)
    with shards[0].device:
        means = cp.asnumpy(shards[0][cp.asarray(rows)]).astype(np.float64)
    return {
        "weights": np.full(k, 1.0 / k),
        "means": means,
        "covariances": np.repeat((var + 1e-6)[None], k, 0),
    }


# ---------------------------------------------------------------------------------------------
# implementations


def _params(init: dict[str, Any], shift: np.ndarray, engine: Any) -> Any:
    from gmm_core._gaussian import Params, cholesky_precisions

    covs = init["covariances"][None]
    return Params(
        init["weights"][None],
        (init["means"] - shift)[None],
        covs,
        cholesky_precisions(covs, "diag", np),
    ).map(engine.asarray)


def multigpu_device_loop(
    X: Any,
    init: dict[str, Any],
    iters: int,
    devices: list[int],
    tol: float = 0.0,
    exchange: str = "auto",
) -> dict[str, Any]:
    """``MultiGpuEngine.run_em`` on ``devices`` (X: host array, or one device shard each)."""
    from gmm_core import _cuda_loader
    from gmm_core._multigpu_engine import MultiGpuEngine

    engine = MultiGpuEngine(devices, exchange=exchange)
    if isinstance(X, list):
        shift, _ = moments(X)
    else:
        shift = X.mean(0, dtype=np.float64)
    t0 = time.perf_counter()
    data = engine.prepare(X, shift, "diag")
    sync_all()
    h2d = time.perf_counter() - t0
    params = _params(init, shift, engine)
    eps = 10 * float(np.finfo(np.float32).eps)
    c0 = _cuda_loader.compile_seconds
    t0 = time.perf_counter()
    warm = engine.run_em(data, params, reg_covar=1e-6, eps=eps, tol=0.0, max_iter=2)
    sync_all()
    if warm is None:
        raise RuntimeError("MultiGpuEngine.run_em declined this data (needs the generic loop)")
    first_call = time.perf_counter() - t0
    compile_s = _cuda_loader.compile_seconds - c0
    best, out = math.inf, None
    for _ in range(2 if tol == 0.0 else 1):
        sync_all()
        t0 = time.perf_counter()
        out = engine.run_em(data, params, reg_covar=1e-6, eps=eps, tol=tol, max_iter=iters)
        sync_all()
        best = min(best, time.perf_counter() - t0)
    assert out is not None
    p, history, n_iter, converged = out
    ran = int(n_iter[0])
    return {
        "devices": engine.devices,
        "rows": int(data.n_samples),
        "shard_rows": data.rows,
        "seconds": best,
        "iterations": ran,
        "converged": bool(converged[0]),
        "per_iter_ms": 1e3 * best / max(ran, 1),
        "compile_s": compile_s,
        "first_call_s": first_call,
        "h2d_s": h2d,
        "lower_bound": [float(history[ran - 1, 0])],
        "run_info": {k: v for k, v in engine.last_run_info.items() if k != "devices"},
        "params": p,
    }


def multigpu_engine_loop(X: np.ndarray, init: dict[str, Any], iters: int) -> dict[str, Any]:
    """The estimator's generic loop on all GPUs: sharded pass + Stats sum + CuPy M-step."""
    import cupy as cp

    from gmm_core._gaussian import m_step
    from gmm_core._multigpu_engine import MultiGpuEngine

    engine = MultiGpuEngine()
    shift = X.mean(0, dtype=np.float64)
    t0 = time.perf_counter()
    data = engine.prepare(X, shift, "diag")
    sync_all()
    h2d = time.perf_counter() - t0
    params = _params(init, shift, engine)
    eps = 10 * float(np.finfo(np.float32).eps)
    active = engine.asarray(np.ones(1, bool))
    with cp.cuda.Device(engine.primary):
        p = params
        for _ in range(2):  # compile, warm up
            p = m_step(engine.accumulate(data, p, active), "diag", 1e-6, eps, cp)
        sync_all()
        p, bounds = params, []
        t0 = time.perf_counter()
        for _ in range(iters):
            stats = engine.accumulate(data, p, active)
            bounds.append(stats.loglik / stats.n_samples)
            p = m_step(stats, "diag", 1e-6, eps, cp)
        sync_all()
        secs = time.perf_counter() - t0
    return {
        "devices": engine.devices,
        "seconds": secs,
        "per_iter_ms": 1e3 * secs / iters,
        "h2d_s": h2d,
        "lower_bound": [float(bounds[-1][0])],
    }


def estimator_pair(X: np.ndarray, init: dict[str, Any], iters: int) -> dict[str, Any]:
    """``GaussianMixture`` with backend='multigpu' and backend='cupy': same init, same result."""
    import warnings

    from gmm_core import GaussianMixture

    kw = dict(
        n_components=len(init["weights"]),
        covariance_type="diag",
        tol=0.0,
        max_iter=iters,
        weights_init=init["weights"],
        means_init=init["means"],
        precisions_init=1.0 / init["covariances"],
    )
    fitted = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "did not converge": fixed iterations on purpose
        for backend in ("cupy", "multigpu"):
            fitted[backend] = GaussianMixture(backend=backend, **kw).fit(X)
    one, many = fitted["cupy"], fitted["multigpu"]
    return {
        "rows": len(X),
        "iterations": iters,
        "backend_": many.backend_,
        "fit_seconds_cupy": one.fit_seconds_,
        "fit_seconds_multigpu": many.fit_seconds_,
        "lower_bound_cupy": float(one.lower_bound_),
        "lower_bound_multigpu": float(many.lower_bound_),
        "max_abs_mean_diff": float(np.abs(one.means_ - many.means_).max()),
        "label_agreement": float((one.predict(X) == many.predict(X)).mean()),
    }


# ---------------------------------------------------------------------------------------------
# cases


def run_telemetry(n: int, iters: int) -> None:
    import cupy as cp

    d, k = 16, 32
    devices = list(range(cp.cuda.runtime.getDeviceCount()))
    log(f"telemetry: {n} x {d}, K={k}, diag float32, {iters} iterations, devices {devices}")
    centers, scales = mixture_spec(d, k)
    with cp.cuda.Device(0):
        X = cp.asnumpy(telemetry_on_device(n, centers, scales, seed=0))
    init = initial_params(X, k, "diag")
    one_graph = safe(
        "telemetry",
        "1 GPU: CupyEngine.run_em (CUDA graphs)",
        emflow_fused,
        X,
        [init],
        "diag",
        iters,
    )
    one_loop = safe(
        "telemetry",
        "1 GPU: MultiGpuEngine.run_em",
        multigpu_device_loop,
        X,
        init,
        iters,
        devices[:1],
    )
    many = safe(
        "telemetry",
        f"{len(devices)} GPUs: MultiGpuEngine.run_em",
        multigpu_device_loop,
        X,
        init,
        iters,
        devices,
    )
    safe(
        "telemetry",
        f"{len(devices)} GPUs: MultiGpuEngine.run_em, host-launched peer copies",
        multigpu_device_loop,
        X,
        init,
        iters,
        devices,
        exchange="copies",
    )
    one_generic = safe(
        "telemetry", "1 GPU: generic loop (CupyEngine)", emflow_engine_loop, X, init, "diag", iters
    )
    many_generic = safe(
        "telemetry",
        f"{len(devices)} GPUs: generic loop (MultiGpuEngine)",
        multigpu_engine_loop,
        X,
        init,
        iters,
    )
    singles = [r for r in (one_graph, one_loop) if r]
    if many and singles:
        best_one = min(r["per_iter_ms"] for r in singles)
        row = {
            "case": "telemetry",
            "impl": "speedup",
            "n_gpus": len(devices),
            "best_one_gpu_ms": best_one,
            "multi_gpu_ms": many["per_iter_ms"],
            "speedup_vs_best_one_gpu": best_one / many["per_iter_ms"],
            "speedup_same_loop": (one_loop["per_iter_ms"] / many["per_iter_ms"])
            if one_loop
            else None,
            "lower_bound_rel_diff": abs(many["lower_bound"][0] - singles[0]["lower_bound"][0])
            / abs(singles[0]["lower_bound"][0]),
            "target": ">= 1.8x with two GPUs",
        }
        if one_generic and many_generic:
            row["speedup_generic_loop"] = one_generic["per_iter_ms"] / many_generic["per_iter_ms"]
        RESULTS.append(row)
        log(f"  speed-up {len(devices)} GPUs vs best 1 GPU: {row['speedup_vs_best_one_gpu']:.2f}x")
    sub = X[: min(len(X), 2_000_000)]
    safe("estimator", "GaussianMixture backend=multigpu vs cupy", estimator_pair, sub, init, 20)


def run_large(n: int, iters: int, one_gpu: bool) -> None:
    import cupy as cp

    d, k = 16, 32
    devices = list(range(cp.cuda.runtime.getDeviceCount()))
    log(f"large: {n} x {d}, K={k}, diag float32, generated on devices {devices}")
    centers, scales = mixture_spec(d, k)
    t0 = time.perf_counter()
    shards = device_shards(n, devices, centers, scales)
    gen_s = time.perf_counter() - t0
    init = initial_params_on_devices(shards, k)
    trained = safe(
        "large",
        f"{len(devices)} GPUs: train to convergence (tol=1e-3)",
        multigpu_device_loop,
        shards,
        init,
        100,
        devices,
        tol=1e-3,
    )
    if trained:
        RESULTS[-1]["generate_s"] = gen_s
    timed = safe(
        "large",
        f"{len(devices)} GPUs: MultiGpuEngine.run_em, fixed iterations",
        multigpu_device_loop,
        shards,
        init,
        iters,
        devices,
    )
    if not one_gpu:
        return
    # the same rows on device 0 alone (6.4 GB float32 fits one H200/H100)
    with cp.cuda.Device(0):
        on_first = [s if s.device.id == 0 else s.copy() for s in shards]  # peer copies
        del shards
        X0 = cp.concatenate(on_first)
        del on_first
        sync_all()
        one = safe(
            "large",
            "1 GPU: MultiGpuEngine.run_em, fixed iterations",
            multigpu_device_loop,
            [X0],
            init,
            iters,
            [0],
        )
    if one and timed:
        RESULTS.append(
            {
                "case": "large",
                "impl": "speedup",
                "n_gpus": len(devices),
                "speedup_same_loop": one["per_iter_ms"] / timed["per_iter_ms"],
            }
        )


def environment() -> dict[str, Any]:
    import cupy as cp

    devices = []
    for i in range(cp.cuda.runtime.getDeviceCount()):
        props = cp.cuda.runtime.getDeviceProperties(i)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        devices.append(
            {
                "id": i,
                "name": name,
                "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
                "multiprocessors": props["multiProcessorCount"],
            }
        )
    peer = {
        f"{a}->{b}": bool(cp.cuda.runtime.deviceCanAccessPeer(a, b))
        for a in range(len(devices))
        for b in range(len(devices))
        if a != b
    }
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "devices": devices,
        "device": f"{len(devices)} x {devices[0]['name']}" if devices else None,
        "peer_access": peer,
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        "cuda_driver_api": cp.cuda.runtime.driverGetVersion(),
        "cupy": cp.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON result path")
    parser.add_argument("--rows", type=int, default=10_000_000, help="telemetry case rows")
    parser.add_argument("--large-rows", type=int, default=100_000_000, help="0: skip")
    parser.add_argument("--iters", type=int, default=30, help="fixed iterations per timing")
    parser.add_argument(
        "--no-large-one-gpu", action="store_true", help="skip the one-GPU timing of the large case"
    )
    args = parser.parse_args(argv)

    env = environment()
    log(json.dumps(env))
    if len(env["devices"]) < 2:
        log("WARNING: fewer than two GPUs visible; the multi-GPU figures are one-GPU figures")
    from gmm_core import _cuda_loader

    slug = env["devices"][0]["name"].lower().replace("nvidia", "").strip().replace(" ", "_")
    out = (
        args.out or REPO / "benchmarks" / "results" / f"multigpu_{slug}x{len(env['devices'])}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(complete: bool) -> None:  # after every case: a run cut short keeps its figures
        result = {
            "benchmark": "multigpu",
            "environment": env,
            "complete": complete,
            "compile_seconds_total": _cuda_loader.compile_seconds,
            "results": RESULTS,
        }
        out.write_text(json.dumps(result, indent=1, default=float))
        log(f"wrote {out}")

    run_telemetry(args.rows, args.iters)
    write(complete=not args.large_rows)
    if args.large_rows:
        run_large(args.large_rows, args.iters, not args.no_large_one_gpu)
        write(complete=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
