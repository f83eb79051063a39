"""Many components on one GPU (issue 17's large-K benchmark).

    SCIPY_ARRAY_API=1 PYTHONPATH=. python3 benchmarks/bench_large_k.py \
        --out benchmarks/results/gpu_h200_large_k.json --md build/large_k.md

Case: 1M x 128 float32, K = 1024, spherical and diag (clustered data, 1024 true clusters).
Per case, side by side in one run:

1. the engine's pass alone (``CupyEngine.accumulate``, median of 5): the large-K pass
   (``gmm_core/_cupy/large_k.py``) at several chunk sizes, and the float32 GEMM path it replaces;
2. the public API's EM iteration: ``GaussianMixture(1024, covariance_type=..., backend="cupy",
   tol=0)`` with all ``*_init`` given, (time at 7 iterations - time at 2) / 5, median of 3;
3. accuracy: the pass's mean log-likelihood at the start against float64 (the GEMM path in
   DGEMM on float64 data), and, for information, the float32 and float64 fits from the same
   start after 6 iterations (EM in float32 and float64 drifts apart on its own);
4. the default ``fit`` (device k-means init, default tol): whole time and iterations;
5. peers: torchgmm (its 8-epoch fit / 8, and the difference of 8 and 3 epochs; peak memory);
   IBM Flash-GMM's Triton E-step kernels (bf16 and float32 operands) with a torch M-step
   (``benchmarks/peers/flash_gmm.py``), loaded from a checkout in ``--flash-gmm-dir``: it is
   not on PyPI and its code is not ours to vendor. Without the checkout it is recorded as
   unavailable.

Beside the pass: its arithmetic floor at the H200's float32 (CUDA core) peak, and the 3xTF32
tensor-core floor of the same products (the issue's reference: what a fused tensor-core pass
could reach).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.peers.runners import sync as _sync  # noqa: E402
from benchmarks.public_api import timed  # noqa: E402
from benchmarks.report import environment, log  # noqa: E402

N, D, K = 1 << 20, 128, 1024
#: dense TF32 tensor-core and float32 CUDA-core peaks of an H100/H200 SXM (TFLOPS)
TF32_PEAK = 495.0
FP32_PEAK = 67.0
CHUNK_MB = (16, 32, 64, 128, 256)
#: reg_covar of the fixed-start fits: with the default 1e-6 a component of 1024 started on random
#: rows raised "ill-defined covariance" within 7 iterations (float32, 2026-12-04 run)
REG = 1e-3


def make_data(seed: int = 0) -> Any:
    import cupy

    rs = cupy.random.RandomState(seed)
    centres = rs.standard_normal((K, D), dtype=cupy.float32) * 2.0
    labels = rs.randint(0, K, size=N)
    X = centres[labels] + rs.standard_normal((N, D), dtype=cupy.float32) * 0.7
    return cupy.ascontiguousarray(X - X.mean(axis=0))


def start_of(X: Any, cov: str, seed: int = 1) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(N, size=K, replace=False))
    means = X[rows].get().astype(np.float64)
    var = float(X.var(axis=0).mean().get())
    prec = np.full((K, D), 1.0 / (0.5 * var)) if cov == "diag" else np.full(K, 1.0 / (0.5 * var))
    return {"weights_init": np.full(K, 1.0 / K), "means_init": means, "precisions_init": prec}


def start_params(start: dict[str, Any]) -> Any:
    """``start`` as the engine's one-restart device parameters."""
    import cupy

    from gmm_core._gaussian import Params

    prec = start["precisions_init"]
    return Params(
        start["weights_init"][None], start["means_init"][None], 1.0 / prec[None],
        np.sqrt(prec)[None],
    ).map(cupy.asarray)  # fmt: skip


def floors_ms(cov: str) -> tuple[float, float]:
    """(float32 peak, 3xTF32 peak) milliseconds of the pass's two GEMMs."""
    from gmm_core._cupy.large_k import geometry

    _, fp, ldb = geometry(D, cov)
    flops = 2.0 * N * K * fp + 2.0 * N * K * ldb
    return flops / (FP32_PEAK * 1e12) * 1e3, 3 * flops / (TF32_PEAK * 1e12) * 1e3


def pass_times(X: Any, cov: str, start: dict[str, Any]) -> dict[str, Any]:
    import cupy

    from gmm_core._cupy import CupyEngine, large_k

    engine = CupyEngine()
    data = engine.prepare(X, None, cov)
    params = start_params(start)
    out: dict[str, Any] = {}
    default = large_k.CHUNK_BYTES
    for mb in CHUNK_MB:
        large_k.CHUNK_BYTES = mb << 20
        ms = 1e3 * timed(lambda: engine.large_k.accumulate(data, params), 5)[0]
        out[f"large_k_chunk_{mb}MB_ms"] = ms
        log(f"  {cov}: large-K pass, {mb} MB chunks: {ms:.2f} ms")
    large_k.CHUNK_BYTES = default
    out["large_k_pass_ms"] = 1e3 * timed(lambda: engine.large_k.accumulate(data, params), 5)[0]
    # accuracy at the same parameters: the pass's mean log-likelihood against float64 (the
    # GEMM path in DGEMM on float64 data)
    ll32 = float(engine.large_k.accumulate(data, params).loglik[0]) / N
    data64 = engine.prepare(X.astype(cupy.float64), None, cov)
    ll64 = float(engine.gemm.accumulate(data64, params).loglik[0]) / N
    del data64
    out["pass_mean_ll_f32"], out["pass_mean_ll_f64"] = ll32, ll64
    out["pass_mean_ll_diff_nats"] = abs(ll32 - ll64)
    log(
        f"  {cov}: pass mean log-likelihood f32 {ll32:.7f} vs f64 {ll64:.7f} "
        f"({abs(ll32 - ll64):.1e})"
    )
    out["gemm_path_pass_ms"] = 1e3 * timed(lambda: engine.gemm.accumulate(data, params), 3)[0]
    out["floor_ms"], out["floor_3xtf32_ms"] = floors_ms(cov)
    log(
        f"  {cov}: pass {out['large_k_pass_ms']:.2f} ms (floors: float32 {out['floor_ms']:.2f} ms, "
        f"3xTF32 {out['floor_3xtf32_ms']:.2f} ms), old GEMM path {out['gemm_path_pass_ms']:.2f} ms"
    )
    return out


def fit_from_start(X: Any, cov: str, start: dict[str, Any], iters: int) -> Any:
    """The public fit from ``start``: ``iters`` EM iterations, no early stop, device synced."""
    from sklearn.exceptions import ConvergenceWarning

    from gmm_core import GaussianMixture

    gm = GaussianMixture(
        K, covariance_type=cov, backend="cupy", max_iter=iters, tol=0, reg_covar=REG, **start
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(X)
    _sync()
    return gm


def per_iteration(fit: Any) -> dict[str, float]:
    """The public fit's EM iteration: ``fit(iters)`` at 7 against 2 iterations, medians of 3,
    after one warm-up fit: ``{"fit_2_iter_s", "fit_7_iter_s", "per_iter_ms"}``."""
    fit(2)
    t2 = timed(lambda: fit(2), 3)[0]
    t7 = timed(lambda: fit(7), 3)[0]
    return {"fit_2_iter_s": t2, "fit_7_iter_s": t7, "per_iter_ms": 1e3 * (t7 - t2) / 5}


def default_fit(X: Any, cov: str, label: str | None = None) -> dict[str, Any]:
    """``GaussianMixture(K, ...).fit(X)`` as users call it (device k-means init, default tol):
    time, iterations, lower bound; a ``ValueError`` (e.g. a collapsed component) recorded."""
    from sklearn.exceptions import ConvergenceWarning

    from gmm_core import GaussianMixture

    label = label or cov
    t0 = time.perf_counter()
    gm = GaussianMixture(K, covariance_type=cov, backend="cupy", random_state=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gm.fit(X)
    except ValueError as exc:  # recorded, the run goes on
        log(f"  {label}: default fit failed: {exc}")
        return {"default_fit_error": str(exc)}
    _sync()
    out = {
        "default_fit_s": time.perf_counter() - t0,
        "default_fit_n_iter": int(gm.n_iter_),
        "default_fit_lower_bound": float(gm.lower_bound_),
    }
    log(
        f"  {label}: default fit {out['default_fit_s']:.2f} s, {gm.n_iter_} iterations, "
        f"lower bound {gm.lower_bound_:.6f}"
    )
    return out


def api_times(X: Any, cov: str, start: dict[str, Any]) -> dict[str, Any]:
    import cupy

    def fit(iters: int, Xs: Any = X) -> Any:
        return fit_from_start(Xs, cov, start, iters)

    out: dict[str, Any] = dict(per_iteration(fit))
    log(
        f"  {cov}: API per iteration {out['per_iter_ms']:.2f} ms "
        f"(fit(2) {out['fit_2_iter_s'] * 1e3:.1f} ms)"
    )
    # accuracy: float32 and float64 fits from the same start, 6 iterations
    g32 = fit(6)
    X64 = X.astype(cupy.float64)
    g64 = fit(6, X64)
    out["lower_bound_f32"] = float(g32.lower_bound_)
    out["lower_bound_f64"] = float(g64.lower_bound_)
    out["lower_bound_diff_nats"] = abs(out["lower_bound_f32"] - out["lower_bound_f64"])
    s32 = float(g32.score(X64))
    s64 = float(g64.score(X64))
    out["score_f32_model"], out["score_f64_model"] = s32, s64
    out["score_diff_nats"] = abs(s32 - s64)
    log(
        f"  {cov}: 6 iterations, mean log-likelihood float32 {s32:.6f} vs float64 {s64:.6f} "
        f"(|diff| {out['score_diff_nats']:.2e} nats; "
        f"lower bounds {out['lower_bound_diff_nats']:.2e})"
    )
    del X64
    out.update(default_fit(X, cov))
    return out


def torchgmm_times(X: Any, cov: str, start: dict[str, Any]) -> dict[str, Any]:
    try:
        import torch

        from benchmarks.peers.runners import torchgmm_peer
    except ImportError as exc:
        return {"unavailable": str(exc)}
    init = {"weights": start["weights_init"], "means": start["means_init"]}
    Xh = X.get()
    try:
        torch.cuda.reset_peak_memory_stats()
        a = torchgmm_peer(Xh, init, cov, 3)
        b = torchgmm_peer(Xh, init, cov, 8)
    except Exception as exc:  # not installed, or out of memory
        return {"unavailable": f"{type(exc).__name__}: {exc}"[:300]}
    out = {
        # whole fits (its own init pass, Lightning): the difference of two is noise-prone, so
        # the 8-epoch fit / 8 is reported as well (an upper bound per iteration)
        "fit_3_epochs_s": a["seconds"],
        "fit_8_epochs_s": b["seconds"],
        "per_iter_ms": 1e3 * b["seconds"] / 8,
        "per_iter_diff_ms": 1e3 * (b["seconds"] - a["seconds"]) / 5,
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9,
    }
    log(
        f"  {cov}: torchgmm {out['per_iter_ms']:.1f} ms per iteration, peak {out['peak_gb']:.1f} GB"
    )
    return out


def flash_gmm_times(
    X: Any, cov: str, start: dict[str, Any], ll64: float, directory: Path
) -> dict[str, Any]:
    try:
        import torch  # noqa: F401

        from benchmarks.peers import flash_gmm
    except ImportError as exc:
        return {"unavailable": str(exc)}
    rows = flash_gmm.run(X, cov, start, directory, reg=REG)
    flash_gmm.ll_gap(rows, ll64)
    for variant, row in rows.items():
        if "em_iteration_ms" in row:
            log(
                f"  {cov}: Flash-GMM {variant}: E-step {row['estep_ms']:.2f} ms, EM iteration "
                f"{row['em_iteration_ms']:.2f} ms, first call {row['first_call_s']:.1f} s, "
                f"|mean ll - f64| {row.get('mean_ll_diff_nats', float('nan')):.1e} nats, "
                f"peak {row['peak_gb']:.2f} GB"
            )
        else:
            log(f"  {cov}: Flash-GMM {variant}: {row.get('unavailable')}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--md", type=Path)
    parser.add_argument("--skip", default="", help="comma list of: api, peers, flash")
    parser.add_argument("--covs", default="spherical,diag", help="covariance types to run")
    parser.add_argument(
        "--flash-gmm-dir",
        type=Path,
        default=REPO / ".peers" / "flash-gmm",
        help="a checkout of github.com/IBM/Flash-GMM (git clone ... .peers/flash-gmm)",
    )
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    import cupy

    report: dict[str, Any] = {"environment": environment(), "cases": {}}
    X = make_data()
    for cov in args.covs.split(","):
        log(f"{N} x {D}, K={K}, {cov}")
        start = start_of(X, cov)
        case: dict[str, Any] = {"pass": pass_times(X, cov, start)}
        if "api" not in skip:
            case["api"] = api_times(X, cov, start)
        if "peers" not in skip:
            case["torchgmm"] = torchgmm_times(X, cov, start)
        if "flash" not in skip:
            ll64 = case["pass"]["pass_mean_ll_f64"]
            case["flash_gmm"] = flash_gmm_times(X, cov, start, ll64, args.flash_gmm_dir)
        report["cases"][cov] = case
        cupy.get_default_memory_pool().free_all_blocks()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))  # after each case
    if args.md:
        rows = [
            "| case | pass (ms) | float32 floor (ms) | old GEMM path (ms) | "
            "API per iteration (ms) | pass |mean ll f32 - f64| (nats) | default fit (s, iters) | "
            "torchgmm per iteration (ms) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for cov, case in report["cases"].items():
            p, a, t = case["pass"], case.get("api", {}), case.get("torchgmm", {})
            rows.append(
                f"| {cov} | {p['large_k_pass_ms']:.2f} | {p['floor_ms']:.2f} | "
                f"{p['gemm_path_pass_ms']:.1f} | {a.get('per_iter_ms', float('nan')):.2f} | "
                f"{p['pass_mean_ll_diff_nats']:.1e} | "
                f"{a.get('default_fit_s', float('nan')):.2f}, {a.get('default_fit_n_iter', '-')} | "
                f"{t.get('per_iter_ms', float('nan')):.1f} |"
            )
        rows += [
            "",
            "| case | Flash-GMM variant | E-step (ms) | EM iteration, torch M-step (ms) | "
            "|mean ll - f64| (nats) | first call, compile + tune (s) | peak (GB) |",
            "|---|---|---|---|---|---|---|",
        ]
        for cov, case in report["cases"].items():
            for variant, f in case.get("flash_gmm", {}).items():
                if "em_iteration_ms" not in f:
                    rows.append(f"| {cov} | {variant} | {f.get('unavailable', '-')} | | | | |")
                    continue
                rows.append(
                    f"| {cov} | {variant} | {f['estep_ms']:.2f} | {f['em_iteration_ms']:.2f} | "
                    f"{f.get('mean_ll_diff_nats', float('nan')):.1e} | "
                    f"{f['first_call_s']:.1f} | {f['peak_gb']:.2f} |"
                )
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text("\n".join(rows) + "\n")
        log("\n".join(rows))


if __name__ == "__main__":
    main()
