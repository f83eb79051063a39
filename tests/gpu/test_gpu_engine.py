"""CuPy engine vs NumPy engine, from the same test bodies (needs a usable CUDA GPU)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from gpu_fixtures import (
    collapsing_fit,
    init_kwargs,
    make_data,
    random_params,
    scikit_learn_start,
)

from gmm_core import GaussianMixture, align_components
from gmm_core._engine import cupy_unavailable_reason

_REASON = cupy_unavailable_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_REASON is not None, reason=f"needs a usable CUDA GPU: {_REASON}"),
]

COV_TYPES = ("full", "tied", "diag", "spherical")
# relative tolerance of float64 statistics per data dtype (float32 work accumulated in float64)
RTOL = {np.float32: 2e-5, np.float64: 1e-10}


def _engines():
    from gmm_core._cupy import CupyEngine
    from gmm_core._numpy_engine import NumpyEngine

    return NumpyEngine(), CupyEngine()


def _on_host(gm):
    """A copy of a fitted model that scores on the host (``backend='numpy'``)."""
    ref = copy.deepcopy(gm)
    ref.backend = "numpy"
    return ref


def _numpy_stats(X, shift, cov, params):
    """Sufficient statistics of one pass from the NumPy engine (float64): the reference."""
    np_engine = _engines()[0]
    n_restarts = params.weights.shape[0]
    return np_engine.accumulate(np_engine.prepare(X, shift, cov), params, np.ones(n_restarts, bool))


def _assert_stats_close(got, want, rtol, scales=None):
    """Every statistic within ``rtol`` of the reference, relative to its largest entry (or to
    ``scales[name]`` where given: a sum that cancels to ~0 is compared with its terms' size)."""
    import cupy

    for name in ("loglik", "nk", "sx", "sxx"):
        g = cupy.asnumpy(getattr(got, name))
        w = cupy.asnumpy(getattr(want, name))
        assert g.shape == w.shape, name
        scale = (scales or {}).get(name, np.abs(w).max() + 1e-300)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale, err_msg=name)
    assert got.n_samples == want.n_samples


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("n_restarts", [1, 3])
def test_accumulate_matches_numpy(cov, dtype, n_restarts):
    import cupy

    X = make_data(5000, 5, 4, dtype)
    params = random_params(X, cov, 4, n_restarts)
    cp_engine = _engines()[1]
    if cov in ("diag", "spherical") and n_restarts == 3:  # the shared-accumulator variant
        from gmm_core._cupy import CupyEngine

        cp_engine = CupyEngine(shared_accumulators=True)
    shift = X.mean(0)
    want = _numpy_stats(X, shift, cov, params)
    data = cp_engine.prepare(X, shift, cov)
    got = cp_engine.accumulate(data, params.map(cupy.asarray), cupy.ones(n_restarts, bool))
    _assert_stats_close(got, want, RTOL[dtype])


@pytest.mark.parametrize("cov", ["diag", "spherical", "full"])
def test_streamed_chunks_match_resident(cov):
    import cupy

    from gmm_core._cupy import CupyEngine

    X = make_data(20_003, 6, 5, np.float32, seed=3)
    params = random_params(X, cov, 5, 2).map(cupy.asarray)
    shift = X.mean(0)
    resident = CupyEngine()
    streamed = CupyEngine(memory_budget_bytes=100_000, chunk_rows=3_000)
    d_res = resident.prepare(X, shift, cov)
    d_str = streamed.prepare(X, shift, cov)
    assert d_res.resident and not d_str.resident and len(d_str.chunks) == 7
    active = cupy.ones(2, bool)
    _assert_stats_close(
        streamed.accumulate(d_str, params, active), resident.accumulate(d_res, params, active), 1e-6
    )
    np.testing.assert_allclose(
        cupy.asnumpy(streamed.weighted_log_prob(d_str, params.take(0))),
        cupy.asnumpy(resident.weighted_log_prob(d_res, params.take(0))),
        rtol=1e-5,
    )


def test_out_of_memory_on_upload_streams_instead():
    import cupy

    from gmm_core._cupy import CupyEngine

    X = make_data(200_000, 8, 3, np.float64)  # 12.8 MB
    params = random_params(X, "diag", 3, 1).map(cupy.asarray)
    pool = cupy.get_default_memory_pool()
    reference = CupyEngine().accumulate(
        CupyEngine().prepare(X, X.mean(0), "diag"), params, cupy.ones(1, bool)
    )
    cupy.cuda.Device().synchronize()
    engine = CupyEngine(memory_budget_bytes=1 << 30, chunk_rows=50_000)
    pool.free_all_blocks()
    pool.set_limit(size=pool.total_bytes() + 8_000_000)  # the upload (12.8 MB) cannot fit
    try:
        data = engine.prepare(X, X.mean(0), "diag")
    finally:
        pool.set_limit(size=0)
    assert not data.resident
    _assert_stats_close(engine.accumulate(data, params, cupy.ones(1, bool)), reference, 1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cov", COV_TYPES)
def test_fit_matches_numpy_backend(cov, dtype):
    """The GPU fit = the NumPy fit from the same start (scikit-learn's k-means init, taken
    from a max_iter=0 fit on the host: the GPU draws its own initialisation)."""
    X = make_data(4000, 4, 3, dtype, seed=5)
    kwargs = dict(n_components=3, covariance_type=cov, max_iter=60)
    kwargs.update(scikit_learn_start(X, 3, cov))
    ref = GaussianMixture(backend="numpy", **kwargs).fit(X)
    gpu = GaussianMixture(backend="cupy", **kwargs).fit(X)
    assert gpu.backend_ == "cupy"
    rtol = 1e-4 if dtype == np.float32 else 1e-8
    assert gpu.lower_bound_ == pytest.approx(ref.lower_bound_, rel=rtol)
    # compare models up to a permutation of the components (as a fit from another start would)
    aligned = align_components(ref, gpu).aligned
    np.testing.assert_allclose(aligned.means_, ref.means_, rtol=rtol * 10, atol=rtol * 10)
    np.testing.assert_allclose(aligned.weights_, ref.weights_, rtol=rtol * 10, atol=rtol * 10)
    assert isinstance(gpu.means_, np.ndarray) and gpu.means_.dtype == dtype
    assert (aligned.predict(X) == ref.predict(X)).mean() >= 0.999
    for a, b in zip(gpu.restart_lower_bounds_, ref.restart_lower_bounds_, strict=True):
        n = min(len(a), len(b))
        np.testing.assert_allclose(a[:n], b[:n], rtol=rtol)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("cov", ["diag", "spherical"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_loop_matches_estimator_loop(cov, dtype):
    """run_em (kernels + CUDA graph) == the estimator's loop at the same initialisation."""
    import cupy

    from gmm_core._cupy import CupyEngine

    X = make_data(30_000, 7, 6, dtype, seed=7)
    n_restarts, k = 4, 6
    params = random_params(X, cov, k, n_restarts, seed=11)
    shift = X.mean(0, dtype=np.float64)
    eps = 10 * float(np.finfo(dtype).eps)
    # float32 lower bounds differ in the last digits, so a tol test could flip an iteration:
    # compare a fixed number of iterations there, convergence itself in float64
    tol = 1e-4 if dtype == np.float64 else 0.0
    engine = CupyEngine(graph_steps=8)
    data = engine.prepare(X, shift, cov)
    out = engine.run_em(
        data, params.map(cupy.asarray), reg_covar=1e-6, eps=eps, tol=tol, max_iter=40
    )
    assert out is not None
    got_params, history, n_iter, converged = out
    # a second fit replays the cached CUDA graph from reset state: the same result
    again = engine.run_em(
        data, params.map(cupy.asarray), reg_covar=1e-6, eps=eps, tol=tol, max_iter=40
    )
    np.testing.assert_array_equal(again[1], history)
    np.testing.assert_array_equal(cupy.asnumpy(again[0].means), cupy.asnumpy(got_params.means))
    rtol = 2e-4 if dtype == np.float32 else 1e-9
    for r in range(n_restarts):
        ref = GaussianMixture(
            k,
            covariance_type=cov,
            tol=tol,
            max_iter=40,
            backend="numpy",
            **init_kwargs(params, r, shift),
        ).fit(X)
        assert n_iter[r] == ref.n_iter_
        assert bool(converged[r]) == ref.converged_
        np.testing.assert_allclose(history[: n_iter[r], r], ref.lower_bounds_, rtol=rtol)
        assert np.isnan(history[n_iter[r] :, r]).all()
        np.testing.assert_allclose(
            cupy.asnumpy(got_params.means[r]) + shift, ref.means_, rtol=rtol * 10, atol=rtol * 10
        )


def test_many_restarts_and_components_split_into_groups():
    """R*K above one block's rows (here 4 x 100) runs as restart groups with the same result."""
    import cupy

    X = make_data(3000, 3, 100, np.float64, seed=2)
    params = random_params(X, "diag", 100, 4)
    cp_engine = _engines()[1]
    shift = X.mean(0)
    want = _numpy_stats(X, shift, "diag", params)
    got = cp_engine.accumulate(
        cp_engine.prepare(X, shift, "diag"), params.map(cupy.asarray), cupy.ones(4, bool)
    )
    assert len(cp_engine._plans(cp_engine.prepare(X, shift, "diag"), 4, 100)) > 1
    _assert_stats_close(got, want, 1e-10)


def test_wide_diag_uses_gemm_path():
    import cupy

    X = make_data(2000, 40, 3, np.float32, seed=4)  # 40 features: beyond the fused kernel
    params = random_params(X, "diag", 3, 2)
    cp_engine = _engines()[1]
    shift = X.mean(0)
    want = _numpy_stats(X, shift, "diag", params)
    data = cp_engine.prepare(X, shift, "diag")
    assert not cp_engine._fused_ok(data, 2, 3)
    got = cp_engine.accumulate(data, params.map(cupy.asarray), cupy.ones(2, bool))
    _assert_stats_close(got, want, 1e-4)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_predict_paths_on_cupy_input(cov):
    import cupy

    X = make_data(3000, 3, 3, np.float64, seed=9)
    gm = GaussianMixture(3, covariance_type=cov, random_state=0, backend="cupy").fit(X)
    ref = _on_host(gm)  # the same fitted model, scored by the NumPy path
    Xd = cupy.asarray(X)
    labels = gm.predict(Xd)
    assert isinstance(labels, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(labels), ref.predict(X))
    np.testing.assert_allclose(cupy.asnumpy(gm.predict_proba(Xd)), ref.predict_proba(X), atol=1e-7)
    np.testing.assert_allclose(cupy.asnumpy(gm.score_samples(Xd)), ref.score_samples(X), rtol=1e-9)
    assert gm.score(X) == pytest.approx(ref.score(X), rel=1e-9)
    # fitting on a CuPy array gives the same model as on the host copy
    on_device = GaussianMixture(3, covariance_type=cov, random_state=0, backend="cupy").fit(Xd)
    np.testing.assert_allclose(on_device.means_, gm.means_, rtol=1e-9)


def test_bad_input_gets_clear_errors():
    import cupy

    from gmm_core._cupy import CupyEngine

    X = make_data(500, 3, 2, np.float64)
    Xd = cupy.asarray(X)
    Xd[3, 1] = cupy.nan
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixture(2, backend="cupy").fit(Xd)
    gm = GaussianMixture(2, backend="cupy", random_state=0).fit(X)
    with pytest.raises(ValueError, match="features"):
        gm.predict(cupy.asarray(X[:, :2]))
    with pytest.raises(ValueError, match="n_components"):
        GaussianMixture(600, backend="cupy").fit(X)
    with pytest.raises(TypeError, match="float32 or float64"):
        CupyEngine().prepare(X.astype(np.float16), None, "diag")
    # collapsed data still fit thanks to reg_covar
    const = np.ones((200, 2))
    on_gpu = GaussianMixture(2, covariance_type="diag", backend="cupy", random_state=0).fit(const)
    on_cpu = GaussianMixture(2, covariance_type="diag", backend="numpy", random_state=0).fit(const)
    np.testing.assert_allclose(on_gpu.covariances_, on_cpu.covariances_, rtol=1e-9)
    assert on_gpu.lower_bound_ == pytest.approx(on_cpu.lower_bound_, rel=1e-9)


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_large_numpy_input_is_scored_on_the_gpu(cov, monkeypatch):
    """NumPy input above the cell threshold runs on the GPU and comes back as NumPy."""
    import cupy

    from gmm_core import mixture

    X = make_data(20_000, 4, 3, np.float64, seed=5)
    gm = GaussianMixture(3, covariance_type=cov, random_state=0, backend="cupy").fit(X)
    ref = _on_host(gm)
    assert not gm._score_on_gpu(X)  # 60k cells: below the default threshold
    monkeypatch.setattr(mixture, "GPU_SCORING_MIN_CELLS", 1000)
    assert gm._score_on_gpu(X) and not ref._score_on_gpu(X)  # backend="numpy" stays on the host
    calls = []
    real = mixture.get_engine
    monkeypatch.setattr(mixture, "get_engine", lambda name: calls.append(name) or real(name))
    labels = gm.predict(X)
    assert calls == ["cupy"] and isinstance(labels, np.ndarray)
    np.testing.assert_array_equal(labels, ref.predict(X))
    proba = gm.predict_proba(X)
    assert isinstance(proba, np.ndarray) and not isinstance(proba, cupy.ndarray)
    np.testing.assert_allclose(proba, ref.predict_proba(X), atol=1e-7)
    np.testing.assert_allclose(gm.score_samples(X), ref.score_samples(X), rtol=1e-9)
    assert isinstance(gm.means_, np.ndarray)


def test_full_covariance_loop_checks_positive_definiteness_at_sync_points():
    """The CuPy loop of full covariance defers the PD check but still refuses to go on."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3)) + 8.0
    X[:200] = 1.0  # one collapsed cluster: singular without reg_covar, found by the first M-step
    kw = dict(
        covariance_type="full",
        max_iter=20,
        means_init=[[1.0, 1.0, 1.0], [8.0, 8.0, 8.0]],
        precisions_init=np.stack([np.eye(3)] * 2),
    )
    for backend in ("numpy", "cupy"):
        with pytest.raises(ValueError, match="increase reg_covar"):
            GaussianMixture(2, reg_covar=0.0, backend=backend, **kw).fit(X)
    gm = GaussianMixture(2, backend="cupy", **kw).fit(X)
    ref = GaussianMixture(2, backend="numpy", **kw).fit(X)
    np.testing.assert_allclose(gm.means_, ref.means_, rtol=1e-7, atol=1e-9)


def test_host_backend_fits_a_cupy_array():
    """backend='numpy' given a CuPy array copies it to the host (same model as NumPy input)."""
    import cupy

    X = make_data(2000, 3, 3, np.float64, seed=3)
    on_host = GaussianMixture(3, random_state=0, backend="numpy").fit(X)
    from_device = GaussianMixture(3, random_state=0, backend="numpy").fit(cupy.asarray(X))
    assert from_device.backend_ == "numpy"
    np.testing.assert_array_equal(from_device.means_, on_host.means_)


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
    want = _numpy_stats(X, shift, "diag", params)
    engine = _tc_engine()
    data = engine.prepare(X, shift, "diag")
    plans = engine._plans(data, n_restarts, k)
    assert all(p.tc_mt == -(-k // 16) for p in plans)  # the tensor-core pass, not diag_pass
    assert sum(p.r1 - p.r0 for p in plans) == n_restarts
    active = cupy.ones(n_restarts, bool)
    got = engine.accumulate(data, params.map(cupy.asarray), active)
    _assert_stats_close(got, want, RTOL[np.float32])
    # and the SIMT pass of the same data agrees (its restart groups differ: 3 restarts in one
    # group, which once overran its shared memory)
    simt = CupyEngine(tensor_cores=False)
    d_simt = simt.prepare(X, shift, "diag")
    assert all(p.tc_mt == 0 for p in simt._plans(d_simt, n_restarts, k))
    _assert_stats_close(simt.accumulate(d_simt, params.map(cupy.asarray), active), want, 2e-5)


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
    want = _numpy_stats(X, shift, "diag", params)
    assert float(want.nk[0, 7]) == pytest.approx(800, rel=1e-3)  # the far points are its own
    engine = _tc_engine()
    data = engine.prepare(X, shift, "diag")
    got = engine.accumulate(data, params.map(cupy.asarray), cupy.ones(1, bool))
    _assert_stats_close(got, want, RTOL[np.float32])


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
    _assert_stats_close(
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
    want = _numpy_stats(X, shift, "full", params)
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
    _assert_stats_close(got, want, RTOL[np.float32], scales)
    assert data._features is None  # no cached quadratic features: the GEMM path did not run
    gemm = CupyEngine(tensor_cores=False)
    d_gemm = gemm.prepare(X, shift, "full")
    assert not gemm._full_tc_ok(d_gemm, k)
    if k > 1:  # (one component: sum r x is the centred data's sum, ~0, where two float32 paths
        # differ by their rounding; the float64 reference above is the check there)
        from_gemm = gemm.accumulate(d_gemm, params.map(cupy.asarray), active)
        _assert_stats_close(got, from_gemm, RTOL[np.float32])


@pytest.mark.parametrize(("d", "k", "force_global"), [(32, 16, True), (32, 32, False)])
def test_full_tensor_core_pass_reads_u_from_global_memory(d, k, force_global):
    """full_pass_tc<D, false> (U fragments through L1: more components than shared memory
    holds) == the NumPy engine in float64."""
    import cupy

    X = make_data(12_007, d, min(k, 16), np.float32, seed=k)
    params = random_params(X, "full", k, 1, seed=d + k)
    shift = X.mean(0)
    want = _numpy_stats(X, shift, "full", params)
    engine = _tc_engine()
    engine._full_tc_force_global_u = force_global
    data = engine.prepare(X, shift, "full")
    assert engine._full_tc_ok(data, k)
    assert not engine._full_tc_ok(data, 33)  # three groups: the GEMM path is faster
    assert engine._full_tc_u_in_smem(d, k) is False
    got = engine.accumulate(data, params.map(cupy.asarray), cupy.ones(1, bool))
    _assert_stats_close(got, want, RTOL[np.float32])


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
    want = _numpy_stats(X, shift, "full", params)
    assert float(want.nk[0, 5]) == pytest.approx(900, rel=1e-3)  # the far points are its own
    engine = _tc_engine()
    data = engine.prepare(X, shift, "full")
    assert engine._full_tc_ok(data, 6)
    got = engine.accumulate(data, params.map(cupy.asarray), cupy.ones(1, bool))
    _assert_stats_close(got, want, RTOL[np.float32])
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
