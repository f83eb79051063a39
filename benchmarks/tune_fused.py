"""Check and time the fused diag pass variants on one GPU: one command, one table.

    PYTHONPATH=. python3 benchmarks/tune_fused.py [--quick] [--json OUT]

1. correctness: the sufficient statistics and log-likelihood of one pass from ``diag_pass``
   (SIMT) and ``diag_pass_tc`` (tensor cores, 3xTF32) against NumPy float64 on the same centred
   data and parameters, for several (n_features, n_components, n_restarts), including a tight
   component far from the centre (the tensor-core pass must switch to its exact E-step there);
2. telemetry 10M x 16, K=32: ``run_em`` ms per iteration, SIMT vs tensor cores, 1 and 8 restarts;
3. Blobs 500k x 2, K=5, 500 iterations: ``run_em`` total time per launch geometry and graph length.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def reference_stats(Xc: np.ndarray, params) -> dict[str, np.ndarray]:
    """float64 statistics of one E-step (diag), per restart."""
    w, mu, var = (np.asarray(a, dtype=np.float64) for a in params)
    X = Xc.astype(np.float64)
    out = {"nk": [], "sx": [], "sxx": [], "ll": []}
    for r in range(w.shape[0]):
        prec = 1.0 / var[r]
        lp = (
            -0.5 * X.shape[1] * np.log(2 * np.pi)
            + 0.5 * np.log(prec).sum(1)
            - 0.5 * ((X[:, None, :] - mu[r][None]) ** 2 * prec[None]).sum(2)
            + np.log(w[r])[None]
        )
        m = lp.max(1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(lp - m).sum(1))
        resp = np.exp(lp - lse[:, None])
        out["nk"].append(resp.sum(0))
        out["sx"].append(resp.T @ X)
        out["sxx"].append(resp.T @ (X * X))
        out["ll"].append(lse.sum())
    return {k: np.array(v) for k, v in out.items()}


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def make_case(n: int, d: int, k: int, r: int, far: float = 0.0, seed: int = 0, spread: float = 4.0):
    """(X, its mean, r restarts' (w, means, var)): k clusters, centres N(0, spread^2)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, spread, size=(k, d))
    scales = rng.uniform(0.5, 1.5, size=(k, d))
    if far:
        centers[0] = far  # a tight component far from the data mean
        scales[0] = 0.01
    labels = rng.integers(0, k, n)
    X = (centers[labels] + rng.standard_normal((n, d)) * scales[labels]).astype(np.float32)
    shift = X.mean(0, dtype=np.float64)
    Xc = (X - shift.astype(np.float32)).astype(np.float32)
    means = np.stack([Xc[rng.choice(n, k, replace=False)].astype(np.float64) for _ in range(r)])
    var = np.stack([rng.uniform(0.5, 2.0, size=(k, d)) * Xc.var(0) for _ in range(r)])
    if far:
        means[:, 0] = centers[0] - shift
        var[:, 0] = 1e-4
    w = rng.dirichlet(np.ones(k), size=r)
    return X, shift, (w, means, var)


def correctness(quick: bool, only: list[int] | None = None) -> list[dict]:
    import cupy as cp

    from gmm_core._cupy import CupyEngine
    from gmm_core._gaussian import Params

    cases = [
        (100_000, 16, 32, 1, 0.0),
        (50_003, 8, 10, 3, 0.0),
        (20_011, 4, 5, 8, 0.0),
        (30_000, 12, 17, 2, 0.0),
        (40_000, 16, 32, 8, 0.0),
        (40_000, 16, 8, 1, 300.0),  # |p|^2 ~ 1e9: exact E-step
    ]
    rows = []
    for i, (n, d, k, r, far) in enumerate(cases):
        if only is not None and i not in only:
            continue
        X, shift, (w, mu, var) = make_case(n, d, k, r, far)
        ref = reference_stats(X - shift.astype(np.float32), (w, mu, var))
        params = Params(
            cp.asarray(w), cp.asarray(mu), cp.asarray(var), cp.asarray(1 / np.sqrt(var))
        )
        for tc in TC_MODES:
            eng = CupyEngine(tensor_cores=tc)
            eng._tc_threads = TC_THREADS
            data = eng.prepare(X, shift, "diag")
            plans = eng._plans(data, r, k)
            st = eng._accumulate_fused(data, params)
            errs = {
                "nk": rel(cp.asnumpy(st.nk), ref["nk"]),
                "sx": rel(cp.asnumpy(st.sx), ref["sx"]),
                "sxx": rel(cp.asnumpy(st.sxx), ref["sxx"]),
                "ll": rel(cp.asnumpy(st.loglik), ref["ll"]),
            }
            row = {
                "n": n,
                "d": d,
                "k": k,
                "r": r,
                "far": far,
                "tensor_cores": tc,
                "tc_plans": [p.tc_mt for p in plans],
                **errs,
            }
            rows.append(row)
            print(
                f"  n={n:7d} d={d:2d} k={k:2d} r={r} far={far:5.0f} tc={int(tc)} "
                f"plans={[p.tc_mt for p in plans]}  nk {errs['nk']:.1e}  sx {errs['sx']:.1e}  "
                f"sxx {errs['sxx']:.1e}  ll {errs['ll']:.1e}",
                flush=True,
            )
    return rows


TC_MODES = (False, True)
TC_THREADS = 256
N_INITS = (1, 8)


def time_run_em(eng, X, shift, inits, iters: int, repeat: int = 2) -> tuple[float, np.ndarray]:
    import cupy as cp

    from gmm_core._gaussian import Params

    data = eng.prepare(X, shift, "diag")
    w, mu, var = inits
    params = Params(cp.asarray(w), cp.asarray(mu), cp.asarray(var), cp.asarray(1 / np.sqrt(var)))
    eng.run_em(data, params, reg_covar=1e-6, eps=1e-6, tol=0.0, max_iter=iters)
    best, hist = np.inf, None
    for _ in range(repeat):
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        out = eng.run_em(data, params, reg_covar=1e-6, eps=1e-6, tol=0.0, max_iter=iters)
        cp.cuda.Device().synchronize()
        best = min(best, time.perf_counter() - t0)
        hist = out[1]
    return best, hist


def telemetry(quick: bool) -> list[dict]:
    import cupy as cp

    from benchmarks.bench_gpu import telemetry as make_telemetry
    from gmm_core._cupy import CupyEngine

    n = 1_000_000 if quick else 10_000_000
    X = make_telemetry(n, 16, 32)
    shift = X.mean(0, dtype=np.float64)
    rows = []
    for n_init in N_INITS:
        rng = np.random.default_rng(0)
        Xc = X[:200_000].astype(np.float64) - shift
        mu = np.stack([Xc[rng.choice(len(Xc), 32, replace=False)] for _ in range(n_init)])
        var = np.repeat(np.repeat(Xc.var(0)[None, None], 32, 1), n_init, 0)
        w = np.full((n_init, 32), 1 / 32)
        iters = 20
        res = {}
        for tc in TC_MODES:
            eng = CupyEngine(tensor_cores=tc)
            eng._tc_threads = TC_THREADS
            sec, hist = time_run_em(eng, X, shift, (w, mu, var), iters)
            res[tc] = (sec, hist)
            plans = eng.last_run_info["plans"]
            print(
                f"  telemetry n={n} n_init={n_init} tc={int(tc)}: {1e3 * sec / iters:.3f} ms/it "
                f"(plans: blocks, tile, ipt, smem {plans})",
                flush=True,
            )
            cp.get_default_memory_pool().free_all_blocks()
        row = {"n": n, "n_init": n_init}
        for tc, (sec, _) in res.items():
            row["tc_ms" if tc else "simt_ms"] = 1e3 * sec / iters
        if len(res) == 2:
            lb_diff = rel(res[True][1][iters - 1], res[False][1][iters - 1])
            row["lower_bound_rel_diff"] = lb_diff
            print(f"    lower bound SIMT vs TC, {iters} it: rel diff {lb_diff:.2e}", flush=True)
        rows.append(row)
    return rows


def blobs(quick: bool) -> list[dict]:
    from sklearn.datasets import make_blobs

    from gmm_core._cupy import CupyEngine

    X = make_blobs(500_000, n_features=2, centers=5, random_state=0)[0].astype(np.float32)
    shift = X.mean(0, dtype=np.float64)
    rng = np.random.default_rng(0)
    mu = (X[rng.choice(len(X), 5, replace=False)].astype(np.float64) - shift)[None]
    var = np.repeat(X.var(0)[None].astype(np.float64), 5, 0)[None]
    w = np.full((1, 5), 0.2)
    rows = []
    # (small kernel, tile rows per thread, blocks per SM, iterations per launch or graph)
    configs = [
        (False, None, None, 64),
        (True, None, 1, 64),
        (True, None, 2, 64),
        (True, None, 4, 64),
        (True, None, 1, 500),
        (False, None, None, 128),
        (False, 64, 1, 128),
    ]
    ref_hist = None
    for small, per_thread, per_sm, steps in configs[: 3 if quick else None]:
        eng = CupyEngine(graph_steps=steps, small_kernel=small)
        eng._tile_per_thread = per_thread
        eng._max_blocks_per_sm = per_sm
        sec, hist = time_run_em(eng, X, shift, (w, mu, var), 500, repeat=3)
        if ref_hist is None:
            ref_hist = hist
        plan = eng.last_run_info["plans"]
        phases = small_kernel_phases(eng, X) if eng.last_run_info["small_kernel"] else None
        row = {
            "phases_us": phases,
            "small_kernel": eng.last_run_info["small_kernel"],
            "per_thread": per_thread,
            "per_sm": per_sm,
            "steps": steps,
            "ms": 1e3 * sec,
            "plans": plan,
            "lower_bound_rel_diff": rel(hist[-1], ref_hist[-1]),
        }
        rows.append(row)
        print(
            f"  blobs 500 it: small={row['small_kernel']} per_thread={per_thread} "
            f"per_sm={per_sm} steps={steps}: {1e3 * sec:.2f} ms  plans={plan}  "
            f"lower bound vs first row {row['lower_bound_rel_diff']:.1e}",
            flush=True,
        )
    return rows


def small_kernel_phases(eng, X) -> dict[str, float] | None:
    """Median microseconds per phase of a diag_em_small step (built with -D GMM_SMALL_PROFILE)."""
    import cupy as cp

    from gmm_core import _cuda_loader

    if "-DGMM_SMALL_PROFILE" not in _cuda_loader.COMPILE_OPTIONS:
        return None
    kmax = eng.last_run_info["small_kmax"]
    name = f"diag_em_small<{_cuda_loader.ctype(X.dtype)}, {X.shape[1]}, false, {kmax}>"
    ptr = _cuda_loader.module("em_diag.cu", (name,)).get_global("gmm_small_prof")
    t = cp.ndarray((64, 8), dtype=cp.uint64, memptr=ptr).get().astype(np.float64)[1:50]
    spans = {
        "pass (block 0)": t[:, 1] - t[:, 0],
        "block sums + fence": t[:, 2] - t[:, 1],
        "wait for arrivals": t[:, 3] - t[:, 2],
        "reduce partials": t[:, 4] - t[:, 3],
        "M-step + fence": t[:, 5] - t[:, 4],
        "flag to next step (block 0)": t[1:, 0] - t[:-1, 5],
        "last block pass end - block 0's": t[:, 6] - t[:, 1],
        "last block sees the flag": t[:, 7] - t[:, 5],
        "whole step": t[1:, 0] - t[:-1, 0],
    }
    out = {k: float(np.median(v)) / 1e3 for k, v in spans.items()}
    print("    phases (us): " + ", ".join(f"{k} {v:.2f}" for k, v in out.items()), flush=True)
    return out


def run_sections(sections, only: str | None, json_path: str | None) -> int:
    """Run the named sections of a tuning script (all, or ``only``), printing as they go, and
    write their rows after the GPU, CuPy version and date to ``json_path`` when given."""
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(0)
    print(f"device: {props['name'].decode()}  cupy {cp.__version__}", flush=True)
    out: dict = {
        "device": props["name"].decode(),
        "cupy": cp.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for name, run in sections:
        if only and only != name:
            continue
        print(f"{name}:", flush=True)
        out[name] = run()
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--only", choices=["correctness", "telemetry", "blobs"])
    ap.add_argument("--tc-threads", type=int, default=256, choices=[128, 256])
    ap.add_argument("--n-init", type=int, help="telemetry: this n_init only")
    ap.add_argument("--cases", help="comma-separated indices of the correctness cases")
    ap.add_argument("--tc", choices=["0", "1"], help="correctness for one pass kind only")
    ap.add_argument(
        "-D", action="append", default=[], help="extra NVRTC define, e.g. GMM_TC_FLUSH=8"
    )
    args = ap.parse_args()
    from gmm_core import _cuda_loader

    _cuda_loader.COMPILE_OPTIONS = (*_cuda_loader.COMPILE_OPTIONS, *(f"-D{d}" for d in args.D))
    if args.D:
        print("defines:", args.D, flush=True)
    global TC_MODES, N_INITS, TC_THREADS
    TC_THREADS = args.tc_threads
    if args.tc:
        TC_MODES = (args.tc == "1",)
    if args.n_init:
        N_INITS = (args.n_init,)

    cases = [int(c) for c in args.cases.split(",")] if args.cases else None
    sections = (
        ("correctness", lambda: correctness(args.quick, cases)),
        ("telemetry", lambda: telemetry(args.quick)),
        ("blobs", lambda: blobs(args.quick)),
    )
    return run_sections(sections, args.only, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
