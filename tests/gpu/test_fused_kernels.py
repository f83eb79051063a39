"""The fused CUDA passes against the NumPy engine: tensor-core diag and full passes, the
small whole-iteration kernel, the full-covariance kernels (needs a usable CUDA GPU)."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_fixtures import (
    RTOL,
    assert_stats_close,
    collapsing_fit,
    init_kwargs,
    make_data,
    numpy_stats,
    random_params,
)

from gmm_core import GaussianMixture
from gmm_core._engine import cupy_unavailable_reason

_REASON = cupy_unavailable_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_REASON is not None, reason=f"needs a usable CUDA GPU: {_REASON}"),
]


def _tc_engine():
    from gmm_core._cupy import CupyEngine

    engine = CupyEngine(tensor_cores=True)
    if not engine.tensor_cores:
        pytest.skip("the tensor-core pass needs compute capability 8.0 or newer")
    return engine


@pytest.mark.parametrize(
    ("n", "d", "k", "n_restarts"),
    [(20_011, 16, 32, 1), (50_003, 8, 10, 3), (12_000, 4, 5, 8), (9_001, 12, 17, 2)],
)
def test_tensor_core_pass_matches_numpy(n, d, k, n_restarts):
    """diag_pass_tc (3xTF32) == the NumPy engine in float64, for every shape it serves."""
    import cupy

    from gmm_core._cupy import CupyEngine

    X = make_data(n, d, k, np.float32, seed=n)
    params = random_params(X, "diag", k, n_restarts, seed=d)
    shift = X.mean(0)
    want = numpy_stats(X, shift, "diag", params)
    engine = _tc_engine()
    data = engine.prepare(X, shift, "diag")
    plans = engine._plans(data, n_restarts, k)
    assert all(p.tc_mt == -(-k // 16) for p in plans)  # the tensor-core pass, not diag_pass
    assert sum(p.r1 - p.r0 for p in plans) == n_restarts
    active = cupy.ones(n_restarts, bool)
    got = engine.accumulate(data, params.map(cupy.asarray), active)
    assert_stats_close(got, want, RTOL[np.float32])
    # and the SIMT pass of the same data agrees (its restart groups differ: 3 restarts in one
    # group, which once overran its shared memory)
    simt = CupyEngine(tensor_cores=False)
    d_simt = simt.prepare(X, shift, "diag")
    assert all(p.tc_mt == 0 for p in simt._plans(d_simt, n_restarts, k))
    assert_stats_close(simt.accumulate(d_simt, params.map(cupy.asarray), active), want, 2e-5)


def test_tensor_core_pass_is_exact_for_a_far_tight_component():
    """A tight component far from the data mean (|mu / sigma|^2 ~ 1e9) gets exact logits."""
    import cupy

    rng = np.random.default_rng(4)
    X = make_data(40_000, 16, 7, np.float32, seed=4)
    far = (300.0 + 0.01 * rng.standard_normal((800, 16))).astype(np.float32)
    X = np.concatenate([X, far])
    shift = X.mean(0, dtype=np.float64)
    params = random_params(X, "diag", 8, 1, seed=5)
    params.means[0, 7] = 300.0 - shift
    params.covariances[0, 7] = 1e-4
    params.precisions_cholesky[0, 7] = 1e2
    want = numpy_stats(X, shift, "diag", params)
    assert float(want.nk[0, 7]) == pytest.approx(800, rel=1e-3)  # the far points are its own
    engine = _tc_engine()
    data = engine.prepare(X, shift, "diag")
    got = engine.accumulate(data, params.map(cupy.asarray), cupy.ones(1, bool))
    assert_stats_close(got, want, RTOL[np.float32])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize(
    ("cov", "n", "d", "k", "max_iter", "seeds"),
    [("diag", 60_000, 16, 12, 30, (9, 3)), ("full", 40_000, 32, 8, 20, (11, 12))],
)
def test_tensor_core_fit_matches_scikit_learn(cov, n, d, k, max_iter, seeds):
    """GaussianMixture(backend='cupy') on float32 data served by a tensor-core pass
    (diag_pass_tc, full_pass_tc) vs scikit-learn in float64 from the same start."""
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    _tc_engine()
    X = make_data(n, d, k, np.float32, seed=seeds[0])
    init = random_params(X, cov, k, 1, seed=seeds[1])
    kwargs = dict(
        n_components=k,
        covariance_type=cov,
        max_iter=max_iter,
        tol=0,
        **init_kwargs(init, 0, X.mean(0, dtype=np.float64)),
    )
    gm = GaussianMixture(backend="cupy", **kwargs).fit(X)
    ref = SkGaussianMixture(**kwargs).fit(X.astype(np.float64))
    assert gm.backend_ == "cupy"
    assert gm.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-4)
    assert (gm.predict(X) == ref.predict(X.astype(np.float64))).mean() >= 0.999
    np.testing.assert_allclose(gm.means_, ref.means_, rtol=1e-3, atol=1e-3)


def test_tensor_core_pass_streams_chunks():
    """Streamed row chunks (odd sizes, partial last slab) == resident data, tensor-core pass."""
    import cupy

    from gmm_core._cupy import CupyEngine

    resident = _tc_engine()
    streamed = CupyEngine(tensor_cores=True, memory_budget_bytes=200_000, chunk_rows=3_001)
    X = make_data(20_003, 8, 6, np.float32, seed=8)
    params = random_params(X, "diag", 6, 2, seed=9).map(cupy.asarray)
    shift = X.mean(0)
    d_res = resident.prepare(X, shift, "diag")
    d_str = streamed.prepare(X, shift, "diag")
    assert not d_str.resident and len(d_str.chunks) == 7
    assert all(p.tc_mt for p in streamed._plans(d_str, 2, 6))
    active = cupy.ones(2, bool)
    assert_stats_close(
        streamed.accumulate(d_str, params, active), resident.accumulate(d_res, params, active), 1e-6
    )


@pytest.mark.parametrize(
    ("n", "d", "k", "n_restarts", "chunk_rows"),
    [
        (20_011, 32, 16, 1, None),  # the benchmark's shape
        (9_001, 5, 4, 3, None),  # D not a multiple of 8, several restarts
        (12_000, 24, 17, 2, None),  # two component groups per restart
        (3_001, 1, 3, 1, None),
        (2_500, 8, 1, 1, None),
        (20_003, 16, 6, 2, 3_001),  # streamed chunks, a partial last tile in each
        (200_003, 32, 5, 1, None),  # ~12 tiles per block: the float32 -> float64 flushes
    ],
)
def test_full_tensor_core_pass_matches_numpy(n, d, k, n_restarts, chunk_rows):
    """full_pass_tc (fused, 3xTF32) == the NumPy engine in float64 and the GEMM path."""
    import cupy

    from gmm_core._cupy import CupyEngine

    X = make_data(n, d, k, np.float32, seed=n + d)
    params = random_params(X, "full", k, n_restarts, seed=d)
    shift = X.mean(0)
    want = numpy_stats(X, shift, "full", params)
    engine = _tc_engine()
    if chunk_rows:
        engine = CupyEngine(tensor_cores=True, memory_budget_bytes=100_000, chunk_rows=chunk_rows)
    data = engine.prepare(X, shift, "full")
    assert engine._full_tc_ok(data, k)
    assert data.resident == (chunk_rows is None)
    active = cupy.ones(n_restarts, bool)
    got = engine.accumulate(data, params.map(cupy.asarray), active)
    # sum r x of one component is the centred data's sum (~0): compared with the size of its
    # terms, N |x|, as the pass sums it about the component's mean
    scales = {"sx": float(want.nk.max()) * float(np.abs(X - shift).mean())} if k == 1 else None
    assert_stats_close(got, want, RTOL[np.float32], scales)
    assert data._features is None  # no cached quadratic features: the GEMM path did not run
    gemm = CupyEngine(tensor_cores=False)
    d_gemm = gemm.prepare(X, shift, "full")
    assert not gemm._full_tc_ok(d_gemm, k)
    if k > 1:  # (one component: sum r x is the centred data's sum, ~0, where two float32 paths
        # differ by their rounding; the float64 reference above is the check there)
        from_gemm = gemm.accumulate(d_gemm, params.map(cupy.asarray), active)
        assert_stats_close(got, from_gemm, RTOL[np.float32])


@pytest.mark.parametrize(("d", "k", "force_global"), [(32, 16, True), (32, 32, False)])
def test_full_tensor_core_pass_reads_u_from_global_memory(d, k, force_global):
    """full_pass_tc<D, false> (U fragments through L1: more components than shared memory
    holds) == the NumPy engine in float64."""
    import cupy

    X = make_data(12_007, d, min(k, 16), np.float32, seed=k)
    params = random_params(X, "full", k, 1, seed=d + k)
    shift = X.mean(0)
    want = numpy_stats(X, shift, "full", params)
    engine = _tc_engine()
    engine._full_tc_force_global_u = force_global
    data = engine.prepare(X, shift, "full")
    assert engine._full_tc_ok(data, k)
    assert not engine._full_tc_ok(data, 33)  # three groups: the GEMM path is faster
    assert engine._full_tc_u_in_smem(d, k) is False
    got = engine.accumulate(data, params.map(cupy.asarray), cupy.ones(1, bool))
    assert_stats_close(got, want, RTOL[np.float32])


def test_full_tensor_core_pass_is_accurate_for_a_far_tight_component():
    """A tight component far from the data mean (|mu / sigma| ~ 3e4): full_pass_tc centres its
    E-step and its statistics, so the covariance computed from them keeps its digits (uncentred
    float32 second moments would lose (|mu| / sigma)^2 ~ 1e9 to cancellation)."""
    import cupy

    from gmm_core._gaussian import cholesky_precisions, m_step

    rng = np.random.default_rng(6)
    X = make_data(40_000, 8, 5, np.float32, seed=6)
    far = 300.0 + 0.01 * rng.standard_normal((900, 8)) @ np.diag(np.linspace(1, 2, 8))
    X = np.concatenate([X, far.astype(np.float32)])
    shift = X.mean(0, dtype=np.float64)
    params = random_params(X, "full", 6, 1, seed=7)
    params.means[0, 5] = far.mean(0) - shift + 1e-3  # near the cluster's mean, not at it
    params.covariances[0, 5] = np.cov(far.T) * 1.5
    params.precisions_cholesky[0, 5] = cholesky_precisions(params.covariances[:, 5:6], "full", np)[
        0, 0
    ]
    want = numpy_stats(X, shift, "full", params)
    assert float(want.nk[0, 5]) == pytest.approx(900, rel=1e-3)  # the far points are its own
    engine = _tc_engine()
    data = engine.prepare(X, shift, "full")
    assert engine._full_tc_ok(data, 6)
    got = engine.accumulate(data, params.map(cupy.asarray), cupy.ones(1, bool))
    assert_stats_close(got, want, RTOL[np.float32])
    cov_got = cupy.asnumpy(m_step(got, "full", 1e-12, 1e-10, cupy).covariances[0, 5])
    cov_want = m_step(want, "full", 1e-12, 1e-10, np).covariances[0, 5]
    np.testing.assert_allclose(cov_got, cov_want, rtol=1e-3, atol=1e-3 * np.abs(cov_want).max())


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize(
    ("n", "d", "k", "cov", "dtype"),
    [
        (100_003, 2, 5, "diag", np.float32),  # Blobs-shaped: many blocks, K < KMAX
        (60_000, 3, 3, "spherical", np.float64),
        (150, 4, 3, "diag", np.float64),  # Iris-sized: one block
        (2_000, 1, 2, "diag", np.float32),
    ],
)
def test_small_kernel_matches_estimator_loop(n, d, k, cov, dtype):
    """diag_em_small (whole iterations per launch, blocks ordered by flags) == the NumPy loop."""
    import cupy

    from gmm_core._cupy import CupyEngine

    X = make_data(n, d, k, dtype, seed=3)
    params = random_params(X, cov, k, 1, seed=5)
    shift = X.mean(0, dtype=np.float64)
    eps = 10 * float(np.finfo(dtype).eps)
    tol = 1e-6 if dtype == np.float64 else 0.0  # float32: fixed iterations (see above)
    kw = dict(reg_covar=1e-6, eps=eps, tol=tol, max_iter=45)
    small = CupyEngine(graph_steps=7)  # 45 iterations: 7 launches, the last one cut short
    data = small.prepare(X, shift, cov)
    got = small.run_em(data, params.map(cupy.asarray), **kw)
    assert got is not None and small.last_run_info["small_kernel"]
    again = small.run_em(data, params.map(cupy.asarray), **kw)
    np.testing.assert_array_equal(again[1], got[1])  # bitwise repeatable
    passes = CupyEngine(small_kernel=False)
    want = passes.run_em(passes.prepare(X, shift, cov), params.map(cupy.asarray), **kw)
    assert want is not None and not passes.last_run_info["small_kernel"]
    init = init_kwargs(params, 0, shift)
    ref = GaussianMixture(k, covariance_type=cov, tol=tol, max_iter=45, backend="numpy", **init)
    ref = ref.fit(X)
    rtol = 2e-4 if dtype == np.float32 else 1e-9
    _, history, n_iter, converged = got
    assert n_iter[0] == ref.n_iter_ == want[2][0]
    assert bool(converged[0]) == ref.converged_
    np.testing.assert_allclose(history[: n_iter[0], 0], ref.lower_bounds_, rtol=rtol)
    np.testing.assert_allclose(history, want[1], rtol=rtol)
    assert np.isnan(history[n_iter[0] :, 0]).all()
    for name in ("means", "covariances", "weights"):
        g = cupy.asnumpy(getattr(got[0], name))[0] + (shift if name == "means" else 0)
        np.testing.assert_allclose(g, getattr(ref, name + "_"), rtol=rtol * 10, atol=rtol * 10)


def test_small_kernel_only_for_one_restart_and_few_components():
    """Two restarts, or components/statistics beyond its registers: the pass loop instead."""
    import cupy

    from gmm_core._cupy import CupyEngine

    engine = CupyEngine()
    for n_restarts, d, k in ((2, 2, 5), (1, 2, 9), (1, 12, 3)):
        X = make_data(5_000, d, k, np.float32)
        params = random_params(X, "diag", k, n_restarts)
        data = engine.prepare(X, X.mean(0), "diag")
        out = engine.run_em(
            data, params.map(cupy.asarray), reg_covar=1e-6, eps=1e-6, tol=0.0, max_iter=3
        )
        assert out is not None and not engine.last_run_info["small_kernel"], (n_restarts, d, k)


@pytest.mark.parametrize("small_kernel", ["1", "0"])
def test_ill_defined_covariance_raises_from_the_device_loop(small_kernel, monkeypatch):
    """A failed M-step on the device raises scikit-learn's error, as the NumPy backend does."""
    X, kw = collapsing_fit()
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        GaussianMixture(backend="numpy", reg_covar=0.0, **kw).fit(X)
    monkeypatch.setenv("GMM_CORE_SMALL_KERNEL", small_kernel)
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        GaussianMixture(backend="cupy", reg_covar=0.0, **kw).fit(X)


@pytest.mark.parametrize(
    ("d", "dtype"), [(5, np.float64), (32, np.float32), (1, np.float64), (48, np.float32)]
)
def test_full_covariance_kernels_match_cupy_operations(d, dtype):
    """full_mstep and full_constants (em_full.cu) = the CuPy operations they replace."""
    import cupy

    from gmm_core._cupy import CupyEngine
    from gmm_core._gaussian import Stats, m_step

    X = make_data(3000, d, 4, dtype)
    params = random_params(X, "full", 4, 2)
    engine = CupyEngine()
    data = engine.prepare(X, X.mean(0), "full")
    stats = engine.accumulate(data, params.map(cupy.asarray), cupy.ones(2, bool))
    got = engine.m_step(stats, "full", 1e-6, 1e-10)
    want = m_step(stats, "full", 1e-6, 1e-10, cupy, check=False)
    assert got is not None
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        g, w = cupy.asnumpy(getattr(got, name)), cupy.asnumpy(getattr(want, name))
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12 * np.abs(w).max(), err_msg=name)
    on_device = engine._gemm_constants(data, got)
    engine._full_on_device = False
    assert engine.m_step(stats, "full", 1e-6, 1e-10) is None
    operations = engine._gemm_constants(data, got)
    rtol = 1e-5 if dtype == np.float32 else 1e-10
    for key in ("M", "const"):
        g, w = cupy.asnumpy(on_device[key]), cupy.asnumpy(operations[key])
        assert g.shape == w.shape and g.dtype == w.dtype == dtype, key
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * np.abs(w).max(), err_msg=key)
    # a covariance that is not positive definite: NaN factors, as CuPy's Cholesky gives
    engine._full_on_device = True
    bad = Stats(stats.loglik, stats.nk, stats.sx, -stats.sxx, stats.n_samples)
    failed = engine.m_step(bad, "full", 0.0, 1e-10)
    assert failed is not None and not bool(cupy.isfinite(failed.precisions_cholesky).all())
