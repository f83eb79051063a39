"""CuPy engine vs NumPy engine for the estimator and the generic passes: fits, streaming,
scoring, bad input (needs a usable CUDA GPU)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from gpu_fixtures import (
    RTOL,
    assert_stats_close,
    init_kwargs,
    make_data,
    numpy_stats,
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


def _engines():
    from gmm_core._cupy import CupyEngine
    from gmm_core._numpy_engine import NumpyEngine

    return NumpyEngine(), CupyEngine()


def _on_host(gm):
    """A copy of a fitted model that scores on the host (``backend='numpy'``)."""
    ref = copy.deepcopy(gm)
    ref.backend = "numpy"
    return ref


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
    want = numpy_stats(X, shift, cov, params)
    data = cp_engine.prepare(X, shift, cov)
    got = cp_engine.accumulate(data, params.map(cupy.asarray), cupy.ones(n_restarts, bool))
    assert_stats_close(got, want, RTOL[dtype])


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
    assert_stats_close(
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
    reference = CupyEngine().accumulate(
        CupyEngine().prepare(X, X.mean(0), "diag"), params, cupy.ones(1, bool)
    )
    cupy.cuda.Device().synchronize()
    engine = CupyEngine(memory_budget_bytes=1 << 30, chunk_rows=50_000)
    # a pool of its own: the default pool's free fragments (split blocks of earlier tests that
    # free_all_blocks cannot release) could hold the upload whatever its limit says
    own = cupy.cuda.MemoryPool()
    own.set_limit(size=10_000_000)  # the upload (12.8 MB) cannot fit; 50,000-row chunks can
    with cupy.cuda.using_allocator(own.malloc):
        data = engine.prepare(X, X.mean(0), "diag")
    assert not data.resident
    assert_stats_close(engine.accumulate(data, params, cupy.ones(1, bool)), reference, 1e-9)


@pytest.mark.parametrize("cov", ["spherical", "diag"])
def test_more_restarts_than_a_statistics_row_has_numbers(cov):
    """n_init above 1 + D + Q (the pass output's row of nk, sx, sxx): the restarts' log-likelihoods
    are one row wider than the pitch of the others, which its copy once refused (the k-means
    init's last pass raised for spherical n_init=5 on two features)."""
    X = make_data(3000, 2, 3, np.float32, seed=3)
    kwargs = dict(n_components=3, covariance_type=cov, n_init=8, random_state=0, max_iter=30)
    gpu = GaussianMixture(backend="cupy", **kwargs).fit(X)
    ref = GaussianMixture(backend="numpy", **kwargs).fit(X)
    assert gpu.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-3)


@pytest.mark.parametrize("n_init", [1, 3])
def test_verbose_fit_prints_scikit_learns_blocks(capsys, n_init):
    """verbose=2 runs the generic loop with the CuPy tracker, which had no ``changes`` method
    (AttributeError at the first printed iteration, never run on a GPU before)."""
    X = make_data(3000, 3, 3, np.float32, seed=4)
    GaussianMixture(
        3, backend="cupy", verbose=2, verbose_interval=1, max_iter=5, n_init=n_init,
        random_state=0,
    ).fit(X)  # fmt: skip
    out = capsys.readouterr().out
    assert out.count("Initialization ") == 2 * n_init and "ll change inf" in out


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
    want = numpy_stats(X, shift, "diag", params)
    got = cp_engine.accumulate(
        cp_engine.prepare(X, shift, "diag"), params.map(cupy.asarray), cupy.ones(4, bool)
    )
    assert len(cp_engine._plans(cp_engine.prepare(X, shift, "diag"), 4, 100)) > 1
    assert_stats_close(got, want, 1e-10)


def test_wide_diag_uses_gemm_path():
    import cupy

    X = make_data(2000, 40, 3, np.float32, seed=4)  # 40 features: beyond the fused kernel
    params = random_params(X, "diag", 3, 2)
    cp_engine = _engines()[1]
    shift = X.mean(0)
    want = numpy_stats(X, shift, "diag", params)
    data = cp_engine.prepare(X, shift, "diag")
    assert not cp_engine._fused_ok(data, 2, 3)
    got = cp_engine.accumulate(data, params.map(cupy.asarray), cupy.ones(2, bool))
    assert_stats_close(got, want, 1e-4)


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


def test_a_cupy_fit_reads_its_data_once_for_the_checks(monkeypatch):
    """Validation and the moments share one column_stats pass over CuPy data (a fit read it
    twice: 2 x 240 us on the 10M x 16 telemetry, ncu 2026-12-04), and bad data are still
    refused with the same errors."""
    import cupy

    from gmm_core._cupy import checks

    shapes = []
    real = checks.column_stats

    def counted(X):
        shapes.append(X.shape)
        return real(X)

    monkeypatch.setattr(checks, "column_stats", counted)
    X = cupy.asarray(make_data(2000, 3, 2, np.float32))
    GaussianMixture(2, backend="cupy", random_state=0).fit(X)
    assert shapes == [(2000, 3)]
    for bad in (cupy.nan, cupy.inf):
        Xb = X.copy()
        Xb[5, 0] = bad
        with pytest.raises(ValueError, match="NaN or infinity"):
            GaussianMixture(2, backend="cupy").fit(Xb)
    with pytest.raises(ValueError, match="too large for float32"):  # squares would overflow
        GaussianMixture(2, backend="cupy").fit(X * np.float32(1e19))


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

    from gmm_core import _scoring

    X = make_data(20_000, 4, 3, np.float64, seed=5)
    gm = GaussianMixture(3, covariance_type=cov, random_state=0, backend="cupy").fit(X)
    ref = _on_host(gm)
    assert not gm._score_on_gpu(X)  # 60k cells: below the default threshold
    monkeypatch.setattr(_scoring, "GPU_SCORING_MIN_CELLS", 1000)
    assert gm._score_on_gpu(X) and not ref._score_on_gpu(X)  # backend="numpy" stays on the host
    calls = []
    real = _scoring.get_engine
    monkeypatch.setattr(_scoring, "get_engine", lambda name: calls.append(name) or real(name))
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


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_component_left_without_samples_sits_at_the_origin_as_on_numpy(cov, dtype):
    """The device M-steps (the device loop's, ``full_mstep``, the host path's) put the mean of
    a component with no responsibility where scikit-learn and the NumPy backend do: the data's
    origin, not the data mean (a fourth component started far from three clusters)."""
    rng = np.random.default_rng(0)
    centres = np.array([[50.0, -20.0], [55.0, -15.0], [60.0, -20.0]])
    X = (np.repeat(centres, 300, axis=0) + rng.normal(0.0, 0.5, (900, 2))).astype(dtype)
    kw = dict(covariance_type=cov, means_init=np.vstack([centres, [[500.0, 500.0]]]))
    ref = GaussianMixture(4, backend="numpy", **kw).fit(X)
    got = GaussianMixture(4, backend="cupy", **kw).fit(X)
    assert ref.weights_[3] < 1e-8 and got.weights_[3] < 1e-8  # the case: component 3 empty
    np.testing.assert_allclose(got.means_, ref.means_, rtol=1e-4, atol=1e-3)
    assert np.abs(got.means_[3]).max() < 1e-3  # the origin, not the data mean (55, -18.3)
