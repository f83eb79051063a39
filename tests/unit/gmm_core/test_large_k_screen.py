"""The screened large-K pass's arithmetic on the CPU (``gmm_core/cuda/em_largek_sparse.cu``).

Its correctness rests on one claim: the screening product (TF32, BF16, or BF16 in the
selecting kernel's tensor-core tiles, "mma") is within
``U |f| |w_k|`` of the exact one, so the components it drops all have responsibilities below
``exp(-T)``. These tests emulate the product as the tensor cores compute it at its worst (each
operand truncated to TF32 or rounded to bfloat16, every float32 partial sum rounded toward
zero, the BF16 product truncated to bfloat16) and the kernel's float32 bound arithmetic,
and check the claim on data like the benchmark's and on operands built to make the rounding
add up. The device tests (``tests/gpu/test_gpu_large_k.py``) check
the whole pass against float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("gmm_core._cupy")
from gmm_core._cupy import large_k_sparse  # noqa: E402


def _tf32_truncated(a: np.ndarray) -> np.ndarray:
    """float32 values with the 13 mantissa bits TF32 drops cleared (the worse of its readings)."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32) & np.uint32(0xFFFFE000)
    return bits.view(np.float32)


def _bf16(a: np.ndarray, nearest: bool = True) -> np.ndarray:
    """float32 values as bfloat16 (``lks_to_bf16``: to nearest even; else toward zero)."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    if nearest:
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return ((bits >> 16) << 16).astype(np.uint32).view(np.float32)


def _toward_zero(exact: np.ndarray) -> np.ndarray:
    """float64 values rounded to float32 toward zero."""
    y = exact.astype(np.float32)
    over = np.abs(y.astype(np.float64)) > np.abs(exact)
    y[over] = np.nextafter(y[over], np.float32(0))
    return y


def _screen(f: np.ndarray, w: np.ndarray, screen: str = "tf32") -> np.ndarray:
    """``f . w^T`` as a tensor core at its worst: operands truncated to TF32 (or rounded to
    bfloat16, as ``lks_bf16`` and ``lks_mma`` do), a float32 sum rounded toward zero after
    every k-step of 8 exact products (more often than BF16's m16n8k16 does), and the BF16
    GEMM's product truncated to bfloat16 ("mma" keeps its float32 sums: never rounded)."""
    read = _tf32_truncated if screen == "tf32" else _bf16
    k_step = 8
    ft, wt = read(f).astype(np.float64), read(w).astype(np.float64)
    acc = np.zeros((f.shape[0], w.shape[0]), dtype=np.float32)
    for j in range(0, f.shape[1], k_step):
        part = ft[:, j : j + k_step] @ wt[:, j : j + k_step].T
        acc = _toward_zero(acc.astype(np.float64) + part)
    return _bf16(acc, nearest=False) if screen == "bf16" else acc


def _clustered(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``bench_large_k``'s data (clusters of sd 0.7 around centres of sd 2, centred), means on
    random rows and precisions 1 / (var / 2)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(k, d))
    X = centres[rng.integers(k, size=n)] + rng.normal(scale=0.7, size=(n, d))
    X = (X - X.mean(axis=0)).astype(np.float32)
    means = X[rng.choice(n, size=k, replace=False)].astype(np.float64)
    prec = np.full(k, 1.0 / (0.5 * float(X.astype(np.float64).var(axis=0).mean())))
    return X, means, prec


def _operands(X, means, prec, cov):
    """The screen's operands as ``lk_weights`` / ``lks_norms`` build them: f, w, c, q."""
    Xd = X.astype(np.float64)
    p = np.repeat(prec[:, None], X.shape[1], axis=1)
    if cov == "diag":
        f = np.concatenate([X, X * X], axis=1).astype(np.float32)
        w = np.concatenate([means * p, -0.5 * p], axis=1)
        q = np.zeros(len(prec))
    else:
        f = X
        w = means * p
        q = -0.5 * prec
    c = -0.5 * (means**2 * p).sum(axis=1) + 0.5 * np.log(p).sum(axis=1)
    c += math.log(1.0 / len(prec)) - 0.5 * X.shape[1] * math.log(2 * math.pi)
    exact = Xd @ (means * p).T - 0.5 * (Xd**2) @ p.T + c
    return f, w.astype(np.float32), c.astype(np.float32), q.astype(np.float32), exact


SCREENS = ("tf32", "bf16", "mma")


@pytest.mark.parametrize("screen", SCREENS)
@pytest.mark.parametrize("cov", ["spherical", "diag"])
def test_the_screening_product_is_within_its_bound_on_clustered_data(cov, screen):
    X, means, prec = _clustered(512, 128, 256, seed=1)
    f, w, _, _, _ = _operands(X, means, prec, cov)
    got = _screen(f, w, screen).astype(np.float64)
    want = f.astype(np.float64) @ w.astype(np.float64).T
    bound = large_k_sparse.U_SCREEN[screen] * np.outer(np.linalg.norm(f.astype(np.float64), axis=1),
                                        np.linalg.norm(w.astype(np.float64), axis=1))  # fmt: skip
    ratio = np.abs(got - want) / bound
    assert ratio.max() < 0.5  # U holds twice over
    assert ratio.max() > 1e-3  # and the emulation does round: the check can fail


@pytest.mark.parametrize(
    ("screen", "step", "near"),
    [
        # TF32 keeps 1.0 of 1 + 2^-10 - 2^-23: each value loses ~2^-10; the worst comes near U / 2
        ("tf32", 1.0 + 2.0**-10 - 2.0**-23, 0.25),
        # bfloat16 rounds 1 + 2^-8 - 2^-23 to 1.0 (~2^-8 lost each) and the product truncated
        # loses up to 2^-7 more (here less: 3204 of 2^-7 steps of 16): over 2 / 5 of U
        ("bf16", 1.0 + 2.0**-8 - 2.0**-23, 0.4),
        # the same operands in lks_mma: ~2^-7 lost from the operands alone, 2 / 3 of its U
        ("mma", 1.0 + 2.0**-8 - 2.0**-23, 0.6),
    ],
)
def test_the_bound_holds_where_every_rounding_pulls_the_same_way(screen, step, near):
    """Parallel operands whose every value loses the most its rounding can drop, all
    positive: the operands' roundings, the toward-zero sums and the product's add up."""
    rng = np.random.default_rng(2)
    scale = np.float32(2.0) ** rng.integers(-3, 4, size=256).astype(np.float32)
    f = (np.float32(step) * scale)[None, :].astype(np.float32)
    w = (np.float32(step) * scale)[None, :].astype(np.float32)
    got = float(_screen(f, w, screen)[0, 0])
    want = float((f.astype(np.float64) @ w.astype(np.float64).T)[0, 0])
    bound = large_k_sparse.U_SCREEN[screen] * float(np.linalg.norm(f) * np.linalg.norm(w))
    assert abs(got - want) > near * bound
    assert abs(got - want) <= bound


def _bounds(X, means, prec, cov, screen):
    """``lks_select``'s bounds in the kernel's float32 arithmetic, from ``lks_norms``' (A, B, C)
    terms: lower and upper (rows x components), T, and the exact log-densities."""
    f, w, c, q, exact = _operands(X, means, prec, cov)
    g = _screen(f, w, screen)
    f64 = f.astype(np.float64)
    norm_f = np.linalg.norm(f64, axis=1).astype(np.float32)
    ufn = np.float32(large_k_sparse.U_SCREEN[screen]) * norm_f
    sq = (X.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)
    n = np.float32(np.linalg.norm(w.astype(np.float64), axis=1) * (1 + 1e-4))
    cd, qd = c.astype(np.float64), q.astype(np.float64)
    lo_a, hi_a = (
        (cd - 4e-6 * np.abs(cd)).astype(np.float32),
        (cd + 4e-6 * np.abs(cd)).astype(np.float32),
    )
    lo_b, hi_b = (
        (qd - 4e-6 * np.abs(qd)).astype(np.float32),
        (qd + 4e-6 * np.abs(qd)).astype(np.float32),
    )

    def chain(a, b, cc):  # fma(ufn, C, fma(sq, B, G + A)) in float32 (products exact in float64)
        inner = (g + a[None, :]).astype(np.float32).astype(np.float64)
        inner = (sq[:, None].astype(np.float64) * b[None, :] + inner).astype(np.float32)
        return (ufn[:, None].astype(np.float64) * cc[None, :] + inner).astype(np.float32)

    t = np.float32(large_k_sparse.margin(len(X), len(X)))
    return chain(lo_a, lo_b, -n), chain(hi_a, hi_b, n), t, exact


def _log_r(exact):
    m = exact.max(axis=1, keepdims=True)
    return exact - (m + np.log(np.exp(exact - m).sum(axis=1, keepdims=True)))


@pytest.mark.parametrize("screen", SCREENS)
@pytest.mark.parametrize("cov", ["spherical", "diag"])
def test_every_component_the_screen_drops_has_a_responsibility_below_exp_minus_t(cov, screen):
    """``lks_select``'s rule: ``lo = max (v - b)``, candidates ``v + b >= lo - T``; every
    component left out, in float64, within ``exp(-T)`` of nothing."""
    X, means, prec = _clustered(2048, 64, 256, seed=3)
    lower, upper, t, exact = _bounds(X, means, prec, cov, screen)
    keep = upper >= (lower.max(axis=1) - t)[:, None]
    assert (_log_r(exact)[~keep] < -float(t)).all()
    # a screen: most components dropped (rows near a mean keep one or two; rows of the clusters
    # no mean started in keep dozens, the pass lists those beyond 32)
    # (the BF16 screen's window is 5x as wide: at this start it keeps 6% / 14% against TF32's
    # 5% / 6% of the pairs, spherical / diag, and lists 23% / 34% of the rows against 15% / 21%)
    assert keep.mean() < (0.1 if screen == "tf32" else 0.15)  # (mma: 3 / 5 of bf16's window)
    assert np.median(keep.sum(axis=1)) <= 3


def _up16(v: np.ndarray) -> np.ndarray:
    """float32 values rounded up (toward +inf) to bfloat16 (``lkm::up16``)."""
    bits = np.ascontiguousarray(v, dtype=np.float32).view(np.uint32)
    up = ((bits & 0xFFFF) != 0) & ((bits >> 31) == 0)
    return (((bits >> 16) + up.astype(np.uint32)) << 16).astype(np.uint32).view(np.float32)


def _below16(thr: np.ndarray) -> np.ndarray:
    """``lkm::below16``, bit for bit: the next bfloat16 under ``up16(thr)``."""
    c = _up16(thr).view(np.uint32) >> 16
    p = np.where((c & 0x7FFF) == 0, 0x8001, np.where(c & 0x8000, c + 1, c - 1))
    p = np.where(c == 0xFF80, 0xFF80, p).astype(np.uint32)
    return (p << 16).astype(np.uint32).view(np.float32)


def test_below16_is_where_up16_reaches_a_threshold():
    """``lks_mma`` appends where ``v > below16(thr)``, standing for ``up16(v) >= thr``: the two
    agree for every sign, at zeros, denormals, the bfloat16 grid and its neighbours, and a
    threshold of -inf (a bound of -inf, which ``up16`` keeps at -inf, is never appended)."""
    rng = np.random.default_rng(9)
    grid = (rng.integers(0, 1 << 16, size=4000).astype(np.uint32) << 16).view(np.float32)
    grid = grid[np.isfinite(grid)]
    near = np.concatenate([grid, np.nextafter(grid, np.inf), np.nextafter(grid, -np.inf)])
    special = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40, -np.inf, 3e38, -3e38])
    values = np.concatenate([near, special, rng.normal(scale=300, size=4000)]).astype(np.float32)
    values = values[values > -np.inf]
    thr = rng.permutation(values)[:3000]
    for t in np.concatenate([thr, special.astype(np.float32)]):
        want = _up16(values) >= t
        got = values > _below16(np.array([t], dtype=np.float32))[0]
        np.testing.assert_array_equal(got, want, err_msg=f"thr {t!r}")


def _mma_select(lower, upper, t, seed=None):
    """``lks_mma``'s selection as its warps run it: the running lo starts from ``seed`` (per
    row; None: -inf), then, per tile of ``MMA_TILE`` components, takes the whole tile (its four
    columns of warps exchange theirs) before the tile's components are screened against it:
    appended where ``up16(v + b)`` reaches ``thr`` (never a bound of -inf); then the list's
    entries whose ``up16(v + b)`` reaches ``lo - T`` kept. Returns (kept, appended per row,
    lo); a list past ``MMA_CAP`` entries sends its row to a second screening."""
    n, k = lower.shape
    tile = large_k_sparse.MMA_TILE
    run = np.full(n, -np.inf, dtype=np.float32) if seed is None else seed.astype(np.float32)
    appended = np.zeros((n, k), dtype=bool)
    for k0 in range(0, k, tile):
        k1 = min(k0 + tile, k)
        run = np.maximum(run, lower[:, k0:k1].max(axis=1))
        thr = (run - t).astype(np.float32)
        up = upper[:, k0:k1]
        appended[:, k0:k1] = (_up16(up) >= thr[:, None]) & (up > -np.inf)
    thr = (run - t).astype(np.float32)
    return appended & (_up16(upper) >= thr[:, None]), appended.sum(axis=1), run


@pytest.mark.parametrize("fitted", [False, True], ids=["start", "fitted"])
@pytest.mark.parametrize("cov", ["spherical", "diag"])
@pytest.mark.parametrize("k", [80, 256])  # a part-filled tile; two whole ones
def test_the_mma_screens_lists_hold_every_candidate_and_a_second_screening_just_those(
    k, cov, fitted
):
    """``lks_mma`` screens against a running lo that never exceeds the row's lo: its lists
    hold every component of ``lks_select``'s rule on the same product, and it keeps those and
    only entries whose rounded-up bound passes. A row whose list overflows is screened again
    from its lo: its list is then exactly the kept set, so which rows go to the dense pass
    (none kept, or more than 32) never depends on how long the first lists grew. At a fitted
    state (means on the clusters' centres) the lists are short and few rows need the second
    screening."""
    X, means, prec = _clustered(2048, 64, k, seed=4)
    if fitted:
        rng = np.random.default_rng(4)  # _clustered's centres (same seed, same draws)
        means = rng.normal(scale=2.0, size=(k, 64))
        means -= means.mean(axis=0)
        prec = np.full(k, 1.0 / 0.49)
    lower, upper, t, exact = _bounds(X, means, prec, cov, "mma")
    lo = lower.max(axis=1)
    rule = upper >= (lo - t)[:, None]
    kept, count, run = _mma_select(lower, upper, t)
    np.testing.assert_array_equal(run, lo)
    assert (kept >= rule).all()  # every candidate of the rule kept
    np.testing.assert_array_equal(kept, _up16(upper) >= (lo - t)[:, None])  # and just those
    n_kept = kept.sum(axis=1)
    served = (n_kept > 0) & (n_kept <= 32)
    assert (_log_r(exact)[served][~kept[served]] < -float(t)).all()
    # the second screening, from lo: the list is the kept set (lists of 32, as the GPU test's
    # -DLKM_CAP=32 build, so that rows do overflow here)
    again = count > 32
    assert again.any() or fitted
    kept2, count2, _ = _mma_select(lower[again], upper[again], t, seed=lo[again])
    np.testing.assert_array_equal(kept2, kept[again])
    np.testing.assert_array_equal(count2, n_kept[again])
    if fitted:
        assert (count > large_k_sparse.MMA_CAP).mean() < 0.01 and np.median(n_kept) <= 2
    # the rows the dense pass takes are those the rule gives more than 32 (or none)
    assert abs((~served).mean() - (rule.sum(axis=1) > 32).mean()) < 0.02


def test_the_margin_keeps_what_is_skipped_below_a_float32_ulp_of_one_sample():
    for n in (1_000, 1 << 20, 10**9):
        t = large_k_sparse.margin(n, 0.0)
        assert n * math.exp(-t) <= 2.0**-24 * (1 + 1e-9)
    assert large_k_sparse.margin(10, 5e6) == large_k_sparse.margin(5_000_000, 0.0)
