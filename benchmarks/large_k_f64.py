"""The large-K pass's float64 E-step (``gmm_core/_cupy/large_k_f64.py``) checked and timed.

    SCIPY_ARRAY_API=1 PYTHONPATH=. python3 benchmarks/large_k_f64.py --out f64.json

The issue-17 case (1M x 128 float32, K = 1024, spherical and diag; ``bench_large_k``'s data and
start), in one device call:

1. the pass (``engine.large_k.accumulate``, median of 5) as the float32 GEMMs, the fused
   kernels, and the float64 E-step at several chunk sizes and statistics slices;
2. each variant's accuracy at the same parameters against the float64 GEMM path on float64
   data: mean log-likelihood (nats per sample), and the statistics' largest error relative to
   each statistic's largest magnitude, with the signed mean of the second moments' relative
   error (a truncating sum shows as a bias);
3. the public API per iteration (``fit`` with the start given, 7 against 2 iterations, median
   of 3) with the float64 E-step on (the default on this device) and off.
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
    fit_from_start,
    make_data,
    per_iteration,
    start_of,
    start_params,
)
from benchmarks.public_api import timed  # noqa: E402
from benchmarks.report import environment, log  # noqa: E402

CHUNK_MB = (16, 32, 64, 128)
SLICES = (1024, 2048, 4096)


def errors(stats: Any, ref: Any) -> dict[str, float]:
    import cupy

    out = {"mean_ll_diff_nats": float(abs(stats.loglik[0] - ref.loglik[0])) / N}
    for name in ("nk", "sx", "sxx"):
        got, want = getattr(stats, name)[0], getattr(ref, name)[0]
        out[f"{name}_max_rel"] = float(cupy.abs(got - want).max() / cupy.abs(want).max())
    want = ref.sxx[0]
    keep = want > 1e-3 * want.max()
    out["sxx_mean_signed_rel"] = float(((stats.sxx[0] - want)[keep] / want[keep]).mean())
    return out


def pass_case(
    X: Any, cov: str, start: dict[str, Any], chunks: tuple[int, ...], slices: tuple[int, ...]
) -> dict[str, Any]:
    import cupy

    from gmm_core._cupy import CupyEngine, large_k_f64

    engine = CupyEngine()
    data = engine.prepare(X, None, cov)
    params = start_params(start)
    data64 = engine.prepare(X.astype(cupy.float64), None, cov)
    ref = engine.gemm.accumulate(data64, params)
    del data64
    out: dict[str, Any] = {"device_fast_float64_default": engine.config.large_k_f64}

    def run(name: str, fused: bool, f64: bool) -> None:
        engine.config.large_k_fused, engine.config.large_k_f64 = fused, f64
        ms = 1e3 * timed(lambda: engine.large_k.accumulate(data, params), 5)[0]
        row = {"ms": ms, **errors(engine.large_k.accumulate(data, params), ref)}
        out[name] = row
        log(
            f"  {cov} {name:28s} {ms:7.2f} ms  ll {row['mean_ll_diff_nats']:.1e}  nk "
            f"{row['nk_max_rel']:.1e} sx {row['sx_max_rel']:.1e} sxx {row['sxx_max_rel']:.1e} "
            f"(signed {row['sxx_mean_signed_rel']:+.1e})"
        )

    run("float32_gemm", False, False)
    run("fused", True, False)
    default = (large_k_f64.CHUNK_BYTES, large_k_f64.SLICE_ROWS)
    for mb in chunks:
        for sl in slices:
            large_k_f64.CHUNK_BYTES, large_k_f64.SLICE_ROWS = mb << 20, sl
            run(f"f64_chunk{mb}MB_slice{sl}", False, True)
    large_k_f64.CHUNK_BYTES, large_k_f64.SLICE_ROWS = default
    run("f64_default", False, True)
    return out


def api_case(X: Any, cov: str, start: dict[str, Any]) -> dict[str, Any]:
    def fit(iters: int) -> Any:
        return fit_from_start(X, cov, start, iters)

    out: dict[str, Any] = {}
    for flag in ("1", "0"):
        os.environ["GMM_CORE_LARGE_K_F64"] = flag
        key = "f64_on" if flag == "1" else "f64_off"
        out[key] = per_iteration(fit)
        log(f"  {cov} API, float64 E-step {key}: {out[key]['per_iter_ms']:.2f} ms per iteration")
    os.environ.pop("GMM_CORE_LARGE_K_F64")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--covs", default="spherical,diag")
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--chunks", default=",".join(map(str, CHUNK_MB)), help="MB, comma list")
    parser.add_argument("--slices", default=",".join(map(str, SLICES)), help="rows, comma list")
    args = parser.parse_args()
    import cupy

    report: dict[str, Any] = {"environment": environment(), "cases": {}}
    X = make_data()
    for cov in args.covs.split(","):
        log(f"{N} x {X.shape[1]}, K={K}, {cov}")
        start = start_of(X, cov)
        chunks = tuple(int(v) for v in args.chunks.split(","))
        slices = tuple(int(v) for v in args.slices.split(","))
        case = {"pass": pass_case(X, cov, start, chunks, slices)}
        if not args.skip_api:
            case["api"] = api_case(X, cov, start)
        report["cases"][cov] = case
        cupy.get_default_memory_pool().free_all_blocks()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
