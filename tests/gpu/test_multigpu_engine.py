"""Multi-GPU engine vs the one-GPU CuPy engine, from the same test bodies (needs >= 2 GPUs).

Row shards on several devices must give the statistics, the EM histories and the fitted model
of one device (up to float64 summation order). The first test runs on any machine: without a
GPU, ``backend="multigpu"`` is a clear error naming the fix.
"""

from __future__ import annotations

import numpy as np
import pytest
from gpu_fixtures import collapsing_fit, make_data, random_params, scikit_learn_start

from gmm_core import GaussianMixture, align_components
from gmm_core._engine import BACKENDS, cupy_unavailable_reason, get_engine

_REASON = cupy_unavailable_reason()


def _n_gpus() -> int:
    if _REASON is not None:
        return 0
    import cupy

    return int(cupy.cuda.runtime.getDeviceCount())


N_GPUS = _n_gpus()
needs_two_gpus = pytest.mark.skipif(
    N_GPUS < 2,
    reason=f"needs >= 2 CUDA GPUs, found {N_GPUS}" + (f" ({_REASON})" if _REASON else ""),
)
COV_TYPES = ("full", "tied", "diag", "spherical")
RTOL = {np.float32: 2e-5, np.float64: 1e-10}


def _data(n: int, d: int, k: int, dtype, seed: int = 0) -> np.ndarray:
    return make_data(n, d, k, dtype, seed, spread=4.0)


def _assert_close(got, want, rtol, name=""):
    import cupy

    g, w = cupy.asnumpy(got), cupy.asnumpy(want)
    assert g.shape == w.shape, name
    scale = np.abs(w).max() + 1e-300
    np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale, err_msg=name)


def test_backend_names_and_clear_error_without_gpus():
    assert "multigpu" in BACKENDS and "dask" in BACKENDS
    if _REASON is None:
        pytest.skip("a GPU is usable here; the no-GPU error path cannot be shown")
    with pytest.raises(RuntimeError, match="backend='multigpu' cannot run.*backend='auto'"):
        get_engine("multigpu")
    X = _data(200, 3, 2, np.float64)
    with pytest.raises(RuntimeError, match="multigpu"):
        GaussianMixture(2, backend="multigpu").fit(X)


@pytest.mark.gpu
@needs_two_gpus
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cov", COV_TYPES)
def test_accumulate_matches_one_gpu(cov, dtype):
    import cupy

    from gmm_core._cupy import CupyEngine
    from gmm_core._multigpu_engine import MultiGpuEngine

    X = _data(30_001, 6, 4, dtype)  # odd: uneven shards
    shift = X.mean(0)
    params = random_params(X, cov, 4, n_restarts=2)
    one, many = CupyEngine(), MultiGpuEngine()
    assert len(many.devices) == N_GPUS
    d1, dn = one.prepare(X, shift, cov), many.prepare(X, shift, cov)
    assert dn.rows == [b - a for a, b in many.shard_bounds(len(X))] and sum(dn.rows) == len(X)
    p_dev = params.map(cupy.asarray)
    active = cupy.ones(2, dtype=bool)
    want = one.accumulate(d1, p_dev, active)
    for _ in range(2):  # a second pass reuses the engines' buffers
        got = many.accumulate(dn, params.map(many.asarray), many.asarray(np.ones(2, bool)))
    assert got.nk.device.id == many.primary
    for name in ("loglik", "nk", "sx", "sxx"):
        _assert_close(getattr(got, name), getattr(want, name), RTOL[dtype], name)
    assert got.n_samples == len(X)
    _assert_close(
        many.weighted_log_prob(dn, params.take(0).map(many.asarray)),
        one.weighted_log_prob(d1, p_dev.take(0)),
        RTOL[dtype] * 10,
        "weighted_log_prob",
    )


@pytest.mark.gpu
@needs_two_gpus
@pytest.mark.parametrize("cov", ["diag", "full"])
def test_estimator_same_model_as_one_gpu(cov):
    X = _data(60_000, 5, 4, np.float64)
    # the one-GPU engine draws its initialisation on the device, the multi-GPU one on the host
    # (as scikit-learn): compare the EM from the same start
    kw = dict(n_components=4, covariance_type=cov, tol=1e-6, **scikit_learn_start(X, 4, cov))
    ref = GaussianMixture(backend="cupy", **kw).fit(X)
    got = GaussianMixture(backend="multigpu", **kw).fit(X)
    assert got.backend_ == "multigpu"
    # every restart follows the same path (up to float64 summation order) ...
    assert [len(b) for b in got.restart_lower_bounds_] == [
        len(b) for b in ref.restart_lower_bounds_
    ]
    for mine, theirs in zip(got.restart_lower_bounds_, ref.restart_lower_bounds_, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-10)
    # ... but restarts that reach the same optimum with permuted labels tie on the lower bound
    # to rounding, so the winner may be another restart: compare models up to a permutation
    assert got.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-10)
    alignment = align_components(ref, got)
    assert alignment.costs.max() < 1e-8
    aligned = alignment.aligned
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(aligned, name), getattr(ref, name), rtol=1e-8, atol=1e-8)
    np.testing.assert_array_equal(aligned.predict(X), ref.predict(X))


@pytest.mark.gpu
@needs_two_gpus
@pytest.mark.parametrize("cov", ["diag", "spherical"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_loop_matches_one_gpu_run_em(cov, dtype):
    """run_em over shards (all-reduced pass outputs, M-step on every device) = one GPU's."""
    import cupy

    from gmm_core._cupy import CupyEngine
    from gmm_core._multigpu_engine import MultiGpuEngine

    X = _data(50_001, 8, 5, dtype)
    shift = X.mean(0)
    params = random_params(X, cov, 5, n_restarts=3)
    eps = 10 * float(np.finfo(dtype).eps)
    # float32: fixed iterations (tile sums differ at shard edges; no tol comparison to flip)
    kw = dict(reg_covar=1e-6, eps=eps, tol=1e-5 if dtype == np.float64 else 0.0, max_iter=60)
    one = CupyEngine()
    want = one.run_em(one.prepare(X, shift, cov), params.map(cupy.asarray), **kw)
    many = MultiGpuEngine(check_every=7)
    got = many.run_em(many.prepare(X, shift, cov), params.map(many.asarray), **kw)
    assert want is not None and got is not None
    (p_w, hist_w, it_w, conv_w), (p_g, hist_g, it_g, conv_g) = want, got
    np.testing.assert_array_equal(it_g, it_w)
    np.testing.assert_array_equal(conv_g, conv_w)
    assert np.isnan(hist_g).tolist() == np.isnan(hist_w).tolist()
    np.testing.assert_allclose(hist_g, hist_w, rtol=RTOL[dtype])
    for name in ("weights", "means", "covariances"):
        _assert_close(getattr(p_g, name), getattr(p_w, name), RTOL[dtype] * 100, name)


@pytest.mark.gpu
@needs_two_gpus
def test_device_arrays_and_presharded_input():
    """A CuPy array on one device is split peer-to-peer; per-device shards are used as they are."""
    import cupy

    from gmm_core._multigpu_engine import MultiGpuEngine

    X = _data(20_000, 4, 3, np.float32)
    shift = X.mean(0)
    params = random_params(X, "diag", 3, n_restarts=1)
    many = MultiGpuEngine()
    one_active = many.asarray(np.ones(1, bool))
    from_host = many.accumulate(
        many.prepare(X, shift, "diag"), params.map(many.asarray), one_active
    )
    with cupy.cuda.Device(many.primary):
        X_dev = cupy.asarray(X)
    from_device = many.accumulate(
        many.prepare(X_dev, shift, "diag"), params.map(many.asarray), one_active
    )
    shards = []
    for device, (a, b) in zip(many.devices, many.shard_bounds(len(X)), strict=True):
        with cupy.cuda.Device(device):
            shards.append(cupy.asarray(X[a:b]))
    presharded = many.accumulate(
        many.prepare(shards, shift, "diag"), params.map(many.asarray), one_active
    )
    for name in ("loglik", "nk", "sx", "sxx"):
        _assert_close(getattr(from_device, name), getattr(from_host, name), 1e-12, name)
        _assert_close(getattr(presharded, name), getattr(from_host, name), 1e-12, name)
    with pytest.raises(ValueError, match="one array per device"):
        many.prepare(shards[:1], shift, "diag")


needs_a_gpu = pytest.mark.skipif(
    N_GPUS < 1, reason=f"needs a CUDA GPU ({_REASON})" if _REASON else "needs a CUDA GPU"
)


def _run_em_kwargs(dtype) -> dict:
    return dict(reg_covar=1e-6, eps=10 * float(np.finfo(dtype).eps), tol=1e-6, max_iter=40)


@pytest.mark.gpu
@needs_a_gpu
@pytest.mark.parametrize(("cov", "dtype"), [("diag", np.float32), ("spherical", np.float64)])
def test_device_exchange_on_one_device_matches_cupy_run_em(cov, dtype):
    """The exchange kernel with one device (its own mailbox) = CupyEngine.run_em, graph or not."""
    import cupy

    from gmm_core._cupy import CupyEngine
    from gmm_core._multigpu_engine import MultiGpuEngine

    X = _data(30_001, 8, 5, dtype)
    shift = X.mean(0)
    params = random_params(X, cov, 5, n_restarts=3)
    one = CupyEngine()
    want = one.run_em(one.prepare(X, shift, cov), params.map(cupy.asarray), **_run_em_kwargs(dtype))
    assert want is not None
    for use_graphs in (True, False):
        many = MultiGpuEngine([0], exchange="device", use_graphs=use_graphs, check_every=5)
        data = many.prepare(X, shift, cov)
        for _ in range(2):  # the second fit replays the cached loop (graph) after a reset
            got = many.run_em(data, params.map(many.asarray), **_run_em_kwargs(dtype))
            assert got is not None
            assert many.last_run_info["exchange"] == "device"
            assert many.last_run_info["graphs"] is use_graphs
            np.testing.assert_array_equal(got[2], want[2])  # iterations per restart
            np.testing.assert_array_equal(got[3], want[3])  # converged
            np.testing.assert_allclose(got[1], want[1], rtol=1e-12)  # lower-bound histories
            for name in ("weights", "means", "covariances"):
                _assert_close(getattr(got[0], name), getattr(want[0], name), 1e-12, name)


@pytest.mark.gpu
@needs_two_gpus
@pytest.mark.parametrize(("cov", "dtype"), [("diag", np.float32), ("spherical", np.float64)])
def test_device_exchange_bitwise_equal_to_peer_copies(cov, dtype):
    """reduce_exchange_mstep sums in device order as the host copies do: the same bits."""
    import cupy

    from gmm_core._multigpu_engine import MultiGpuEngine

    X = _data(40_003, 8, 6, dtype)
    shift = X.mean(0)
    params = random_params(X, cov, 6, n_restarts=2)
    results = {}
    for exchange in ("device", "copies"):  # device first: it enables peer access itself
        many = MultiGpuEngine(exchange=exchange, check_every=6)
        data = many.prepare(X, shift, cov)
        runs = [many.run_em(data, params.map(many.asarray), **_run_em_kwargs(dtype))]
        runs.append(many.run_em(data, params.map(many.asarray), **_run_em_kwargs(dtype)))
        assert many.last_run_info["exchange"] == exchange
        results[exchange] = runs
    assert MultiGpuEngine().peer_access(), "two H200s of one host have peer access"
    want = results["copies"][0]
    for got in (*results["device"], results["copies"][1]):
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[2], want[2])
        for name in ("weights", "means", "covariances"):
            np.testing.assert_array_equal(
                cupy.asnumpy(getattr(got[0], name)), cupy.asnumpy(getattr(want[0], name))
            )


@pytest.mark.gpu
@needs_two_gpus
def test_ill_defined_covariance_raises_from_every_device():
    """Every device's M-step fails alike: the error is raised; with reg_covar the fit works."""
    X, kw = collapsing_fit()
    kw["backend"] = "multigpu"
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        GaussianMixture(reg_covar=0.0, **kw).fit(X)
    fitted = GaussianMixture(reg_covar=1e-6, **kw).fit(X)
    np.testing.assert_allclose(np.sort(fitted.means_[:, 0]), [-1.0, 0.0, 1.0], atol=1e-6)
