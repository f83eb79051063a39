"""A NumPy transcription of the float64 E-step's kernels, checked against float64 statistics.

    PYTHONPATH=. python3 benchmarks/emulate_large_k_f64.py

``lk_features64`` (the split row layout), ``lk_weights64``, ``lk_rows64`` (float64 log-sum-exp,
r rounded to the nearest TF32), the TF32 statistics GEMM per slot (exact products of TF32
operands, the slot rounded to float32) and ``lk_flush64`` (each moment's hi and lo columns) as
``gmm_core/cuda/em_largek.cu`` writes them, element by element where the kernels index, on a
small case: both slot modes (whole slices per chunk, and chunks shorter than a slice summed
into one slot). Off the device this checks the layouts and the slot logic, not the CUDA code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gmm_core._cupy.large_k_f64 import geometry  # noqa: E402


def tf32(x: np.ndarray | float) -> np.ndarray:
    """The nearest TF32 (``tc::round_tf32``)."""
    b = np.asarray(x, np.float32).view(np.uint32)
    return ((b + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def run(cov: str, rows_max: int, n: int = 700, d: int = 5, k: int = 13, r: int = 2,
        slice_rows: int = 256, seed: int = 0) -> dict[str, float]:  # fmt: skip
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    diag = cov == "diag"
    ns = d if diag else 1
    f, fp, ldf = geometry(d, cov)
    rk = r * k
    kp = -(-rk // 8) * 8
    means = rng.normal(size=(rk, d))
    pc = rng.uniform(0.5, 1.5, size=(rk, d) if diag else rk)
    w = rng.dirichlet(np.ones(k), size=r).reshape(-1)
    # lk_weights64
    W, c = np.zeros((kp, fp)), np.zeros(kp)
    for comp in range(rk):
        u = pc[comp] if diag else np.full(d, pc[comp])
        W[comp, :d] = means[comp] * u * u
        if diag:
            W[comp, d : 2 * d] = -0.5 * u * u
        else:
            W[comp, d] = -0.5 * pc[comp] ** 2
        c[comp] = (np.log(w[comp]) + np.log(u).sum() - 0.5 * d * np.log(2 * np.pi)
                   - 0.5 * (means[comp] ** 2 * u**2).sum())  # fmt: skip
    sf, nk, ll = np.zeros((rk, f)), np.zeros(rk), np.zeros(r)
    slots = np.zeros((-(-rows_max // slice_rows), ldf, kp), np.float32)

    def flush(n_slots: int) -> None:  # lk_flush64
        for comp in range(rk):
            for j in range(f + 1):
                hi = 2 * f if j == f else (j if j < d else d + j)
                lo = d + j if j < d else 2 * d + ns + (j - d)
                v = 0.0
                for b in range(n_slots):
                    v += float(slots[b][hi, comp]) + (float(slots[b][lo, comp]) if j < f else 0.0)
                if j == f:
                    nk[comp] += v
                else:
                    sf[comp, j] += v

    pending = 0
    for start in range(0, n, rows_max):
        x = X[start : start + rows_max]
        rows = len(x)
        sq = (x.astype(np.float64) ** 2).sum(axis=1)
        # lk_features64
        B, F = np.zeros((rows, fp)), np.zeros((rows, ldf), np.float32)
        B[:, :d] = x
        if diag:
            B[:, d : 2 * d] = x.astype(np.float64) ** 2
        else:
            B[:, d] = sq
        for j in range(ldf):
            if j < 2 * d:
                u = x[:, j if j < d else j - d].astype(np.float64)
                hi = tf32(u)
                F[:, j] = hi if j < d else tf32(u - hi)
            elif j < 2 * d + 2 * ns:
                e = (j - 2 * d) % ns
                s = x[:, e].astype(np.float64) ** 2 if diag else sq
                hi = tf32(s)
                F[:, j] = hi if j < 2 * d + ns else tf32(s - hi)
            elif j == 2 * d + 2 * ns:
                F[:, j] = 1.0
        L = B @ W.T  # the float64 GEMM
        resp = np.zeros((rows, kp), np.float32)  # lk_rows64
        for g in range(r):
            v = L[:, g * k : (g + 1) * k] + c[g * k : (g + 1) * k]
            m = v.max(axis=1, keepdims=True)
            lse = m[:, 0] + np.log(np.exp(v - m).sum(axis=1))
            resp[:, g * k : (g + 1) * k] = tf32(np.exp(v - lse[:, None]))
            ll[g] += lse.sum()

        def slot(sl: slice, resp: np.ndarray = resp, F: np.ndarray = F) -> np.ndarray:
            # TF32 operands: exact products; the slot rounded to float32
            return (resp[sl].T.astype(np.float64) @ F[sl].astype(np.float64)).T.astype(np.float32)

        if rows_max < slice_rows:
            if pending and pending + rows > slice_rows:
                flush(1)
                pending = 0
            slots[0] = slot(slice(None)) + (slots[0] if pending else 0)
            pending += rows
            continue
        full, rest = divmod(rows, slice_rows)
        for b in range(full + (rest > 0)):
            slots[b] = slot(slice(b * slice_rows, min((b + 1) * slice_rows, rows)))
        flush(full + (rest > 0))
    if pending:
        flush(1)
    X64 = X.astype(np.float64)
    worst = {"ll": 0.0, "nk": 0.0, "sf": 0.0}
    for g in range(r):
        mu, u = means[g * k : (g + 1) * k], pc[g * k : (g + 1) * k]
        prec = u**2 if diag else (u**2)[:, None] * np.ones_like(mu)
        quad = (X64**2) @ prec.T - 2 * X64 @ (mu * prec).T + (mu**2 * prec).sum(axis=1)
        lp = np.log(w[g * k : (g + 1) * k]) + 0.5 * np.log(prec).sum(axis=1)
        lp = lp - 0.5 * d * np.log(2 * np.pi) - 0.5 * quad
        m = lp.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(lp - m).sum(axis=1))
        p = np.exp(lp - lse[:, None])
        moments = np.hstack([p.T @ X64, p.T @ (X64**2 if diag else (X64**2).sum(1, keepdims=True))])
        worst["ll"] = max(worst["ll"], abs(ll[g] - lse.sum()) / n)
        worst["nk"] = max(worst["nk"], float(np.abs(nk[g * k : (g + 1) * k] - p.sum(0)).max() / n))
        got = sf[g * k : (g + 1) * k]
        worst["sf"] = max(worst["sf"], float(np.abs(got - moments).max() / np.abs(moments).max()))
    return worst


def main() -> None:
    for cov in ("diag", "spherical"):
        for rows_max in (512, 96):  # whole slices (2 + a partial one), short chunks into slot 0
            got = run(cov, rows_max)
            print(
                f"{cov:9s} chunks of {rows_max:3d} rows: mean ll {got['ll']:.1e} nats, "
                f"N_k {got['nk']:.1e} (of n), moments {got['sf']:.1e} (of the largest)"
            )
            assert got["ll"] < 1e-12 and got["nk"] < 1e-4 and got["sf"] < 1e-4, got


if __name__ == "__main__":
    main()
