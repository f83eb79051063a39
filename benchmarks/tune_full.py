"""Check and time the full-covariance passes on one GPU: one command, one table.

    PYTHONPATH=. python3 benchmarks/tune_full.py [--quick] [--json OUT]

1. correctness: statistics and log-likelihood of one pass from ``full_pass_tc`` (fused, tensor
   cores, 3xTF32) and from the GEMM path against the NumPy engine in float64, on the same
   centred data and parameters, for several (n, n_features, n_components, n_restarts);
2. the benchmark case (1M x 32, K=16, float32): ms per pass and per EM iteration (pass + the
   ``full_mstep`` kernel) for the GEMM path and ``full_pass_tc`` variants (tiles summed in
   float32 before float64, ``GMM_FULL_TC_FLUSH``), and the pass with 8 restarts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CASES = [  # (n, d, k, restarts)
    (5000, 5, 4, 1),
    (5000, 5, 4, 3),
    (4099, 32, 16, 1),
    (20000, 16, 20, 2),
    (1000, 1, 3, 1),
    (777, 8, 1, 1),
    (3000, 24, 17, 1),
    (200_000, 32, 16, 2),
]


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def correctness(quick: bool) -> list[dict]:
    import cupy as cp
    from gpu_fixtures import make_data, random_params

    from gmm_core._cupy import CupyEngine
    from gmm_core._numpy_engine import NumpyEngine

    rows = []
    for n, d, k, r in CASES[:-1] if quick else CASES:
        X = make_data(n, d, k, np.float32, seed=n + d)
        params = random_params(X, "full", k, r)
        shift = X.mean(0)
        ref_engine = NumpyEngine()
        want = ref_engine.accumulate(
            ref_engine.prepare(X.astype(np.float64), shift, "full"), params, np.ones(r, bool)
        )
        row: dict = {"n": n, "d": d, "k": k, "restarts": r}
        for label, tc in (("tc", True), ("gemm", False)):
            eng = CupyEngine(tensor_cores=tc)
            data = eng.prepare(X, shift, "full")
            row[f"{label}_path"] = "full_pass_tc" if eng._full_tc_ok(data, k) else "gemm"
            got = eng.accumulate(data, params.map(cp.asarray), cp.ones(r, bool))
            for name in ("loglik", "nk", "sx", "sxx"):
                row[f"{label}_{name}"] = rel(cp.asnumpy(getattr(got, name)), getattr(want, name))
        rows.append(row)
        print(
            f"  n={n:>7} d={d:>2} k={k:>2} R={r}  tc[{row['tc_path']}]: "
            + " ".join(f"{m}={row['tc_' + m]:.1e}" for m in ("loglik", "nk", "sx", "sxx"))
            + "  gemm: "
            + " ".join(f"{m}={row['gemm_' + m]:.1e}" for m in ("loglik", "nk", "sx", "sxx")),
            flush=True,
        )
    return rows


def variant(engine, d: int, defines: tuple[str, ...]) -> None:
    """Make ``engine`` launch ``full_tc_params<d>``/``full_pass_tc<d, ...>`` built with extra
    defines (compiled at its next pass)."""
    del d  # every width the engine launches takes the defines
    engine.full_pass_tc.defines = tuple(f"-D{x}" for x in defines)


def timing(quick: bool) -> list[dict]:
    import cupy as cp

    from benchmarks.bench_gpu import initial_params, telemetry
    from gmm_core._cupy import CupyEngine
    from gmm_core._gaussian import Params, cholesky_precisions

    n, d, k = (100_000 if quick else 1_000_000), 32, 16
    X = telemetry(n, d, k, seed=1)
    init = initial_params(X, k, "full")
    shift = X.mean(0, dtype=np.float64)

    def params_of(r: int) -> Params:
        covs = np.repeat(init["covariances"][None], r, 0)
        means = np.stack([np.roll(init["means"], i, axis=0) for i in range(r)]) - shift
        return Params(
            np.repeat(init["weights"][None], r, 0),
            means,
            covs,
            cholesky_precisions(covs, "full", np),
        ).map(cp.asarray)

    rows = []
    configs = [("gemm", False, ())]
    configs.append(("tc (defaults)", True, ()))
    for flush in (1, 16):
        configs.append((f"tc FLUSH={flush}", True, (f"GMM_FULL_TC_FLUSH={flush}",)))
    reference = None
    for label, tc, defines in configs:
        eng = CupyEngine(tensor_cores=tc)
        if defines:
            variant(eng, d, defines)
        data = eng.prepare(X, shift, "full")
        p1 = params_of(1)
        active = cp.ones(1, bool)
        stats = eng.accumulate(data, p1, active)  # compile, warm
        eng.m_step(stats, "full", 1e-6, 1e-6)
        cp.cuda.Device().synchronize()
        reps = 20
        t0 = time.perf_counter()
        for _ in range(reps):
            stats = eng.accumulate(data, p1, active)
        cp.cuda.Device().synchronize()
        pass_ms = 1e3 * (time.perf_counter() - t0) / reps
        p = p1
        t0 = time.perf_counter()
        for _ in range(reps):
            p = eng.m_step(eng.accumulate(data, p, active), "full", 1e-6, 1e-6)
        cp.cuda.Device().synchronize()
        iter_ms = 1e3 * (time.perf_counter() - t0) / reps
        ll = float(stats.loglik[0]) / n
        if reference is None:
            reference = ll
        row = {
            "config": label,
            "pass_ms": pass_ms,
            "iter_ms": iter_ms,
            "mean_ll": ll,
            "rel_vs_gemm": abs(ll - reference) / abs(reference),
        }
        if label in ("gemm", "tc (defaults)"):
            p8 = params_of(8)
            a8 = cp.ones(8, bool)
            eng.accumulate(data, p8, a8)
            cp.cuda.Device().synchronize()
            t0 = time.perf_counter()
            for _ in range(5):
                eng.accumulate(data, p8, a8)
            cp.cuda.Device().synchronize()
            row["pass8_ms"] = 1e3 * (time.perf_counter() - t0) / 5
        rows.append(row)
        print(
            f"  {label:<20} pass {pass_ms:7.3f} ms  iteration {iter_ms:7.3f} ms  mean ll {ll:.8f}"
            f"  rel {row['rel_vs_gemm']:.1e}"
            + (f"  8 restarts pass {row['pass8_ms']:7.3f} ms" if "pass8_ms" in row else ""),
            flush=True,
        )
        del data
        cp.get_default_memory_pool().free_all_blocks()
    # more components: U through L1 (full_pass_tc<D, false>; beyond 23 components at D=32) vs
    # the GEMM path; every group of 16 components repeats the E-step
    for k_big in (16, 32, 48, 64):
        params = Params(
            np.full((1, k_big), 1.0 / k_big),
            (X[np.random.default_rng(k_big).choice(n, k_big, replace=False)] - shift)[None],
            np.repeat(init["covariances"][None, :1], k_big, 1),
            np.repeat(cholesky_precisions(init["covariances"][None, :1], "full", np), k_big, 1),
        ).map(cp.asarray)
        row = {"config": f"K={k_big}"}
        for label, tc, force in (("gemm", False, False), ("tc global U", True, True)):
            eng = CupyEngine(tensor_cores=tc)
            eng._full_tc_force_global_u = force
            data = eng.prepare(X, shift, "full")
            active = cp.ones(1, bool)
            eng.accumulate(data, params, active)
            cp.cuda.Device().synchronize()
            t0 = time.perf_counter()
            for _ in range(5):
                stats = eng.accumulate(data, params, active)
            cp.cuda.Device().synchronize()
            row[label] = 1e3 * (time.perf_counter() - t0) / 5
            row[label + " ll"] = float(stats.loglik[0]) / n
            del data
            cp.get_default_memory_pool().free_all_blocks()
        rows.append(row)
        print(
            f"  K={k_big:<3} pass: GEMM path {row['gemm']:7.3f} ms, tensor cores (U global) "
            f"{row['tc global U']:7.3f} ms; mean ll {row['gemm ll']:.8f} / "
            f"{row['tc global U ll']:.8f}",
            flush=True,
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--only", choices=["correctness", "timing"])
    args = ap.parse_args()
    from benchmarks.tune_fused import run_sections

    sections = (
        ("correctness", lambda: correctness(args.quick)),
        ("timing", lambda: timing(args.quick)),
    )
    return run_sections(sections, args.only, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
