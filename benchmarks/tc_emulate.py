"""Tensor-core sums emulated on the CPU, element by element: the arithmetic of ``mma.sync``.

The model (``benchmarks/tc_numerics.py --validate`` compares it with the device,
``benchmarks/probe_mma_rounding.py`` tests it bit for bit on one):
- operands: TF32 is read from a float32 register's top 19 bits (the low 13 ignored; rounded or
  whole as alternatives, :attr:`Scheme.tf32_read`); FP16 and BF16 operands are what ``cvt.rn``
  made of a float32 (round to nearest even);
- products exact; the sum of the accumulator and the k-step's products (k = 8 for m16n8k8
  TF32, 16 for m16n8k16 FP16/BF16) rounded toward zero to float32 (``rz``), or every addend
  first truncated at the largest addend's exponent (``align``), then the sum rounded toward
  zero;
- everything else as ``em_largek_tc.cu`` does it (:func:`log_densities`): sums of the products
  from zero every k-step (or one chain per 32-feature chunk: the first kernel),
  ``untruncate`` (+ half an ulp with the result's sign), float32 round-to-nearest adds across
  k-steps, ``c_k`` and the spherical ``-p/2 |x|^2`` term, the log2(e) scale; the log-sum-exp of
  the float32 log-densities in float64 (the kernel's ``ex2.approx``/``lg2.approx`` are not
  modelled).

FP16 operands are scaled by powers of two (exact): each inner column of A = [x, x^2] by
2^(14 - floor(log2 max |column|)), B's rows by the inverse and each component of B by its own
2^(14 - ...); the component's sum is unscaled (exact) before ``c_k`` is added. BF16 has FP32's
range and needs no scaling.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

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


def operands(X32: np.ndarray, params: Any, cov: str):
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


def sumsq(X32: np.ndarray) -> np.ndarray:
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
    A, B, cst, hp = operands(X32, params, cov)
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
    mma = mma_rz if scheme.model == "rz" else functools.partial(mma_align, extra=scheme.extra)
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
        cb = cst[None, :] + hp[None, :] * sumsq(X32)[:, None]  # float32 rounding each
    return (acc + cb) * LOG2E


def mean_loglik(v2: np.ndarray) -> float:
    """Mean over rows of the log-sum-exp (float64) of log2-unit log-densities, in nats."""
    v = v2.astype(np.float64)
    m = v.max(axis=1, keepdims=True)
    lse2 = m[:, 0] + np.log2(np.exp2(v - m).sum(axis=1))
    return float(lse2.mean() * LN2)
