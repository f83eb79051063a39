"""``benchmarks/tc_emulate.py``: the CPU emulation of tensor-core products, checked piece by piece.

Each rounding primitive against an exact (``fractions``) or independent reference; the mma
models against exact sums; the emulated log-densities against float64.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from benchmarks import tc_emulate as tce
from gmm_core._gaussian import Params


def _round_sig(x: float, bits: int) -> float:
    """x rounded to ``bits`` significant bits, ties to even (exact: Fractions)."""
    if x == 0:
        return 0.0
    m, e = math.frexp(x)  # x = m 2^e, |m| in [0.5, 1)
    scaled = Fraction(m) * 2**bits
    return float(round(scaled)) * 2.0 ** (e - bits)  # round(): half to even


@pytest.fixture
def floats() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(size=4000) * np.exp2(rng.integers(-20, 20, size=4000))
    # ties: values exactly halfway between BF16 neighbours, both parities
    ties = np.array([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -(1.0 + 2.0**-8)])
    return np.concatenate([x, ties]).astype(np.float32)


def test_bf16_rounds_to_nearest_even(floats):
    got = tce.round_bf16(floats)
    want = [_round_sig(float(v), 8) for v in floats]
    np.testing.assert_array_equal(got.astype(np.float64), want)


def test_tf32_round_and_truncate(floats):
    hi = tce.round_tf32(floats).astype(np.float64)
    t = tce.trunc_tf32(floats).astype(np.float64)
    x = floats.astype(np.float64)
    # 11 significant bits; rounding within half a TF32 ulp, truncation toward zero within one
    ulp = np.exp2(np.frexp(np.abs(x))[1] - 11)
    assert np.all(np.abs(hi - x) <= ulp / 2)
    assert np.all(np.abs(t) <= np.abs(x)) and np.all(np.abs(x - t) < ulp)
    assert not np.any(tce.round_tf32(floats).view(np.uint32) & 0x1FFF)
    # ties go away from zero (tc::split's integer add), not to even
    tie = np.array([1.0 + 2.0**-11, -(1.0 + 2.0**-11)], np.float32)  # halfway, even below
    np.testing.assert_array_equal(
        tce.round_tf32(tie), np.float32([1.0 + 2.0**-10, -(1.0 + 2.0**-10)])
    )


def test_rz32_rounds_toward_zero():
    rng = np.random.default_rng(1)
    x = rng.normal(size=5000) * np.exp2(rng.integers(-30, 30, size=5000))
    f = tce.rz32(x).astype(np.float64)
    assert np.all(np.abs(f) <= np.abs(x))
    # and is the float32 next to x toward zero: one float32 step up is past x
    away = np.where(x > 0, np.float32(np.inf), np.float32(-np.inf)).astype(np.float32)
    up = np.nextafter(f.astype(np.float32), away).astype(np.float64)
    assert np.all(np.abs(up) > np.abs(x))


def test_untruncate_adds_half_an_ulp_with_the_sign():
    rng = np.random.default_rng(2)
    r = (rng.normal(size=2000) * 100).astype(np.float32)
    got = tce.untruncate(r)
    for v, g in zip(r[:300], got[:300], strict=True):
        _, e = math.frexp(float(v))  # |v| in [2^(e-1), 2^e): ulp 2^(e-24)
        exact = Fraction(float(v)) + Fraction(int(math.copysign(1, v))) * Fraction(2) ** (e - 25)
        assert float(np.float32(float(exact))) == float(g)  # one rounding, to nearest


def _exact_mma(c, a, b):
    out = np.zeros(c.shape, np.float32)
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            s = Fraction(float(c[i, j])) + sum(
                Fraction(float(a[i, q])) * Fraction(float(b[q, j])) for q in range(a.shape[1])
            )
            f = np.float32(float(s))
            if abs(Fraction(float(f))) > abs(s):
                f = np.nextafter(f, np.float32(0))
            out[i, j] = f
    return out


@pytest.mark.parametrize("fmt", ["tf32", "fp16"])
def test_mma_models_against_exact_sums(fmt):
    rng = np.random.default_rng(3)
    k = 8 if fmt == "tf32" else 16
    a = tce.split(rng.normal(size=(6, k)).astype(np.float32), fmt)[0]
    b = tce.split(rng.normal(size=(k, 5)).astype(np.float32), fmt)[0]
    c = rng.normal(size=(6, 5)).astype(np.float32)
    want = _exact_mma(c, a, b)
    np.testing.assert_array_equal(tce.mma_rz(c, a, b), want)
    # the alignment model with many extra bits is the exact sum's rounding toward zero
    np.testing.assert_array_equal(tce.mma_align(c, a, b, extra=30), want)
    # and with none it loses more, never gains: truncated addends
    coarse = tce.mma_align(c, a, b, extra=0).astype(np.float64)
    assert np.all(np.abs(coarse - want) <= 2 * k * np.abs(want) * 2.0**-23 + 1e-30)


@pytest.mark.parametrize("fmt", ["tf32", "fp16", "bf16"])
def test_splits_carry_twice_the_operand_bits(fmt):
    rng = np.random.default_rng(4)
    v = (rng.normal(size=3000) * 300).astype(np.float32)
    hi, lo = tce.split(v, fmt)
    bits = {"tf32": 21, "fp16": 21, "bf16": 15}[fmt]
    rel = np.abs(hi + lo - v.astype(np.float64)) / np.abs(v)
    assert rel.max() < 2.0**-bits


def test_pow2_scale_puts_magnitudes_in_the_fp16_window():
    m = np.array([1e-9, 0.3, 1.0, 2.0, 16383.0, 16384.0, 7e7, 0.0])
    s = tce.pow2_scale(m)
    scaled = m[:-1] * s[:-1]
    assert np.all((scaled >= 2.0**14) & (scaled < 2.0**15)) and s[-1] == 1.0
    assert np.all(np.log2(s) == np.round(np.log2(s)))  # powers of two: exact


def _case(cov: str, n: int = 300, d: int = 32, k: int = 64):
    rng = np.random.default_rng(5)
    centres = rng.normal(scale=2.0, size=(16, d))
    X = centres[rng.integers(16, size=n)] + rng.normal(scale=0.7, size=(n, d))
    X = (X - X.mean(axis=0)).astype(np.float32)
    means = X[rng.integers(n, size=(1, k))].astype(np.float64)
    shape = (1, k, d) if cov == "diag" else (1, k)
    pc = 1.0 / rng.uniform(0.6, 1.2, size=shape)
    w = rng.dirichlet(np.ones(k) * 5.0, size=1)
    return X, Params(w, means, 1.0 / pc**2, pc)


def _f64(X, params, cov):
    X64 = X.astype(np.float64)
    mu, pc = params.means[0], params.precisions_cholesky[0]
    prec = pc**2 if cov == "diag" else (pc**2)[:, None] * np.ones_like(mu)
    quad = ((X64[:, None, :] - mu[None]) ** 2 * prec[None]).sum(axis=2)
    lp = np.log(params.weights[0]) + 0.5 * np.log(prec).sum(axis=1)
    return (lp - 0.5 * X.shape[1] * math.log(2 * math.pi) - quad / 2) / math.log(2)


@pytest.mark.parametrize("cov", ["diag", "spherical"])
def test_emulated_log_densities_against_float64(cov):
    """3xTF32 and scaled 3xFP16 are float32-level; one TF32 product is not; BF16 in between."""
    X, params = _case(cov)
    ref = _f64(X, params, cov)
    scale = np.abs(ref).max()

    def err(scheme):
        return np.abs(tce.log_densities(X, params, cov, scheme).astype(np.float64) - ref).max()

    tf32 = err(tce.Scheme("3xTF32"))
    fp16 = err(tce.Scheme("3xFP16", fmt="fp16"))
    one = err(tce.Scheme("1xTF32", products="1"))
    assert tf32 < 2e-6 * scale and fp16 < 2e-6 * scale
    assert one > 30 * max(tf32, fp16)
    # the mean log-likelihood of the default scheme, within the bound by far
    ll = tce.mean_loglik(tce.log_densities(X, params, cov, tce.Scheme("3xTF32")))
    assert abs(ll - tce.mean_loglik(ref)) < 1e-5


@pytest.mark.parametrize("fmt", ["tf32", "fp16"])
def test_the_rounding_probe_separates_the_models(fmt, monkeypatch):
    """``probe_mma_rounding.py`` decides which model the device follows from its operand sets:
    every pair of models must disagree somewhere on them, or the probe could not tell them
    apart (checked on the CPU: the models' outputs against each other)."""
    from benchmarks import probe_mma_rounding as probe

    monkeypatch.setattr(probe, "TILES", 24)
    sets = probe.operand_sets(fmt)
    outs = {name: [f(*ops) for ops in sets.values()] for name, f in probe.models(fmt).items()}
    names = list(outs)
    for i, m1 in enumerate(names):
        for m2 in names[i + 1 :]:
            differ = any(
                not np.array_equal(a.view(np.uint32), b.view(np.uint32))
                for a, b in zip(outs[m1], outs[m2], strict=True)
            )
            assert differ, f"{m1} and {m2} agree on every operand set"


@pytest.mark.parametrize("cov", ["diag", "spherical"])
def test_the_fp16_probe_packs_the_emulated_operands_in_fragment_order(cov):
    """``probe_fp16_lse.py``'s host packing, read back in global-memory order by the layout
    it intends (A words t and t + 4 of a k-step: columns 2t, 2t+1 and 2t+8, 2t+9; B uint4
    {hi(2t), hi(2t+8), lo(2t), lo(2t+8)} per lane), holds exactly the operands tc_emulate
    emulates (hi and lo of both); the replay test below reads them as the kernel does."""
    from benchmarks import probe_fp16_lse as probe

    X, params = _case(cov, n=40, d=32, k=70)  # a partial component tile
    ops = probe.Operands(X, params, cov)
    fi, tiles = ops.fi, ops.tiles

    def halves(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = words.astype(np.uint32)
        low = (w & 0xFFFF).astype(np.uint16).view(np.float16).astype(np.float64)
        high = (w >> 16).astype(np.uint16).view(np.float16).astype(np.float64)
        return low, high

    # A: row r, k-step starting at column k0: word k0 / 2 + t -> columns k0 + 2t, k0 + 2t + 1
    ah, al = np.zeros((len(X), fi)), np.zeros((len(X), fi))
    for packed, out in ((ops.Xh, ah), (ops.Xl, al)):
        for k0 in range(0, fi, 16):
            for t in range(4):
                for off in (0, 4):
                    low, high = halves(packed[:, k0 // 2 + t + off])
                    out[:, k0 + 2 * t + 2 * off], out[:, k0 + 2 * t + 2 * off + 1] = low, high
    # B: per (tile, chunk, component, s, t) the uint4 the kernel's lane t loads
    W = ops.Wt.reshape(tiles, fi // probe.KC, probe.TN, probe.KC // 16, 4, 4)
    bh = np.zeros((tiles * probe.TN, fi))
    bl = np.zeros_like(bh)
    for tile in range(tiles):
        for c in range(fi // probe.KC):
            for s in range(probe.KC // 16):
                for t in range(4):
                    k0 = c * probe.KC + s * 16 + 2 * t
                    comps = slice(tile * probe.TN, (tile + 1) * probe.TN)
                    q = W[tile, c, :, s, t]
                    for word, (arr, k) in enumerate(
                        ((bh, k0), (bh, k0 + 8), (bl, k0), (bl, k0 + 8))
                    ):
                        low, high = halves(q[:, word])
                        arr[comps, k], arr[comps, k + 1] = low, high

    A, B, _, _ = tce.operands(X, params, cov)
    col_scale = tce.pow2_scale(ops.col_max)
    Bs = B.astype(np.float64) / col_scale[:, None]
    comp_scale = tce.pow2_scale(np.abs(Bs).max(axis=0))
    want_ah, want_al = tce.split((A.astype(np.float64) * col_scale).astype(np.float32), "fp16")
    want_bh, want_bl = tce.split((Bs * comp_scale).astype(np.float32), "fp16")
    k = B.shape[1]
    np.testing.assert_array_equal(ah, want_ah)
    np.testing.assert_array_equal(al, want_al)
    np.testing.assert_array_equal(bh[:k], want_bh.T)
    np.testing.assert_array_equal(bl[:k], want_bl.T)
    assert not bh[k:].any() and np.all(np.isneginf(ops.cst[k:]))
    # unscaled, the hi.hi products are the log-densities' inner products to FP16 precision
    inner = (ah @ bh[:k].T) * (1.0 / comp_scale)
    exact = A.astype(np.float64) @ B.astype(np.float64)
    assert np.abs(inner - exact).max() < 2e-3 * np.abs(exact).max()
    np.testing.assert_array_equal(ops.inv_s[:k], (1.0 / comp_scale).astype(np.float32))


def _half(word: int, i: int) -> float:
    """Element i (0: low 16 bits) of a .f16x2 register."""
    bits = (int(word) >> (16 * i)) & 0xFFFF
    return float(np.uint16(bits).view(np.float16))


@pytest.mark.parametrize("cov", ["diag", "spherical"])
def test_a_lane_by_lane_replay_of_the_fp16_kernel_is_the_emulation(cov):
    """``probe_fp16_lse``'s kernel replayed with its own index expressions (shared-memory fill,
    swizzled weight stages, each lane's registers decoded by the PTX ISA's m16n8k16 .f16
    fragment layouts, the C layout back to rows and components): its log-densities are the
    emulation's bit for bit, so the device's ``mean_ll_minus_emulation`` tests the hardware
    model and nothing else. (Swapping the halves of A's registers breaks it: the replay reads
    what the kernel reads.)"""
    from benchmarks import probe_fp16_lse as probe

    n, k = 40, 70
    X, params = _case(cov, n=n, d=32, k=k)
    ops = probe.Operands(X, params, cov)
    fi, tiles, TN, WQ, KC, BM = ops.fi, ops.tiles, probe.TN, probe.WQ, probe.KC, probe.BM
    fw, xs, nc = fi // 2, fi // 2 + 4, fi // probe.KC

    def wswz(comp: int, q: int) -> int:
        return comp * WQ + (q ^ ((comp & 1) << 2))

    Xhs = np.zeros(BM * xs, np.uint32)
    Xls = np.zeros_like(Xhs)
    for r in range(n):
        Xhs[r * xs : r * xs + fw], Xls[r * xs : r * xs + fw] = ops.Xh[r], ops.Xl[r]
    Wt = ops.Wt.reshape(-1, 4)
    Wb = np.zeros((2 * TN * WQ, 4), np.uint32)
    V = np.full((BM, tiles * TN), np.nan, np.float32)
    acc: dict[tuple[int, int, int], np.ndarray] = {}
    for q in range(tiles * nc):
        for i in range(TN * WQ):
            Wb[(q & 1) * TN * WQ + wswz(i >> 3, i & 7)] = Wt[q * TN * WQ + i]
        c = q % nc
        for warp in range(8):
            wr, wc = warp & 3, warp >> 2
            if c == 0:
                for m in range(2):
                    for j in range(4):
                        acc[warp, m, j] = np.zeros((16, 8), np.float32)
            for s in range(KC // 16):
                kw = c * (KC // 2) + s * 8
                for m in range(2):
                    AH, AL = np.full((16, 16), np.nan), np.full((16, 16), np.nan)
                    for lane in range(32):
                        g, t = lane >> 2, lane & 3
                        row = wr * 32 + m * 16 + g
                        idx = [row * xs + kw + t, (row + 8) * xs + kw + t]
                        idx += [row * xs + kw + t + 4, (row + 8) * xs + kw + t + 4]
                        for i in range(
                            8
                        ):  # a_i: row g (i in 0,1,4,5) or g + 8; col 2t + (i&1) (+8)
                            rr = g if i in (0, 1, 4, 5) else g + 8
                            cc = 2 * t + (i & 1) + (8 if i >= 4 else 0)
                            AH[rr, cc] = _half(Xhs[idx[i // 2]], i % 2)
                            AL[rr, cc] = _half(Xls[idx[i // 2]], i % 2)
                    for j in range(4):
                        BH, BL = np.full((16, 8), np.nan), np.full((16, 8), np.nan)
                        for lane in range(32):
                            g, t = lane >> 2, lane & 3
                            b = Wb[(q & 1) * TN * WQ + wswz(wc * 32 + j * 8 + g, s * 4 + t)]
                            for i in range(4):  # b_i: row 2t + (i&1) (+8 for i >= 2), col g
                                rr = 2 * t + (i & 1) + (8 if i >= 2 else 0)
                                BH[rr, g] = _half(b[i // 2], i % 2)
                                BL[rr, g] = _half(b[2 + i // 2], i % 2)
                        ch = np.zeros((16, 8), np.float32)
                        for a, bb in ((AL, BH), (AH, BL), (AH, BH)):
                            ch = tce.mma_rz(ch, a, bb)
                        acc[warp, m, j] = acc[warp, m, j] + tce.untruncate(ch)
            if c == nc - 1:
                kb = (q // nc) * TN + wc * 32
                for m in range(2):
                    for j in range(4):
                        rows = wr * 32 + m * 16 + np.arange(16)
                        comps = kb + j * 8 + np.arange(8)
                        a = acc[warp, m, j] * ops.inv_s[comps][None, :]
                        sq = np.zeros(16, np.float32)
                        inside = rows < n
                        sq[inside] = ops.sqn[rows[inside]]
                        cb = ops.cst[comps][None, :] + ops.hp[comps][None, :] * sq[:, None]
                        if cov == "diag":
                            cb = np.broadcast_to(ops.cst[comps], (16, 8))
                        V[np.ix_(rows, comps)] = (a + cb) * tce.LOG2E
    scheme = tce.Scheme("3xFP16", fmt="fp16")
    want = tce.log_densities(X, params, cov, scheme, ops.col_max)
    np.testing.assert_array_equal(V[:n, :k].view(np.uint32), want.view(np.uint32))


def test_the_fp16_probe_refuses_widths_its_kernel_would_cut():
    from benchmarks import probe_fp16_lse as probe

    X, params = _case("spherical", n=20, d=24, k=8)
    with pytest.raises(ValueError, match="multiple of 32"):
        probe.Operands(X, params, "spherical")
