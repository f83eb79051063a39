"""The fused large-K pass (``em_largek_tc.cu``) checked and timed in one device call.

    PYTHONPATH=. python3 benchmarks/large_k_fused.py [--skip-check] [--skip-time] [--json F]

1. check: small cases (partial tiles and row splits, restarts side by side with an inactive one,
   sample weights, widths that are not a multiple of 32) against float64 NumPy statistics,
   beside the cuBLAS float32 path (``GMM_CORE_LARGE_K_FUSED=0``'s): the largest error of each
   statistic relative to the sum of its terms' magnitudes, and the mean log-likelihood's error;
2. time: 1M x 128, K = 1024, spherical and diag (``bench_large_k``'s case and start): the pass
   (``engine.large_k.accumulate``, median of 5) fused and not, the mean log-likelihood against
   float64, and the public API's EM iteration ((7 - 2 iterations) / 5, median of 3);
3. ``--variants``: the kernels' compile-time variants (``GMM_LKT_M_PRODUCTS``) side by side:
   accuracy on the widest small cases, the 1M pass time and each kernel's time (CUDA events
   around every launch).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.public_api import timed  # noqa: E402
from benchmarks.report import environment, log  # noqa: E402
from tests.gpu.test_gpu_large_k import _data, _params, _reference  # noqa: E402

VARIANTS = {
    "default": (),
    "statistics in one TF32 product": ("-DGMM_LKT_M_PRODUCTS=1",),
}


#: compile options of the fused kernels in check() and bias() (--options)
_OPTIONS: tuple[str, ...] = ()


class _Timed:
    """A kernel whose launches are timed by CUDA events (summed per name in ``spent``)."""

    spent: dict[str, list[Any]] = {}

    def __init__(self, kern: Any, name: str) -> None:
        self.__dict__["_kern"], self.__dict__["_name"] = kern, name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._kern, attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self._kern, attr, value)

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        import cupy

        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        self._kern(*args, **kwargs)
        stop.record()
        self.spent.setdefault(self._name, []).append((start, stop))


def _kernel_ms(run: Any, repeats: int = 3) -> dict[str, float]:
    """Median milliseconds per call of each kernel ``run()`` launches."""
    import cupy

    from gmm_core._cupy import large_k

    real = large_k.load_kernel
    large_k.load_kernel = lambda ref, options=(): _Timed(real(ref, options), ref.expr)
    try:
        run()
        _Timed.spent = {}
        for _ in range(repeats):
            run()
        cupy.cuda.Device().synchronize()
    finally:
        large_k.load_kernel = real
    out = {}
    for name, pairs in _Timed.spent.items():
        per_call = [cupy.cuda.get_elapsed_time(a, b) for a, b in pairs]
        out[name] = float(np.sum(per_call) / repeats)
    return out


def _stats(X, cov, params, *, fused, active=None, weights=None, options=None):
    import cupy

    from gmm_core._cupy.engine import CupyEngine

    engine = CupyEngine()
    engine.config.large_k_fused = fused
    engine.large_k.options = _OPTIONS if options is None else options
    data = engine.prepare(cupy.asarray(X), None, cov, sample_weight=weights)
    act = None if active is None else cupy.asarray(active)
    st = engine.large_k.accumulate(data, params.map(cupy.asarray), act)
    return {k: cupy.asnumpy(getattr(st, k)) for k in ("loglik", "nk", "sx", "sxx")}


def check() -> list[dict[str, Any]]:
    rows = []
    cases = [
        # (n, d, k, restarts, cov, active, weighted)
        (3_001, 64, 1024, 1, "diag", None, False),
        (3_001, 64, 1024, 1, "spherical", None, False),
        (3_001, 128, 2048, 1, "diag", None, False),
        (3_001, 128, 2048, 1, "spherical", None, False),
        (3_001, 256, 4096, 1, "diag", None, False),
        (3_001, 256, 4096, 1, "spherical", None, False),
        (2_500, 40, 100, 3, "diag", [True, False, True], False),
        (2_500, 40, 100, 3, "spherical", [True, False, True], True),
        (20_000, 16, 200, 2, "diag", None, True),
        (999, 200, 70, 1, "diag", None, False),
    ]
    for n, d, k, R, cov, active, weighted in cases:
        X = _data(n, d, 64, seed=k + d)
        params = _params(X, cov, k, R)
        rng = np.random.default_rng(3)
        w = rng.uniform(0.2, 2.0, size=n).astype(np.float32) if weighted else None
        ref = _reference(X, cov, params, w)
        row: dict[str, Any] = {"case": f"{n}x{d} K={k} R={R} {cov} act={active} w={weighted}"}
        for fused in (True, False):
            got = _stats(X, cov, params, fused=fused, active=active, weights=w)
            errs = {"ll": 0.0, "nk": 0.0, "sx": 0.0, "sxx": 0.0}
            for r in range(R):
                if active is not None and not active[r]:
                    errs["inactive_nk"] = float(np.abs(got["nk"][r]).max())
                    continue
                errs["ll"] = max(errs["ll"], abs(got["loglik"][r] - ref[r]["loglik"]) / n)
                for name, scale in (("nk", "nk"), ("sx", "sx_scale"), ("sxx", "sxx_scale")):
                    e = np.abs(got[name][r] - ref[r][name]) / (ref[r][scale] + 1e-3)
                    errs[name] = max(errs[name], float(e.max()))
            row["fused" if fused else "gemm"] = errs
        log(f"{row['case']}: fused {row['fused']} | gemm {row['gemm']}")
        rows.append(row)
    return rows


def _pass_of(X: Any, cov: str, *, fused: bool = True, options: tuple[str, ...] = ()) -> Any:
    """(engine, data, params, one pass) of ``bench_large_k``'s case and start on ``X``."""
    from benchmarks.bench_large_k import start_of, start_params
    from gmm_core._cupy import CupyEngine

    engine = CupyEngine()
    engine.config.large_k_fused = fused
    engine.large_k.options = options
    data = engine.prepare(X, None, cov)
    params = start_params(start_of(X, cov))
    return engine, data, params, functools.partial(engine.large_k.accumulate, data, params)


def time_case(cov: str) -> dict[str, Any]:
    import cupy

    from benchmarks.bench_large_k import api_times, make_data, start_of

    X = make_data()
    N = X.shape[0]
    engine, data, params, _ = _pass_of(X, cov)
    out: dict[str, Any] = {}
    data64 = engine.prepare(X.astype(cupy.float64), None, cov)
    ll64 = float(engine.gemm.accumulate(data64, params).loglik[0]) / N
    del data64
    for fused in (True, False):
        engine.config.large_k_fused = fused
        key = "fused" if fused else "gemm"
        ms = 1e3 * timed(lambda: engine.large_k.accumulate(data, params), 5)[0]
        ll = float(engine.large_k.accumulate(data, params).loglik[0]) / N
        out[key] = {"pass_ms": ms, "mean_ll": ll, "mean_ll_diff_nats": ll - ll64}
        log(f"{cov} {key}: pass {ms:.2f} ms, mean ll {ll:.7f} vs f64 {ll64:.7f} ({ll - ll64:+.1e})")
    engine.config.large_k_fused = True
    out["api"] = api_times(X, cov, start_of(X, cov))
    return out


def bias() -> dict[str, Any]:
    """Signed errors of each statistic (mean over components of (got - f64) / mean |f64|) on
    the public-fit test's case (20,000 x 64, K = 256), fused and cuBLAS."""
    out: dict[str, Any] = {}
    X = _data(20_000, 64, 100, seed=11)
    for cov in ("diag", "spherical"):
        params = _params(X, cov, 256, 1, seed=6)
        ref = _reference(X, cov, params)[0]
        for fused in (True, False):
            got = _stats(X, cov, params, fused=fused)
            row = {"ll": float(got["loglik"][0] - ref["loglik"]) / len(X)}
            for name in ("nk", "sx", "sxx"):
                diff = got[name][0] - ref[name]
                row[name + " signed"] = float(diff.mean() / np.abs(ref[name]).mean())
                row[name + " rel max"] = float(np.abs(diff).max() / np.abs(ref[name]).max())
            sx, nk = ref["sx"], ref["nk"][:, None]
            mu_ref, mu = sx / nk, got["sx"][0] / got["nk"][0][:, None]
            sq = ref["sxx"] if cov == "diag" else ref["sxx"][:, None]
            sq_got = got["sxx"][0] if cov == "diag" else got["sxx"][0][:, None]
            var_ref = (
                sq / nk - mu_ref**2
                if cov == "diag"
                else sq / nk - (mu_ref**2).sum(1, keepdims=True)
            )
            var = sq_got / got["nk"][0][:, None] - (
                mu**2 if cov == "diag" else (mu**2).sum(1, keepdims=True)
            )
            row["var signed"] = float(((var - var_ref) / var_ref).mean())
            key = f"{cov} {'fused' if fused else 'cublas'}"
            log(f"{key}: " + ", ".join(f"{k} {v:+.2e}" for k, v in row.items()))
            out[key] = row
    return out


def variants() -> dict[str, Any]:
    from benchmarks.bench_large_k import make_data

    out: dict[str, Any] = {}
    small = [
        (3_001, 128, 2048, "diag"),
        (3_001, 256, 4096, "spherical"),
        (3_001, 256, 4096, "diag"),
    ]
    X1 = make_data()
    N = X1.shape[0]
    for name, options in VARIANTS.items():
        row: dict[str, Any] = {}
        for n, d, k, cov in small:
            X = _data(n, d, 64, seed=k + d)
            params = _params(X, cov, k, 1)
            ref = _reference(X, cov, params)[0]
            got = _stats(X, cov, params, fused=True, options=options)
            row[f"{d} {cov} ll err"] = float(got["loglik"][0] - ref["loglik"]) / n
        for cov in ("spherical", "diag"):
            run = _pass_of(X1, cov, options=options)[3]
            row[f"1M {cov} pass ms"] = 1e3 * timed(run, 5)[0]
            row[f"1M {cov} ll"] = float(run().loglik[0]) / N
            for kern, ms in _kernel_ms(run).items():
                row[f"1M {cov} {kern} ms"] = ms
        log(f"{name}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()))
        out[name] = row
    return out


def profile_one(cov: str) -> None:
    import cupy

    from benchmarks.bench_large_k import make_data

    _pass_of(make_data(), cov)[3]()
    cupy.cuda.Device().synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--covs", default="spherical,diag")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--variants", action="store_true", help="only the variants' table")
    parser.add_argument("--bias", action="store_true", help="only the statistics' signed errors")
    parser.add_argument("--options", default="", help="comma list of -D options for --bias")
    parser.add_argument("--profile-one", metavar="COV", help="one 1M pass (for ncu), no report")
    args = parser.parse_args()
    if args.profile_one:
        profile_one(args.profile_one)
        return
    report: dict[str, Any] = {"environment": environment()}
    global _OPTIONS
    _OPTIONS = tuple(filter(None, args.options.split(",")))
    if args.bias:
        report["bias"] = bias()
        args.skip_check = args.skip_time = True
    if args.variants:
        report["variants"] = variants()
        args.skip_check = args.skip_time = True
    if not args.skip_check:
        report["check"] = check()
    if not args.skip_time:
        report["time"] = {cov: time_case(cov) for cov in args.covs.split(",")}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
