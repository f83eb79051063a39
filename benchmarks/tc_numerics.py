"""Which tensor-core products keep the large-K E-step float32-level: studies on the emulation.

    python benchmarks/tc_numerics.py [--validate] [--study] [--spread] [--statistics] [--floors]
        [--rows N] [--json F]

Issue 17 asks for a large-K pass under 5 ms per iteration (1M x 128, K = 1024) with the mean
log-likelihood within 1e-4 nats per sample of float64. In 3xTF32 (three TF32 products per term,
float32-level) the diag case's products alone take 6.8 ms at the H200's dense TF32 peak: the
target needs cheaper products. FP16 operands run at twice the TF32 rate with the same 11
significant bits, so three FP16 products (hi/lo splits, power-of-two scaling for FP16's range)
would halve that floor, if their accuracy holds. Finding out on the device costs a kernel per
candidate; here the candidates' arithmetic is emulated (``benchmarks/tc_emulate.py``, the
model), and the emulation is first checked against what the device measured of the fused pass
(``gpu_h200_large_k_fused_variants*.json``, ``--validate``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.tc_emulate import (  # noqa: E402
    LN2,
    Scheme,
    log_densities,
    mean_loglik,
    pow2_scale,
    round_fp16,
    round_tf32,
    split,
    sumsq,
)

#: the fused pass's variants the device measured (docs/benchmarks.md), for --validate
DEVICE_VARIANTS = {
    "chunk32": Scheme("chunk32", per_kstep=False, correct=False),
    "chunk32+untrunc": None,  # corrected by 2.5 ulp / 2 per chunk: not modelled
    "kstep": Scheme("kstep", correct=False),
    "kstep+untrunc (default)": Scheme("kstep+untrunc (default)"),
}
#: the device's signed mean log-likelihood errors (nats per sample) of those variants
DEVICE_FILES = (
    "gpu_h200_large_k_fused_variants_first.json",
    "gpu_h200_large_k_fused_variants.json",
)
#: the device cases: (rows, features, components, covariance type), key in the JSON
CASES = {
    "128 diag": (3_001, 128, 2048, "diag"),
    "256 spherical": (3_001, 256, 4096, "spherical"),
    "256 diag": (3_001, 256, 4096, "diag"),
}

#: the mma models --validate compares with the device
MODELS = (("rz", 0), ("align", 0))

#: issue 17's benchmark case (bench_large_k: 1M x 128, K = 1024, 1024 clusters, its start), as a
#: sample of 4,096 rows drawn the same way on the host (the error is a mean over samples)
TARGET = {"1M-like 128 spherical": "spherical", "1M-like 128 diag": "diag"}
TARGET_ROWS = 4096

STUDY = (
    Scheme("3xTF32 (the fused pass)"),
    Scheme("3xTF32, one chain per 32 features (the first kernel)", per_kstep=False, correct=False),
    Scheme("1xTF32", products="1"),
    Scheme("3xFP16, scaled", fmt="fp16"),
    Scheme("3xFP16, scaled, uncorrected", fmt="fp16", correct=False),
    Scheme("2xFP16: A hi+lo, B hi", fmt="fp16", products="a2"),
    Scheme("2xFP16: A hi, B hi+lo", fmt="fp16", products="b2"),
    Scheme("3xBF16", fmt="bf16"),
)


def case_data(n: int, d: int, k: int, cov: str) -> tuple[np.ndarray, Any, float]:
    """The device check's case (``large_k_fused.check``): data, parameters, float64 mean ll."""
    from tests.gpu.test_gpu_large_k import _data, _params, _reference

    X = _data(n, d, 64, seed=k + d)
    params = _params(X, cov, k, 1)
    ref = _reference(X, cov, params)[0]["loglik"] / n
    return X, params, ref


def target_data(cov: str, n: int = TARGET_ROWS) -> tuple[np.ndarray, Any, float]:
    """A sample of ``bench_large_k``'s case and its start (``start_of``), on the host."""
    from benchmarks.bench_large_k import D, K
    from gmm_core._gaussian import Params
    from tests.gpu.test_gpu_large_k import _reference

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((K, D)).astype(np.float32) * 2.0
    pool = n + K  # the start's means are other rows of the data, as at 1M rows (K / N = 0.1%)
    X = centres[rng.integers(K, size=pool)]
    X = X + rng.standard_normal((pool, D)).astype(np.float32) * np.float32(0.7)
    X = (X - X.mean(axis=0)).astype(np.float32)
    X, means = X[:n], X[n:].astype(np.float64)
    var = float(X.astype(np.float64).var(axis=0).mean())
    prec = np.full((1, K, D) if cov == "diag" else (1, K), 1.0 / (0.5 * var))
    params = Params(np.full((1, K), 1.0 / K), means[None], 1 / prec, np.sqrt(prec))
    return X, params, _reference(X, cov, params)[0]["loglik"] / n


def error_of(case: tuple[int, int, int, str] | str, scheme: Scheme, rows: int | None) -> float:
    """Signed mean log-likelihood error (nats per sample) of ``scheme`` on ``case``.

    ``case``: a device check's case or a :data:`TARGET` covariance type; ``rows``: a prefix of
    the case's rows, against its own float64 reference.
    """
    from tests.gpu.test_gpu_large_k import _reference

    if isinstance(case, str):
        cov = case
        X, params, ref = target_data(cov)
    else:
        n, d, k, cov = case
        X, params, ref = case_data(n, d, k, cov)
    n = len(X)
    if rows is not None and rows < n:
        X = X[:rows]
        ref = _reference(X, cov, params)[0]["loglik"] / rows
    return mean_loglik(_blocked(X, params, cov, scheme)) - ref


def _blocked(X32: np.ndarray, params: Any, cov: str, scheme: Scheme, block: int = 256):
    """:func:`log_densities` by blocks of rows over every CPU (rows are independent), the FP16
    column scales of the whole data (a pass computes them once)."""
    A = np.concatenate([X32, X32 * X32], axis=1) if cov == "diag" else X32
    col_max = np.abs(A).max(axis=0)
    starts = range(0, len(X32), block)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        parts = pool.map(
            log_densities,
            [X32[i : i + block] for i in starts],
            repeat(params),
            repeat(cov),
            repeat(scheme),
            repeat(col_max),
        )
        return np.concatenate(list(parts))


#: FP16 statistics: responsibilities (<= 1) scaled by 2^14 before rounding, so that FP16 keeps
#: 11 bits down to r = 2^-28 (unscaled, r below 6e-5 would be subnormal, below 3e-8 zero)
R_SCALE = 2.0**14


def statistics_errors(X32: np.ndarray, params: Any, cov: str, fmt: str) -> dict[str, float]:
    """Signed mean and largest relative errors of N_k, the means and the variances when the
    statistics GEMM's operands are rounded as ``fmt`` has them: r rounded once (TF32, or FP16
    after scaling by :data:`R_SCALE`) and used for N_k and every moment alike, x (and x^2) as
    hi + lo (FP16: per-column power-of-two scaling). The sums are exact (float64) and r is the
    float64 one: only the operands' rounding is measured (the kernels' float32 sums, corrected
    by ``untruncate``, are the same for both formats).
    """
    from tests.gpu.test_gpu_large_k import _reference

    X64 = X32.astype(np.float64)
    mu, pc = params.means[0], params.precisions_cholesky[0]
    prec = pc**2 if cov == "diag" else (pc**2)[:, None] * np.ones_like(mu)
    quad = (X64**2) @ prec.T - 2 * X64 @ (mu * prec).T + (mu**2 * prec).sum(axis=1)
    lp = np.log(params.weights[0]) + 0.5 * np.log(prec).sum(axis=1)
    lp = lp - 0.5 * X32.shape[1] * math.log(2 * math.pi) - 0.5 * quad
    m = lp.max(axis=1, keepdims=True)
    r = np.exp(lp - m - np.log(np.exp(lp - m).sum(axis=1, keepdims=True)))
    ref = _reference(X32, cov, params)[0]
    sq32 = X32 * X32  # float32, as the kernels square
    sqn = sumsq(X32).astype(np.float64)

    def operand(v: np.ndarray) -> np.ndarray:  # hi + lo as the mma reads them
        if fmt == "tf32":
            hi, lo = split(v, "tf32")
            return hi + lo
        scale = pow2_scale(np.abs(v).max(axis=0))
        hi, lo = split((v.astype(np.float64) * scale).astype(np.float32), "fp16")
        return (hi + lo) / scale

    r32 = r.astype(np.float32)
    if fmt == "tf32":
        rt = round_tf32(r32).astype(np.float64)
    else:
        rt = round_fp16((r32.astype(np.float64) * R_SCALE).astype(np.float32)) / R_SCALE
    nk = rt.sum(axis=0)
    sx = rt.T @ operand(X32)
    sxx = rt.T @ operand(sq32) if cov == "diag" else rt.T @ sqn
    mean, mean_ref = sx / nk[:, None], ref["sx"] / ref["nk"][:, None]
    if cov == "diag":
        var, var_ref = sxx / nk[:, None] - mean**2, ref["sxx"] / ref["nk"][:, None] - mean_ref**2
    else:
        var = sxx / nk - (mean**2).sum(axis=1)
        var_ref = ref["sxx"] / ref["nk"] - (mean_ref**2).sum(axis=1)
    out = {}
    for name, got, want in (("nk", nk, ref["nk"]), ("mean", mean, mean_ref), ("var", var, var_ref)):
        rel = (got - want) / np.abs(want).mean()
        out[f"{name} signed"] = float(rel.mean())
        out[f"{name} max"] = float(np.abs(rel).max())
    out["r below FP16 normal (scaled)"] = float(np.mean((r > 0) & (r * R_SCALE < 2.0**-14)))
    return out


def statistics_study() -> list[dict[str, Any]]:
    """:func:`statistics_errors` of TF32 and FP16 operands: the device's ``--bias`` case
    (20,000 x 64, K = 256) and the D = 128 diag check case. (``large_k_fused --bias``
    normalises element by element and measures the whole pass: not comparable figures.)"""
    from tests.gpu.test_gpu_large_k import _data, _params

    out = []
    cases = [("bias 20000x64 K=256", _data(20_000, 64, 100, seed=11), 256, 6)]
    X, _, _ = case_data(*CASES["128 diag"])
    cases.append(("128 diag check, K=2048", X, 2048, 1))
    for name, X, k, seed in cases:
        for cov in ("diag", "spherical"):
            params = _params(X, cov, k, 1, seed=seed)
            for fmt in ("tf32", "fp16"):
                row: dict[str, Any] = {"case": name, "cov": cov, "operands": fmt}
                row.update(statistics_errors(X, params, cov, fmt))
                print(json.dumps(row), flush=True)
                out.append(row)
    return out


def spread(rows: int = 256) -> list[dict[str, Any]]:
    """Per-sample log-likelihood errors (rms, largest) of the three-product schemes: a mean
    can hide errors that cancel. The first ``rows`` rows of the D = 128 diag check case."""
    from tests.gpu.test_gpu_large_k import _reference

    X, params, _ = case_data(*CASES["128 diag"])
    X = X[:rows]
    ref = np.array([_reference(X[i : i + 1], "diag", params)[0]["loglik"] for i in range(rows)])
    out = []
    for scheme in (Scheme("3xTF32"), Scheme("3xFP16", fmt="fp16"), Scheme("3xBF16", fmt="bf16")):
        v = _blocked(X, params, "diag", scheme).astype(np.float64)
        m = v.max(axis=1, keepdims=True)
        err = (m[:, 0] + np.log2(np.exp2(v - m).sum(axis=1))) * LN2 - ref
        row = {
            "scheme": scheme.name,
            "rows": rows,
            "rms": float(np.sqrt(np.mean(err**2))),
            "max": float(np.abs(err).max()),
            "mean": float(err.mean()),
        }
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def validate(rows: int | None) -> list[dict[str, Any]]:
    """Each modelled device variant beside the device's figure on the device's cases."""
    device: dict[str, dict[str, float]] = {}
    for name in DEVICE_FILES:
        device.update(json.loads((REPO / "benchmarks/results" / name).read_text())["variants"])
    out = []
    for variant, scheme in DEVICE_VARIANTS.items():
        if scheme is None:
            continue
        for model, extra in MODELS:
            sch = Scheme(**{**asdict(scheme), "model": model, "extra": extra})
            for key, case in CASES.items():
                t0 = time.perf_counter()
                err = error_of(case, sch, rows)
                row = {
                    "variant": variant,
                    "model": f"{model}{'' if model == 'rz' else f'+{extra}'}",
                    "case": key,
                    "emulated": err,
                    "device": device[variant][f"{key} ll err"],
                    "seconds": time.perf_counter() - t0,
                }
                print(json.dumps(row), flush=True)
                out.append(row)
    return out


def study(
    rows: int | None, model: str, extra: int, only: str | None = None, read: str = "truncate"
) -> list[dict[str, Any]]:
    """The candidates of :data:`STUDY` (those whose name contains ``only``) on every case."""
    out = []
    for scheme in STUDY:
        if only is not None and only not in scheme.name:
            continue
        sch = Scheme(**{**asdict(scheme), "model": model, "extra": extra, "tf32_read": read})
        cases: dict[str, tuple[int, int, int, str] | str] = {**CASES, **TARGET}
        for key, case in cases.items():
            t0 = time.perf_counter()
            row = {
                "scheme": scheme.name,
                "model": f"{model}+{extra}, TF32 read {read}",
                "case": key,
                "emulated": error_of(case, sch, rows),
                "seconds": time.perf_counter() - t0,
            }
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


#: H200 rates (TFLOPS, TB/s): dense peaks (``wgmma``), the ``mma.sync`` TF32 rate measured by
#: ``probe_mma_peak.py`` (``mma_peak_h200.json``), its FP16 rate assumed twice that (the probe
#: now measures it), HBM bandwidth
RATES = {
    "tf32_wgmma": 495.0,
    "fp16_wgmma": 989.0,
    "tf32_mma_sync": 321.0,
    "fp16_mma_sync": 642.0,
    "hbm_tbs": 4.8,
}


def floors(n: int = 1 << 20, d: int = 128, k: int = 1024) -> list[dict[str, Any]]:
    """Milliseconds per EM pass of issue 17's case at 100% of each rate, per design.

    One GEMM-equivalent G = 2 n k d flops (spherical's inner products; diag's E-step and
    statistics have 2d columns: 2G each). Designs: the E-step recomputed in the statistics
    kernel (today's fused pass) or its log-densities written once per row chunk and read back
    (``hbm_ms``: n k float32 written and read at HBM bandwidth; a chunk small enough for L2
    would hide most of it); E-step products 3xTF32 or 3xFP16; statistics 2xTF32 (r rounded to
    TF32 once, x as hi + lo) or 2xFP16.
    """
    g = 2.0 * n * k * d / 1e12  # TFLOP
    out = []
    for cov, width in (("spherical", 1), ("diag", 2)):
        for e_fmt in ("tf32", "fp16"):
            for m_fmt in ("tf32", "fp16"):
                for recompute in (True, False):
                    for issue in ("mma_sync", "wgmma"):
                        e = 3 * width * g * (2 if recompute else 1) / RATES[f"{e_fmt}_{issue}"]
                        m = 2 * width * g / RATES[f"{m_fmt}_{issue}"]
                        io = 0.0 if recompute else 2 * 4.0 * n * k / (RATES["hbm_tbs"] * 1e12)
                        out.append(
                            {
                                "cov": cov,
                                "e_step": f"3x{e_fmt.upper()}",
                                "statistics": f"2x{m_fmt.upper()}",
                                "design": "recompute" if recompute else "log-densities stored",
                                "instruction": issue,
                                "products_ms": (e + m) * 1e3,
                                "hbm_ms": io * 1e3,
                            }
                        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validate", action="store_true", help="the model against the device")
    parser.add_argument("--study", action="store_true", help="the candidate products")
    parser.add_argument("--floors", action="store_true", help="issue 17's case at peak rates")
    parser.add_argument("--spread", action="store_true", help="per-sample errors, 3 products")
    parser.add_argument("--statistics", action="store_true", help="TF32 vs FP16 statistics")
    parser.add_argument("--rows", type=int, help="a prefix of each case's 3,001 rows")
    parser.add_argument("--model", default="rz", help="the mma model of --study: rz or align")
    parser.add_argument("--extra", type=int, default=0)
    parser.add_argument("--only", help="--study's schemes whose name contains this")
    parser.add_argument("--tf32-read", default="truncate", help="truncate, round or exact")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result: dict[str, Any] = {"rows": args.rows}
    if args.validate:
        result["validate"] = validate(args.rows)
    if args.study:
        result["study"] = study(args.rows, args.model, args.extra, args.only, args.tf32_read)
    if args.spread:
        result["spread"] = spread()
    if args.statistics:
        result["statistics"] = statistics_study()
    if args.floors:
        result["floors"] = floors()
        for row in result["floors"]:
            print(" | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
