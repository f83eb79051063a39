"""The large-K pass (``gmm_core/_cupy/large_k.py``) against float64 NumPy statistics.

K = 1024, 2048, 4096 components; D = 64, 128, 256 features; diag and spherical; restarts side
by side; row counts that leave partial chunks and several float32 flushes; an inactive restart;
sample weights. Then fits through the public API against the float64 fit at the same start.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from gmm_core import GaussianMixture
from gmm_core._engine import cupy_unavailable_reason
from gmm_core._gaussian import Params

_REASON = cupy_unavailable_reason()
#: gmm_core._cupy.config.LARGE_K_FUSED_ENV / LARGE_K_F64_ENV (not imported: gmm_core._cupy
#: needs CuPy)
LARGE_K_FUSED_ENV = "GMM_CORE_LARGE_K_FUSED"
LARGE_K_F64_ENV = "GMM_CORE_LARGE_K_F64"
LARGE_K_SPARSE_ENV = "GMM_CORE_LARGE_K_SPARSE"
LARGE_K_SCREEN_ENV = "GMM_CORE_LARGE_K_SCREEN"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_REASON is not None, reason=f"needs a usable CUDA GPU: {_REASON}"),
]


def _data(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """``k`` clusters in ``d`` dimensions, centred (the engine's passes see centred data)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(k, d))
    X = centres[rng.integers(k, size=n)] + rng.normal(scale=0.7, size=(n, d))
    return (X - X.mean(axis=0)).astype(np.float32)


def _params(X: np.ndarray, cov: str, k: int, n_restarts: int, seed: int = 1) -> Params:
    """Restarts whose means are data rows (plus noise): every component takes some samples."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    means = X[rng.integers(n, size=(n_restarts, k))].astype(np.float64)
    means += rng.normal(scale=0.2, size=means.shape)
    shape = (n_restarts, k, d) if cov == "diag" else (n_restarts, k)
    prec_chol = 1.0 / rng.uniform(0.6, 1.2, size=shape)
    cov_ = 1.0 / prec_chol**2
    weights = rng.dirichlet(np.ones(k) * 5.0, size=n_restarts)
    return Params(weights, means, cov_, prec_chol)


def _reference(X: np.ndarray, cov: str, params: Params, weights=None):
    """float64 statistics of every restart (loglik, nk, sx, sxx) and the sums of their terms'
    magnitudes (what a float32 sum's rounding is relative to)."""
    X64 = X.astype(np.float64)
    w = np.ones(len(X)) if weights is None else weights.astype(np.float64)
    out = []
    for r in range(params.means.shape[0]):
        mu, pc = params.means[r], params.precisions_cholesky[r]
        prec = pc**2 if cov == "diag" else (pc**2)[:, None] * np.ones_like(mu)
        log_det = np.log(prec).sum(axis=1) / 2
        quad = (X64**2) @ prec.T - 2 * X64 @ (mu * prec).T + (mu**2 * prec).sum(axis=1)
        lp = np.log(params.weights[r]) + log_det - 0.5 * X.shape[1] * math.log(2 * math.pi)
        lp = lp - 0.5 * quad
        m = lp.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(lp - m).sum(axis=1))
        resp = np.exp(lp - lse[:, None]) * w[:, None]
        sq = X64**2 if cov == "diag" else (X64**2).sum(axis=1, keepdims=True)
        out.append(
            {
                "loglik": float(w @ lse),
                "nk": resp.sum(axis=0),
                "sx": resp.T @ X64,
                "sxx": (resp.T @ sq) if cov == "diag" else (resp.T @ sq)[:, 0],
                "sx_scale": resp.T @ np.abs(X64),
                "sxx_scale": (resp.T @ sq) if cov == "diag" else (resp.T @ sq)[:, 0],
            }
        )
    return out


@pytest.fixture(params=["fused", "float32", "f64", "sparse", "sparse_bf16", "sparse_mma"])
def variant(request):
    """The pass as the fused tensor-core kernels, as cuBLAS float32 GEMMs, with the float64
    E-step (cuBLAS float64 and TF32 GEMMs; skipped where the device's float64 is slow), and
    screened (a TF32 or a BF16 GEMM screen, or the BF16 screen in the selecting kernel's
    tensor-core tiles; the few candidates per row exact)."""
    if request.param == "f64":
        import cupy

        from gmm_core._cupy.config import FAST_FLOAT64

        if int(cupy.cuda.Device().compute_capability) not in FAST_FLOAT64:
            pytest.skip("the float64 E-step serves devices with float64 tensor cores only")
    return request.param


def _screen(variant: str) -> str:
    """The screen of a screened variant ("sparse": TF32)."""
    return {"sparse_bf16": "bf16", "sparse_mma": "mma"}.get(variant, "tf32")


def _use(variant: str, monkeypatch=None, engine=None) -> None:
    """Select the pass variant: in the environment (fits build their engines) or on an engine."""
    if monkeypatch is not None:
        monkeypatch.setenv(LARGE_K_FUSED_ENV, "1" if variant == "fused" else "0")
        monkeypatch.setenv(LARGE_K_F64_ENV, "1" if variant == "f64" else "0")
        monkeypatch.setenv(LARGE_K_SPARSE_ENV, "1" if variant.startswith("sparse") else "0")
        monkeypatch.setenv(LARGE_K_SCREEN_ENV, _screen(variant))
    if engine is not None:
        engine.config.large_k_fused = variant == "fused"
        engine.config.large_k_f64 = variant == "f64"
        engine.config.large_k_sparse = variant.startswith("sparse")
        engine.config.large_k_screen = _screen(variant)


def _engine_stats(
    X, cov, params, *, variant, active=None, weights=None, chunk_bytes=None, slice_rows=256,
    monkeypatch,
):  # fmt: skip
    import cupy

    from gmm_core._cupy import large_k, large_k_f64, large_k_sparse
    from gmm_core._cupy.engine import CupyEngine

    if chunk_bytes is not None:  # several chunks and float32 flushes in a small test
        monkeypatch.setattr(large_k, "CHUNK_BYTES", chunk_bytes)
        monkeypatch.setattr(large_k_sparse, "CHUNK_BYTES", chunk_bytes)
        monkeypatch.setattr(large_k, "STATS_ROWS", 2048)
        # the fused pass: launches of 640 rows (lse of every restart per launch), partials
        # added across launches
        monkeypatch.setattr(large_k, "LSE_BYTES", 4 * params.means.shape[0] * 640)
        # the float64 E-step: chunks of float64 log-densities as many rows as the float32
        # path's (several chunks); slices of 256 rows: several slots and a partial one per
        # chunk, or (slice_rows past a chunk's rows) short chunks summed into one slot
        monkeypatch.setattr(large_k_f64, "CHUNK_BYTES", 2 * chunk_bytes)
        monkeypatch.setattr(large_k_f64, "SLICE_ROWS", slice_rows)
    engine = CupyEngine()
    _use(variant, engine=engine)
    data = engine.prepare(cupy.asarray(X), None, cov, sample_weight=weights)
    R, K, _ = params.means.shape
    assert engine.large_k.fused(data) == (variant == "fused" and X.shape[1] <= 256)
    want = {"f64": "lk_rows64", "float32": "lk_rows", "fused": "lkt_lse", "sparse": "lks_select"}
    want = want[variant.split("_")[0]]
    assert any(ref.expr.startswith(want) for ref in engine.large_k.kernel_refs(data))
    assert engine.large_k.supports(data, R, K)
    dev = params.map(cupy.asarray)
    act = None if active is None else cupy.asarray(active)
    return engine.large_k.accumulate(data, dev, act)


def _host(a):
    import cupy

    return cupy.asnumpy(a) if isinstance(a, cupy.ndarray) else np.asarray(a)


def _check(stats, ref, r, n_samples):
    got_ll = float(_host(stats.loglik)[r])
    # float32 log-densities (rounding unbiased): the mean log-likelihood to ~1e-6 nats (a
    # truncating accumulation was off by 2e-4 to 4e-3 nats here)
    assert abs(got_ll - ref["loglik"]) / n_samples < 2e-5 + 1e-7 * abs(ref["loglik"]) / n_samples
    # float32 log-densities of hundreds of features carry ~1e-3 relative error into each
    # responsibility (the float32 GEMM path measured the same against float64), and float32
    # sums of at most STATS_ROWS rows: each statistic within 2e-3 of the sum of its terms'
    # magnitudes plus 1e-5 of the largest such sum; a layout error is off by whole terms
    for name, scale in (("nk", "nk"), ("sx", "sx_scale"), ("sxx", "sxx_scale")):
        got = _host(getattr(stats, name))[r]
        bound = 2e-3 * ref[scale] + 1e-5 * ref[scale].max() + 1e-4
        np.testing.assert_array_less(np.abs(got - ref[name]), bound, err_msg=name)


@pytest.mark.parametrize("cov", ["diag", "spherical"])
@pytest.mark.parametrize(("k", "d"), [(1024, 64), (2048, 128), (4096, 256)])
def test_large_k_pass_matches_float64(k, d, cov, variant, monkeypatch):
    X = _data(3_001, d, 64, seed=k + d)  # 3001 rows: partial chunks
    params = _params(X, cov, k, 1)
    stats = _engine_stats(
        X, cov, params, variant=variant, chunk_bytes=4 * k * 700, monkeypatch=monkeypatch
    )
    ref = _reference(X, cov, params)[0]
    _check(stats, ref, 0, len(X))
    if variant == "f64":  # float64 log-densities: only the float32 exp2 sums' rounding left
        assert abs(float(_host(stats.loglik)[0]) - ref["loglik"]) / len(X) < 2e-6


def test_a_lloyd_pass_through_the_large_k_pass_assigns_every_row_to_its_nearest_centre(variant):
    """The device k-means' hard mixture (precision 1e12 / total variance: log-densities ~1e12)
    through the large-K pass (2 restarts x 40 centres, 40 features). Its row kernel's
    responsibilities were exp2(v - lse) with v's product fused into the subtraction (an FMA),
    so a winner's 1 came out as exp2(+-3e4): inf or 0 (H200, 2026-12-04)."""
    import cupy

    from gmm_core._cupy.engine import CupyEngine
    from gmm_core._kmeans import HARD_PRECISION, hard_params

    X = _data(60_000, 40, 12, seed=3)
    rng = np.random.default_rng(4)
    centres = X[rng.choice(len(X), size=(2, 40), replace=False)].astype(np.float64)
    engine = CupyEngine()
    _use(variant, engine=engine)
    data = engine.prepare(cupy.asarray(X), None, "diag")
    assert engine.large_k.supports(data, 2, 40)
    assert engine.large_k.fused(data) == (variant == "fused")
    precision = HARD_PRECISION / float(X.astype(np.float64).var(axis=0).sum())
    hard = hard_params(cupy.asarray(centres), "diag", precision, cupy)
    stats = engine.lloyd_pass(data, hard, cupy.ones(2, dtype=bool))
    for r in range(2):
        d2 = ((X[:, None, :].astype(np.float64) - centres[r][None]) ** 2).sum(axis=2)
        counts = np.bincount(d2.argmin(axis=1), minlength=40)
        nk = _host(stats.nk)[r]
        assert np.isfinite(nk).all() and np.isfinite(_host(stats.sx)[r]).all()
        assert np.abs(nk - counts).sum() <= 2  # a float32 near-tie may split a row
        assert abs(nk.sum() - len(X)) < 1e-3


def test_a_default_fit_whose_kmeans_init_takes_the_large_k_pass(variant, monkeypatch):
    """The selection test's K = 40 case (40 features, 2 restarts): init, EM and the result."""
    import cupy

    _use(variant, monkeypatch)
    X = _data(60_000, 40, 12, seed=3) + np.float32(20.0)  # uncentred: the fit centres it
    kw = dict(covariance_type="diag", n_init=2, tol=0.0, max_iter=8, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gpu = GaussianMixture(40, backend="cupy", **kw).fit(cupy.asarray(X))
        cpu = GaussianMixture(40, backend="numpy", **kw).fit(X)
    assert math.isfinite(gpu.lower_bound_) and np.isfinite(gpu.means_).all()
    # different k-means draws (device vs scikit-learn): comparable, not equal, optima
    assert gpu.lower_bound_ > cpu.lower_bound_ - 0.05 * (1 + abs(cpu.lower_bound_))


@pytest.mark.parametrize("cov", ["diag", "spherical"])
def test_large_k_pass_at_few_components_per_restart(cov, variant, monkeypatch):
    """2 restarts of 40 components over 40 features (80 in all: the large-K pass), as the
    selection test's K = 40 candidate runs it."""
    X = _data(60_000, 40, 12, seed=3)
    params = _params(X, cov, 40, 2, seed=4)
    stats = _engine_stats(X, cov, params, variant=variant, monkeypatch=monkeypatch)
    ref = _reference(X, cov, params)
    for r in range(2):
        _check(stats, ref[r], r, len(X))


def test_a_fit_through_the_large_k_pass_at_few_components_matches_numpy(variant, monkeypatch):
    """The public fit of the selection test's K = 40 case against the NumPy backend."""
    _use(variant, monkeypatch)
    rng = np.random.default_rng(3)
    centres = rng.normal(scale=6.0, size=(12, 40))
    X = (centres[rng.integers(0, 12, 60_000)] + rng.normal(size=(60_000, 40)) + 20.0).astype(
        np.float32
    )
    start = GaussianMixture(
        40, covariance_type="diag", max_iter=1, random_state=0, backend="numpy"
    ).fit(X)
    kw = dict(
        covariance_type="diag",
        n_init=2,
        tol=0.0,
        max_iter=8,
        weights_init=start.weights_,
        means_init=start.means_,
        precisions_init=start.precisions_,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gpu = GaussianMixture(40, backend="cupy", **kw).fit(X)
        cpu = GaussianMixture(40, backend="numpy", **kw).fit(X)
    assert gpu.backend_ == "cupy"
    assert abs(gpu.lower_bound_ - cpu.lower_bound_) < 1e-4 * (1 + abs(cpu.lower_bound_))


@pytest.mark.parametrize("cov", ["diag", "spherical"])
def test_large_k_restarts_side_by_side_and_an_inactive_one(cov, variant, monkeypatch):
    X = _data(2_500, 72, 40, seed=5)  # D = 72: F not a multiple of 8 for spherical (73)
    params = _params(X, cov, 300, 3, seed=2)  # 900 components in all, K not a multiple of 8
    active = np.array([True, False, True])
    stats = _engine_stats(X, cov, params, variant=variant, active=active,
                          chunk_bytes=4 * 904 * 600, slice_rows=2048,
                          monkeypatch=monkeypatch)  # fmt: skip
    ref = _reference(X, cov, params)
    for r in (0, 2):
        _check(stats, ref[r], r, len(X))
    assert _host(stats.loglik)[1] == 0.0
    assert not _host(stats.nk)[1].any() and not _host(stats.sx)[1].any()


def test_large_k_weights_match_the_weighted_reference(variant, monkeypatch):
    X = _data(2_000, 64, 30, seed=9)
    rng = np.random.default_rng(4)
    weights = rng.uniform(0.0, 3.0, size=len(X))
    params = _params(X, "diag", 512, 1, seed=3)
    stats = _engine_stats(
        X, "diag", params, variant=variant, weights=weights, monkeypatch=monkeypatch
    )
    _check(stats, _reference(X, "diag", params, weights)[0], 0, weights.sum())


@pytest.mark.parametrize("cov", ["diag", "spherical"])
def test_large_k_fit_follows_the_numpy_backend(cov, variant, monkeypatch):
    """The public API: a float32 fit on the large-K pass against the NumPy backend from the same
    start: one iteration against float64 (within 1e-5 nats per sample), six against float32
    (within 1e-4; float32 and float64 EM part by 0.03 nats in six iterations on this spherical
    case, on the NumPy backend alike)."""
    import cupy

    _use(variant, monkeypatch)
    X = _data(20_000, 64, 100, seed=11)
    p = _params(X, cov, 256, 1, seed=6)
    init = {
        "weights_init": p.weights[0],
        "means_init": p.means[0],
        "precisions_init": p.precisions_cholesky[0] ** 2,
    }

    def score(backend: str, dtype, iters: int) -> float:
        gm = GaussianMixture(256, covariance_type=cov, backend=backend, max_iter=iters, tol=0,
                             reg_covar=1e-4, **init)  # fmt: skip
        Xt = X.astype(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gm.fit(cupy.asarray(Xt) if backend == "cupy" else Xt)
        return float(gm.score(X.astype(np.float64)))

    assert abs(score("cupy", np.float32, 1) - score("numpy", np.float64, 1)) < 1e-5
    assert abs(score("cupy", np.float32, 6) - score("numpy", np.float32, 6)) < 1e-4


def test_large_k_serves_the_fit():
    """The fit above runs on the large-K pass (not the float32 GEMM path it replaces)."""
    import cupy

    from gmm_core._cupy.engine import CupyEngine

    X = cupy.asarray(_data(1_000, 64, 10))
    engine = CupyEngine()
    data = engine.prepare(X, None, "diag")
    params = _params(_data(1_000, 64, 10), "diag", 256, 1).map(cupy.asarray)
    calls = []
    real = engine.large_k.accumulate
    engine.large_k.accumulate = lambda *a, **k: calls.append(1) or real(*a, **k)
    engine.accumulate(data, params, cupy.ones(1, dtype=bool))
    assert calls == [1]


def _sparse_counts(monkeypatch, X, cov, params, **kw):
    """The screened pass's statistics and the rows it sent through the dense pass."""
    from gmm_core._cupy import large_k_sparse

    monkeypatch.setattr(large_k_sparse, "trace", [])
    stats = _engine_stats(X, cov, params, variant="sparse", monkeypatch=monkeypatch, **kw)
    return stats, sum(p["listed"] for p in large_k_sparse.trace)


@pytest.mark.parametrize("cov", ["diag", "spherical"])
def test_the_screened_pass_keeps_separated_rows_and_lists_overlapping_ones(cov, monkeypatch):
    """Clustered rows keep a few candidates each (the screened path serves them); rows of one
    blob under 512 overlapping components have hundreds within exp(-T) and go through the
    dense pass. Both, in one chunk, against float64."""
    rng = np.random.default_rng(12)
    d = 64
    X = _data(3_000, d, 40, seed=13)
    blob = rng.normal(scale=0.05, size=(1_000, d)).astype(np.float32)
    X = np.concatenate([X, blob])[rng.permutation(4_000)]
    params = _params(X, cov, 512, 1, seed=14)
    means = params.means.copy()
    means[0, :256] = rng.normal(scale=0.05, size=(256, d))  # half the components on the blob
    params = Params(params.weights, means, params.covariances, params.precisions_cholesky)
    stats, listed = _sparse_counts(monkeypatch, X, cov, params)
    assert 900 <= listed < 1_200  # the blob's rows, not the clusters'
    ref = _reference(X, cov, params)[0]
    _check(stats, ref, 0, len(X))


@pytest.mark.parametrize("cov", ["diag", "spherical"])
def test_a_chunk_past_the_pairs_capacity_goes_through_the_dense_pass(cov, monkeypatch):
    """Which rows keep their pairs must not depend on the order of the atomics: a data chunk
    whose pairs overflow the capacity is taken whole by the dense pass."""
    from gmm_core._cupy import large_k_sparse

    monkeypatch.setattr(large_k_sparse, "PAIR_BYTES", 1 << 40)  # capacity: the floor, 4096 pairs
    X = _data(12_000, 64, 64, seed=15)
    params = _params(X, cov, 256, 2, seed=16)
    stats, listed = _sparse_counts(monkeypatch, X, cov, params)
    assert listed == len(X)  # 2 restarts: at least 24,000 pairs
    for r, ref in enumerate(_reference(X, cov, params)):
        _check(stats, ref, r, len(X))
    monkeypatch.undo()
    monkeypatch.setattr(large_k_sparse, "PAIRS_PER_ROW", 32)
    stats, listed = _sparse_counts(monkeypatch, X, cov, params)  # room for them: kept
    assert listed < len(X) // 10
    for r, ref in enumerate(_reference(X, cov, params)):
        _check(stats, ref, r, len(X))


def test_the_bf16_screening_product_keeps_its_bound_where_cublas_could_split_k():
    """Few rows and a long inner dimension (512), every value positive and at the worst of its
    bfloat16 rounding: cuBLAS may split such a product over k, and unless told otherwise
    (large_k_f64.gemm's math flag) add the parts in bfloat16, 2^-8 more per part. The product
    stays within U |f| |w| of the exact one."""
    import cupy

    from gmm_core._cupy import large_k_sparse
    from gmm_core._cupy.kernels import kernel_ref, load_kernel
    from gmm_core._cupy.large_k_f64 import gemm

    rng = np.random.default_rng(5)
    step = np.float32(1.0 + 2.0**-8 - 2.0**-23)  # bfloat16 keeps 1.0: ~2^-8 lost
    inner, rows, kp = 512, 8, 64
    f = (step * 2.0 ** rng.integers(-2, 3, size=(rows, inner))).astype(np.float32)
    w = (step * 2.0 ** rng.integers(-2, 3, size=(kp, inner))).astype(np.float32)
    convert = load_kernel(kernel_ref(large_k_sparse.SOURCE, "lks_bf16"))

    def bf16(a):
        out = cupy.empty(a.shape, dtype=cupy.uint16)
        n, m = a.shape
        args = (cupy.asarray(a), np.int64(n), np.int32(m), np.int32(m), out, np.int32(m))
        convert((8,), (256,), args)
        return out

    f16, w16 = bf16(f), bf16(w)
    g16 = cupy.empty((rows, kp), dtype=cupy.uint16)
    gemm(
        1, 0, kp, rows, inner, w16.data.ptr, inner, f16.data.ptr, inner, g16.data.ptr, kp,
        precision="bf16",
    )  # fmt: skip
    got = (cupy.asnumpy(g16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    want = f.astype(np.float64) @ w.astype(np.float64).T
    norms = np.outer(np.linalg.norm(f.astype(np.float64), axis=1),
                     np.linalg.norm(w.astype(np.float64), axis=1))  # fmt: skip
    ratio = np.abs(got - want) / (large_k_sparse.U_SCREEN["bf16"] * norms)
    assert ratio.max() <= 1.0
    assert ratio.max() > 0.1  # the operands' roundings do add up here: the check can fail


@pytest.mark.parametrize("screen", ["sparse", "sparse_bf16", "sparse_mma"])
def test_the_screened_pass_is_deterministic(screen, monkeypatch):
    X = _data(20_000, 128, 64, seed=17)
    params = _params(X, "diag", 1024, 1, seed=18)
    a = _engine_stats(X, "diag", params, variant=screen, monkeypatch=monkeypatch)
    b = _engine_stats(X, "diag", params, variant=screen, monkeypatch=monkeypatch)
    for name in ("loglik", "nk", "sx", "sxx"):
        np.testing.assert_array_equal(_host(getattr(a, name)), _host(getattr(b, name)))


def _on_centres(k: int, cov: str, n: int = 20_000, d: int = 64, seed: int = 31):
    """Separated clusters and one restart whose components sit on their centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(k, d))
    X = centres[rng.integers(k, size=n)] + rng.normal(scale=0.7, size=(n, d))
    mean = X.mean(axis=0)
    X = (X - mean).astype(np.float32)
    shape = (1, k, d) if cov == "diag" else (1, k)
    prec_chol = np.full(shape, 1.0 / 0.7)
    params = Params(np.full((1, k), 1.0 / k), (centres - mean)[None], 1.0 / prec_chol**2, prec_chol)
    return X, params


@pytest.mark.parametrize("cov", ["diag", "spherical"])
@pytest.mark.parametrize("k", [64, 80, 200])
def test_the_mma_screen_serves_a_partial_tile_of_components(k, cov, monkeypatch):
    """Review: lks_mma's columns of warps past the last component see only padding (lower
    bounds -inf, so thr -inf), and upper bounds of -inf passed ``>=``: every padding component
    filled the lists (K = 64, the large-K pass's least: every row listed). Separated clusters
    with a mean each, one restart: the rows keep their one or two candidates on the screened
    path, and the statistics match float64."""
    from gmm_core._cupy import large_k_sparse

    X, params = _on_centres(k, cov)
    monkeypatch.setattr(large_k_sparse, "trace", [])
    stats = _engine_stats(X, cov, params, variant="sparse_mma", monkeypatch=monkeypatch)
    assert large_k_sparse.trace[-1]["listed"] < len(X) // 100
    assert large_k_sparse.trace[-1]["pairs"] < 3 * len(X)
    _check(stats, _reference(X, cov, params)[0], 0, len(X))


@pytest.mark.parametrize("cov", ["diag", "spherical"])
def test_rows_whose_mma_lists_overflow_are_screened_again_to_the_same_statistics(cov, monkeypatch):
    """lks_mma's lists grow with how late a row's likeliest component comes in the tiles; a
    row past LKM_CAP entries is screened again from its lo, where its list is exactly the
    kept set. So lists of 32 entries (many rows screened twice, several launches per chunk)
    and of 96 keep the same components and list the same rows: the same statistics (the
    log-likelihood's float64 partials are added in another order)."""
    import cupy

    from gmm_core._cupy import large_k_sparse
    from gmm_core._cupy.engine import CupyEngine

    X = _data(20_000, 64, 24, seed=35)
    params = _params(X, cov, 512, 1, seed=36)  # means on rows: many per cluster
    # components ordered along a direction: a row's own cluster's come late for many rows,
    # so the first tiles' lo_run is far below the row's lo and the lists grow (a review's
    # emulation: 44% / 23% of the rows past 32 entries, diag / spherical, ~0 past 96)
    order = np.argsort(params.means[0] @ np.random.default_rng(37).normal(size=X.shape[1]))
    params = Params(
        params.weights[:, order], params.means[:, order], params.covariances[:, order],
        params.precisions_cholesky[:, order],
    )  # fmt: skip
    weights = np.random.default_rng(38).uniform(0.5, 2.0, size=len(X)).astype(np.float32)
    monkeypatch.setattr(large_k_sparse, "MMA_ROWS_PER_LAUNCH", 3_000)
    runs = []
    for options in ((), ("-DLKM_CAP=32",)):
        engine = CupyEngine()
        _use("sparse_mma", engine=engine)
        engine.large_k.options = options
        data = engine.prepare(cupy.asarray(X), None, cov, sample_weight=cupy.asarray(weights))
        monkeypatch.setattr(large_k_sparse, "trace", [])
        stats = engine.large_k.accumulate(data, params.map(cupy.asarray))
        runs.append((stats, large_k_sparse.trace[-1]))
    (a, seen_a), (b, seen_b) = runs
    assert seen_b["rescreened"] > max(seen_a["rescreened"], len(X) // 10)
    assert seen_a["listed"] == seen_b["listed"] and seen_a["pairs"] == seen_b["pairs"]
    for name in ("nk", "sx", "sxx"):
        np.testing.assert_array_equal(_host(getattr(a, name)), _host(getattr(b, name)))
    np.testing.assert_allclose(_host(a.loglik), _host(b.loglik), rtol=1e-12)
    _check(a, _reference(X, cov, params, weights)[0], 0, len(X))


@pytest.mark.parametrize("screen", ["sparse", "sparse_mma"])
def test_a_lloyd_pass_of_k_not_a_multiple_of_128_on_the_screened_pass(screen, monkeypatch):
    """Review: the float4 candidate scan's lanes past a restart's range voted with a sentinel
    of thr - 1, which is thr itself at a Lloyd pass's log-densities (~1e11): K = 1000 left 24
    phantom candidates per row (beyond the components, read out of bounds) under the 32 that
    list a row, so the rows stayed on the screened path with wrong responsibilities. (At
    K = 40 the phantoms listed every row, and the dense pass hid it.)"""
    import cupy

    from gmm_core._cupy import large_k_sparse
    from gmm_core._cupy.engine import CupyEngine
    from gmm_core._kmeans import HARD_PRECISION, hard_params

    X = _data(20_000, 40, 200, seed=21)
    rng = np.random.default_rng(22)
    centres = X[rng.choice(len(X), size=(1, 1000), replace=False)].astype(np.float64)
    engine = CupyEngine()
    _use(screen, engine=engine)
    data = engine.prepare(cupy.asarray(X), None, "diag")
    precision = HARD_PRECISION / float(X.astype(np.float64).var(axis=0).sum())
    hard = hard_params(cupy.asarray(centres), "diag", precision, cupy)
    monkeypatch.setattr(large_k_sparse, "trace", [])
    stats = engine.lloyd_pass(data, hard, cupy.ones(1, dtype=bool))
    assert large_k_sparse.trace[-1]["listed"] < len(X) // 10  # the screened path served
    X64, c = X.astype(np.float64), centres[0]
    d2 = (X64**2).sum(axis=1)[:, None] - 2 * X64 @ c.T + (c**2).sum(axis=1)[None]
    counts = np.bincount(d2.argmin(axis=1), minlength=1000)
    nk = _host(stats.nk)[0]
    assert np.isfinite(nk).all() and abs(nk.sum() - len(X)) < 1e-3
    assert np.abs(nk - counts).sum() <= 2
