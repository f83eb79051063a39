"""The large-K E-step's tensor-core arithmetic emulated on the CPU: which products are exact enough.

    python benchmarks/tc_numerics.py [--validate] [--study] [--rows N] [--json F]

Issue 17 asks for a large-K pass under 5 ms per iteration (1M x 128, K = 1024) with the mean
log-likelihood within 1e-4 nats per sample of float64. In 3xTF32 (three TF32 products per term,
float32-level) the diag case's products alone take 6.8 ms at the H200's dense TF32 peak: the
target needs cheaper products. FP16 operands run at twice the TF32 rate with the same 11
significant bits, so three FP16 products (hi/lo splits, power-of-two scaling for FP16's range)
would halve that floor, if their accuracy holds. Finding out on the device costs a kernel per
candidate; here the candidates' arithmetic is emulated, and the emulation is first checked
against what the device measured of the fused pass (``gpu_h200_large_k_fused_variants*.json``).

What is emulated of ``mma.sync`` (the model; ``--validate`` compares it with the device):
- operands: TF32 is read from a float32 register's top 19 bits (the low 13 ignored); FP16 and
  BF16 operands are what ``cvt.rn`` made of a float32 (round to nearest even);
- products exact; the sum of the accumulator and the k-step's products (k = 8 for m16n8k8
  TF32, 16 for m16n8k16 FP16/BF16) rounded toward zero to float32 (``rz``), or, the finer
  model, every addend first truncated at the largest addend's exponent (the alignment of a
  fixed-width adder, as Fasi et al. 2021 found in V100/A100 tensor cores), then the sum
  rounded toward zero (``align``);
- everything else as ``em_largek_tc.cu`` does it: sums of the products from zero every k-step
  (or one chain per 32-feature chunk: the first kernel), ``untruncate`` (+ half an ulp with the
  result's sign), float32 round-to-nearest adds across k-steps, ``c_k`` and the spherical
  ``-p/2 |x|^2`` term, the log2(e) scale; the log-sum-exp of the float32 log-densities in
  float64 (the kernel's ``ex2.approx``/``lg2.approx`` are not modelled).

FP16 operands are scaled by powers of two (exact): each inner column of A = [x, x^2] by
2^(14 - floor(log2 max |column|)), B's rows by the inverse and each component of B by its own
2^(14 - ...); the component's sum is unscaled (exact) before ``c_k`` is added. BF16 has FP32's
range and needs no scaling.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LOG2E = np.float32(1.4426950408889634)
LN2 = math.log(2.0)
KC = 32  # features per chunk of the fused kernels (em_largek_tc.cu)
FP16_TOP = 14  # scaled FP16 operands' largest magnitude in [2^14, 2^15)


# --------------------------------------------------------------------------- rounding


def round_tf32(x: np.ndarray) -> np.ndarray:
    """float32 -> the nearest TF32 (ties away from zero), as ``tc::split``'s integer add does."""
    bits = np.asarray(x, np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def trunc_tf32(x: np.ndarray) -> np.ndarray:
    """What an mma reads of a float32 register as TF32: its low 13 bits ignored."""
    bits = np.asarray(x, np.float32).view(np.uint32)
    return (bits & np.uint32(0xFFFFE000)).view(np.float32)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> the nearest BF16 (ties to even), as float32 values (``cvt.rn.bf16.f32``)."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))) & np.uint64(
        0xFFFF0000
    )
    return rounded.astype(np.uint32).view(np.float32)


def round_fp16(x: np.ndarray) -> np.ndarray:
    """float32 -> the nearest FP16 (ties to even, subnormals kept), as float32 values."""
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def rz32(x: np.ndarray) -> np.ndarray:
    """float64 -> float32 rounded toward zero (the tensor cores' float32 sum)."""
    f = x.astype(np.float32)
    over = np.abs(f.astype(np.float64)) > np.abs(x)
    f[over] = np.nextafter(f[over], np.float32(0.0))
    return f


def untruncate(r: np.ndarray) -> np.ndarray:
    """``lkt::untruncate``: r + sign(r) 2^exponent(r) 2^-24 in one float32 rounding (an FFMA)."""
    se = (r.view(np.uint32) & np.uint32(0xFF800000)).view(np.float32)
    return (se.astype(np.float64) * 2.0**-24 + r.astype(np.float64)).astype(np.float32)


# --------------------------------------------------------------------------- the mma


def mma_rz(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """c (rows, comps) float32 + a (rows, k) @ b (k, comps), products exact, sum rounded to zero.

    a and b hold operand values exactly (TF32/FP16/BF16 in float64: products of <= 11-bit
    significands are exact); the float64 sum's own rounding (2^-50 of the largest addend) only
    matters within that distance of a float32 boundary.
    """
    return rz32(c.astype(np.float64) + a @ b)


def mma_align(c: np.ndarray, a: np.ndarray, b: np.ndarray, extra: int = 0) -> np.ndarray:
    """As :func:`mma_rz`, each addend first truncated at the largest one's float32 ulp / 2^extra."""
    terms = np.concatenate(
        [c.astype(np.float64)[:, :, None], a[:, None, :] * b.T[None, :, :]], axis=2
    )
    big = np.abs(terms).max(axis=2)
    _, e = np.frexp(big)  # big in [2^(e-1), 2^e)
    q = np.ldexp(1.0, e - 24 - extra)[:, :, None]
    q[big == 0] = 1.0
    return rz32((np.trunc(terms / q) * q).sum(axis=2))


# --------------------------------------------------------------------------- schemes


@dataclass(frozen=True)
class Scheme:
    """How the log-densities' inner products are formed."""

    name: str
    fmt: str = "tf32"  # operand format: tf32, fp16, bf16
    products: str = "3"  # "3": lo.hi + hi.lo + hi.hi; "1": hi.hi; "a2": A hi+lo, B hi; "b2"
    per_kstep: bool = True  # sums from zero every k-step (False: one chain per 32 features)
    correct: bool = True  # untruncate every sum
    model: str = "rz"  # rz or align
    extra: int = 0  # align: addend bits kept below the largest addend's float32 ulp
    tf32_read: str = "truncate"  # how an mma reads a float32 register as TF32 (see split)

    @property
    def kstep(self) -> int:
        return 8 if self.fmt == "tf32" else 16


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


def split(v: np.ndarray, fmt: str, read: str = "truncate") -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) operand values (float64) of float32 ``v`` as the kernels would split it.

    TF32: hi rounded to nearest (``tc::split``), lo the float32 rest as the mma reads it
    (``read``: its low 13 bits ignored, rounded to nearest, or whole).
    """
    v = np.asarray(v, np.float32)
    if fmt == "tf32":
        hi = round_tf32(v)
        lo = v - hi
        lo = {"truncate": trunc_tf32, "round": round_tf32, "exact": lambda x: x}[read](lo)
        return hi.astype(np.float64), lo.astype(np.float64)
    rnd = round_fp16 if fmt == "fp16" else round_bf16
    hi = rnd(v)
    return hi.astype(np.float64), rnd(v - hi).astype(np.float64)


def pow2_scale(m: np.ndarray) -> np.ndarray:
    """2^(FP16_TOP - floor(log2 m)) (1 where m is 0): m scaled into [2^14, 2^15)."""
    m = np.asarray(m, np.float64)
    _, e = np.frexp(np.where(m > 0, m, 1.0))  # m in [2^(e-1), 2^e)
    return np.where(m > 0, np.ldexp(1.0, FP16_TOP - (e - 1)), 1.0)


def _operands(X32: np.ndarray, params: Any, cov: str):
    """A (rows, inner) float32, B (inner, comps) float32, c_k and -p/2 (float32), as lkt_weights."""
    mu = params.means[0]
    pc = params.precisions_cholesky[0]
    k, d = mu.shape
    if cov == "diag":
        p = pc**2
        B = np.concatenate([(mu * p).T, (-0.5 * p).T]).astype(np.float32)
        A = np.concatenate([X32, X32 * X32], axis=1)  # x^2 rounded (__fmul_rn), as a_frag
        log_det = np.log(pc).sum(axis=1)
        hp = np.zeros(k, np.float32)
    else:
        p = pc**2
        B = (mu * p[:, None]).T.astype(np.float32)
        A = X32
        log_det = d * np.log(pc)
        hp = (-0.5 * p).astype(np.float32)
    quad = (mu * mu * (p if cov == "diag" else p[:, None])).sum(axis=1)
    cst = np.log(params.weights[0]) + log_det - 0.5 * d * 1.8378770664093453 - 0.5 * quad
    return A, B, cst.astype(np.float32), hp


def _sumsq(X32: np.ndarray) -> np.ndarray:
    """``lkt::sumsq``: |x|^2 by float32 FMAs in feature order."""
    s = np.zeros(len(X32), np.float32)
    for c in range(X32.shape[1]):
        x = X32[:, c].astype(np.float64)
        s = (x * x + s.astype(np.float64)).astype(np.float32)
    return s


def log_densities(
    X32: np.ndarray, params: Any, cov: str, scheme: Scheme, col_max: np.ndarray | None = None
) -> np.ndarray:
    """(rows, comps) float32 log-densities in log2 units, as a pass with ``scheme`` forms them.

    ``col_max``: the largest magnitude of each inner column of the whole data (FP16 scaling;
    default: of these rows).
    """
    A, B, cst, hp = _operands(X32, params, cov)
    inner = A.shape[1]
    comp_scale = np.ones(B.shape[1])
    if scheme.fmt == "fp16":
        col_scale = pow2_scale(np.abs(A).max(axis=0) if col_max is None else col_max)
        Bs = B.astype(np.float64) / col_scale[:, None]
        comp_scale = pow2_scale(np.abs(Bs).max(axis=0))
        A = (A.astype(np.float64) * col_scale).astype(np.float32)
        B = (Bs * comp_scale).astype(np.float32)
    ah, al = split(A, scheme.fmt, scheme.tf32_read)
    bh, bl = split(B, scheme.fmt, scheme.tf32_read)
    if scheme.products in ("1", "b2"):
        al = np.zeros_like(al)
    if scheme.products in ("1", "a2"):
        bl = np.zeros_like(bl)
    mma = mma_rz if scheme.model == "rz" else _align_of(scheme.extra)
    rows, comps = A.shape[0], B.shape[1]
    acc = np.zeros((rows, comps), np.float32)
    ks = scheme.kstep
    for c0 in range(0, inner, KC):
        chain = np.zeros((rows, comps), np.float32)
        for s0 in range(c0, min(c0 + KC, inner), ks):
            sl = slice(s0, min(s0 + ks, inner))
            if scheme.per_kstep:
                chain = np.zeros((rows, comps), np.float32)
            # the small products first (tc::mma3), the last mma's sum the one truncated
            for a, b in ((al, bh), (ah, bl), (ah, bh)):
                if a[:, sl].any() and b[sl].any():
                    chain = mma(chain, a[:, sl], b[sl])
            if scheme.per_kstep:
                acc = acc + (untruncate(chain) if scheme.correct else chain)
        if not scheme.per_kstep:
            acc = acc + (untruncate(chain) if scheme.correct else chain)
    if scheme.fmt == "fp16":  # unscale each component's sum (a power of two: exact)
        acc = (acc.astype(np.float64) / comp_scale).astype(np.float32)
    if cov == "diag":
        cb = np.broadcast_to(cst, acc.shape)
    else:
        cb = cst[None, :] + hp[None, :] * _sumsq(X32)[:, None]  # float32 rounding each
    return (acc + cb) * LOG2E


def _align_of(extra: int):
    return lambda c, a, b: mma_align(c, a, b, extra)


def mean_loglik(v2: np.ndarray) -> float:
    """Mean over rows of the log-sum-exp (float64) of log2-unit log-densities, in nats."""
    v = v2.astype(np.float64)
    m = v.max(axis=1, keepdims=True)
    lse2 = m[:, 0] + np.log2(np.exp2(v - m).sum(axis=1))
    return float(lse2.mean() * LN2)


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
    sqn = _sumsq(X32).astype(np.float64)

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
