"""The Dask engine on a real 2-worker ``distributed.LocalCluster``: the same model as NumPy.

EM's statistics add up across partitions, so ``backend="dask"`` must reproduce the
single-process NumPy backend's fit (same restarts, same iteration counts, same convergence, same
parameters) up to floating-point summation order.
"""

from __future__ import annotations

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from gmm_core import GaussianMixture  # noqa: E402
from gmm_core._dask_engine import (  # noqa: E402
    SCHEDULER_ENV,
    WORKER_BACKEND_ENV,
    DaskEngine,
    _close_cached_clients,
    resolve_client,
)
from gmm_core._gaussian import Params, cholesky_precisions  # noqa: E402
from gmm_core._numpy_engine import NumpyEngine  # noqa: E402

N_SAMPLES, N_FEATURES, N_COMPONENTS = 20_000, 4, 4


def _telemetry_like(n: int = N_SAMPLES, seed: int = 0) -> np.ndarray:
    """Overlapping anisotropic clusters: EM needs tens of iterations, restarts end apart."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.5, size=(N_COMPONENTS, N_FEATURES))
    scales = rng.uniform(0.5, 1.5, size=(N_COMPONENTS, N_FEATURES))
    labels = rng.integers(0, N_COMPONENTS, n)
    return centers[labels] + rng.standard_normal((n, N_FEATURES)) * scales[labels] + 10.0


@pytest.fixture(autouse=True)
def numpy_workers(monkeypatch):
    """CPU tests compare with the NumPy backend: the workers run the NumPy engine even where
    they could see a GPU (``backend="dask"`` defaults to ``"auto"`` on the workers)."""
    monkeypatch.setenv(WORKER_BACKEND_ENV, "numpy")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as local_cluster:
        yield local_cluster


@pytest.fixture(scope="module")
def client(cluster):
    # not the default client: each test says how the estimator finds the cluster
    with distributed.Client(cluster, set_as_default=False) as dask_client:
        yield dask_client
    _close_cached_clients()


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return _telemetry_like()


@pytest.fixture
def prepared(monkeypatch) -> list[str]:
    """The array library of every dataset ``DaskEngine.prepare`` is given, in call order."""
    seen: list[str] = []
    prepare = DaskEngine.prepare

    def recording(self, data, *args, **kwargs):
        seen.append(type(data).__module__.split(".")[0])
        return prepare(self, data, *args, **kwargs)

    monkeypatch.setattr(DaskEngine, "prepare", recording)
    return seen


FIT_KW = dict(
    n_components=N_COMPONENTS,
    n_init=2,
    random_state=0,
    init_params="k-means++",
    tol=1e-5,
    max_iter=200,
)


def _assert_same_fit(got: GaussianMixture, ref: GaussianMixture, rtol: float, atol: float) -> None:
    assert got.backend_ == "dask" and ref.backend_ == "numpy"
    assert got.n_iter_ == ref.n_iter_
    assert got.converged_ == ref.converged_
    assert [len(b) for b in got.restart_lower_bounds_] == [
        len(b) for b in ref.restart_lower_bounds_
    ]
    for mine, theirs in zip(got.restart_lower_bounds_, ref.restart_lower_bounds_, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=rtol, atol=atol)
    np.testing.assert_allclose(got.lower_bound_, ref.lower_bound_, rtol=rtol)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(
            getattr(got, name), getattr(ref, name), rtol=rtol, atol=atol, err_msg=name
        )


@pytest.mark.parametrize("covariance_type", ["diag", "full", "tied", "spherical"])
def test_same_model_as_numpy_backend(client, X, covariance_type):
    ref = GaussianMixture(covariance_type=covariance_type, backend="numpy", **FIT_KW).fit(X)
    with client.as_current():
        got = GaussianMixture(covariance_type=covariance_type, backend="dask", **FIT_KW)
        labels = got.fit_predict(X)
    # several restarts that really iterate and end at different bounds: the comparison covers
    # the per-restart convergence bookkeeping, not one trivial run
    finals = [b[-1] for b in ref.restart_lower_bounds_]
    assert len(finals) == 2 and max(len(b) for b in ref.restart_lower_bounds_) >= 3
    _assert_same_fit(got, ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(labels, ref.predict(X))
    np.testing.assert_array_equal(got.predict(X), labels)


def test_float32_data_stay_float32_and_agree(client, X):
    X32 = X.astype(np.float32)
    kw = {**FIT_KW, "tol": 1e-4}
    ref = GaussianMixture(covariance_type="diag", backend="numpy", **kw).fit(X32)
    with client.as_current():
        got = GaussianMixture(covariance_type="diag", backend="dask", **kw).fit(X32)
    assert got.means_.dtype == np.float32
    # float32 chunk sums differ in order between one process and two partitions
    np.testing.assert_allclose(got.means_, ref.means_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.lower_bound_, ref.lower_bound_, rtol=1e-5)


def test_max_iter_without_convergence_warns_like_numpy(client, X):
    kw = {**FIT_KW, "max_iter": 3, "tol": 0.0}
    with pytest.warns(Warning, match="did not converge"):
        ref = GaussianMixture(covariance_type="diag", backend="numpy", **kw).fit(X)
    with client.as_current(), pytest.warns(Warning, match="did not converge"):
        got = GaussianMixture(covariance_type="diag", backend="dask", **kw).fit(X)
    assert got.n_iter_ == ref.n_iter_ == 3 and not got.converged_
    _assert_same_fit(got, ref, rtol=1e-10, atol=1e-10)


def test_partitions_stay_on_both_workers_and_stats_add_up(client, X):
    """prepare() persists one partition per worker thread; a pass equals the NumPy pass."""
    shift = X.mean(axis=0)
    engine = DaskEngine(client, worker_backend="numpy")
    data = engine.prepare(X, shift, "full")
    assert len(data.parts) == 2 and data.worker_backends == ["numpy", "numpy"]
    holders = client.who_has(data.parts)
    assert len({w for workers in holders.values() for w in workers}) == 2

    rng = np.random.default_rng(1)
    n_restarts = 2
    means = rng.normal(size=(n_restarts, N_COMPONENTS, N_FEATURES))
    covs = np.broadcast_to(np.eye(N_FEATURES), (n_restarts, N_COMPONENTS, N_FEATURES, N_FEATURES))
    params = Params(
        np.full((n_restarts, N_COMPONENTS), 1.0 / N_COMPONENTS),
        means,
        covs.copy(),
        cholesky_precisions(covs.copy(), "full", np),
    )
    ref_engine = NumpyEngine()
    ref_data = ref_engine.prepare(X, shift, "full")
    active = np.ones(n_restarts, dtype=bool)
    got, ref = (
        engine.accumulate(data, params, active),
        ref_engine.accumulate(ref_data, params, active),
    )
    assert got.n_samples == ref.n_samples == N_SAMPLES
    for name in ("loglik", "nk", "sx", "sxx"):
        np.testing.assert_allclose(getattr(got, name), getattr(ref, name), rtol=1e-10, err_msg=name)

    # an inactive restart keeps its last statistics, the active one is recomputed
    moved = Params(
        params.weights, params.means + 0.5, params.covariances, params.precisions_cholesky
    )
    partly = engine.accumulate(data, moved, np.array([False, True]))
    np.testing.assert_array_equal(partly.nk[0], got.nk[0])
    assert not np.allclose(partly.nk[1], got.nk[1])

    np.testing.assert_allclose(
        engine.weighted_log_prob(data, params.take(0)),
        ref_engine.weighted_log_prob(ref_data, params.take(0)),
        rtol=1e-12,
    )


def test_dask_array_input_is_computed_on_the_workers(client, X):
    da = pytest.importorskip("dask.array")
    shift = X.mean(axis=0)
    X_dask = da.from_array(X, chunks=(6_000, N_FEATURES))  # 4 row blocks, uneven last one
    engine = DaskEngine(client, worker_backend="numpy")
    data = engine.prepare(X_dask, shift, "diag")
    assert len(data.parts) == 4 and data.n_samples == N_SAMPLES
    ref_engine = NumpyEngine()
    ref_data = ref_engine.prepare(X, shift, "diag")
    covs = np.ones((1, N_COMPONENTS, N_FEATURES))
    params = Params(
        np.full((1, N_COMPONENTS), 0.25), X[:N_COMPONENTS][None] - shift, covs, 1.0 / np.sqrt(covs)
    )
    got = engine.accumulate(data, params, np.ones(1, bool))
    ref = ref_engine.accumulate(ref_data, params, np.ones(1, bool))
    for name in ("loglik", "nk", "sx", "sxx"):
        np.testing.assert_allclose(getattr(got, name), getattr(ref, name), rtol=1e-10, err_msg=name)


def test_fit_of_a_dask_array_keeps_its_partitions_on_the_workers(client, X, prepared):
    """QA probe: ``fit`` turned a dask array (or DataFrame) into one NumPy array on the client
    before the engine saw it (validate_data), then re-split it by worker thread: no data set
    larger than the client's memory could be fitted. The engine now gets the dask array, the
    moments are dask reductions, and the fit is the NumPy fit of the same rows."""
    import dask.array as da
    import dask.dataframe as dd
    import pandas as pd

    ref = GaussianMixture(backend="numpy", **FIT_KW).fit(X)
    frame = dd.from_pandas(pd.DataFrame(X, columns=list("abcd")), npartitions=3)
    w = da.from_array(np.ones(len(X)), chunks=5_000)
    with client.as_current():
        on_array = GaussianMixture(backend="dask", **FIT_KW).fit(
            da.from_array(X, chunks=(6_000, N_FEATURES))
        )
        on_frame = GaussianMixture(backend="dask", **FIT_KW).fit(frame, sample_weight=w)
    assert prepared == ["dask", "dask"]
    for got in (on_array, on_frame):
        _assert_same_fit(got, ref, rtol=1e-9, atol=1e-9)
    bad = da.from_array(np.where(np.arange(len(X))[:, None] == 7, np.nan, X), chunks=5_000)
    with client.as_current(), pytest.raises(ValueError, match="NaN or infinity"):
        GaussianMixture(backend="dask", **FIT_KW).fit(bad)


def test_a_large_dask_array_starts_from_a_sample_of_its_rows(client, X, monkeypatch):
    """Above INIT_SAMPLE_ROWS rows the host initialisation reads a uniform sample (drawn with
    the fit's random_state), not the whole array; EM then runs on every row."""
    import dask.array as da

    from gmm_core import _dask_input

    monkeypatch.setattr(_dask_input, "INIT_SAMPLE_ROWS", 2_000)
    ref = GaussianMixture(backend="numpy", **FIT_KW).fit(X)
    with client.as_current():
        got = GaussianMixture(backend="dask", **FIT_KW).fit(da.from_array(X, chunks=5_000))
        again = GaussianMixture(backend="dask", **FIT_KW).fit(da.from_array(X, chunks=5_000))
    np.testing.assert_array_equal(got.means_, again.means_)  # the sample is seeded
    assert got.converged_ and got.lower_bound_ == pytest.approx(ref.lower_bound_, abs=1e-3)


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_sample_weights_give_the_numpy_backend_weighted_fit(client, X, covariance_type):
    """Weights travel with their rows into each partition (NumPy array and dask.array input)."""
    import dask.array as da

    w = np.random.default_rng(1).integers(0, 4, len(X)).astype(float)
    kw = {**FIT_KW, "covariance_type": covariance_type}
    ref = GaussianMixture(backend="numpy", **kw).fit(X, sample_weight=w)
    unweighted = GaussianMixture(backend="numpy", **kw).fit(X)
    assert abs(ref.lower_bound_ - unweighted.lower_bound_) > 1e-6  # the weights matter
    with client.as_current():
        got = GaussianMixture(backend="dask", **kw).fit(X, sample_weight=w)
        chunked = GaussianMixture(backend="dask", **kw).fit(
            da.from_array(X, chunks=(7_000, -1)), sample_weight=w
        )
    _assert_same_fit(got, ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(chunked.lower_bound_, ref.lower_bound_, rtol=1e-9)
    np.testing.assert_allclose(chunked.means_, ref.means_, rtol=1e-9, atol=1e-9)


def test_scheduler_address_from_environment(cluster, client, X, monkeypatch):
    """No active client: EMFLOW_DASK_SCHEDULER names the cluster (the retrain DAG's knob)."""
    if distributed.client._get_global_client() is not None:
        pytest.skip("another test module left a default Dask client active")
    monkeypatch.setenv(SCHEDULER_ENV, cluster.scheduler_address)
    kw = {**FIT_KW, "n_init": 1}
    got = GaussianMixture(covariance_type="diag", backend="dask", **kw).fit(X)
    ref = GaussianMixture(covariance_type="diag", backend="numpy", **kw).fit(X)
    assert resolve_client().scheduler.address == cluster.scheduler_address
    _assert_same_fit(got, ref, rtol=1e-9, atol=1e-9)


def test_no_cluster_is_a_clear_error(monkeypatch, X):
    if distributed.client._get_global_client() is not None:
        pytest.skip("another test module left a default Dask client active")
    monkeypatch.delenv(SCHEDULER_ENV, raising=False)
    with pytest.raises(RuntimeError, match=SCHEDULER_ENV):
        GaussianMixture(2, backend="dask").fit(X[:100])


def test_unreachable_scheduler_is_a_clear_error(monkeypatch, X):
    if distributed.client._get_global_client() is not None:
        pytest.skip("another test module left a default Dask client active")
    monkeypatch.setenv(SCHEDULER_ENV, "tcp://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setattr("gmm_core._dask_engine._CONNECT_TIMEOUT", "2s")
    with pytest.raises(RuntimeError, match="cannot reach the Dask scheduler"):
        GaussianMixture(2, backend="dask").fit(X[:100])


@pytest.mark.parametrize("address", ["localhost", "http://127.0.0.1:8786"])
def test_a_malformed_scheduler_address_names_the_form_it_takes(monkeypatch, X, address):
    """QA probe: 'localhost' (no port) or an http:// address raised distributed's bare
    ValueError ("missing port number", "unknown address scheme")."""
    if distributed.client._get_global_client() is not None:
        pytest.skip("another test module left a default Dask client active")
    monkeypatch.setenv(SCHEDULER_ENV, address)
    with pytest.raises(RuntimeError, match=r"is not a Dask scheduler address .*tcp://<host>"):
        GaussianMixture(2, backend="dask").fit(X[:100])


def test_bad_worker_backend_names_the_fix():
    with pytest.raises(ValueError, match="worker_backend must be one of"):
        DaskEngine(worker_backend="tpu")


@pytest.mark.gpu
@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_gpu_workers_run_the_cupy_engine(client, X, covariance_type, monkeypatch):
    """Workers that see a GPU run the CuPy engine (fused kernel for diag) on their partitions."""
    from gmm_core._engine import cupy_unavailable_reason

    reason = cupy_unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs a usable CUDA GPU: {reason}")
    monkeypatch.setenv(WORKER_BACKEND_ENV, "cupy")
    engine = DaskEngine(client)
    data = engine.prepare(X, X.mean(axis=0), covariance_type)
    assert data.worker_backends == ["cupy", "cupy"]
    ref = GaussianMixture(covariance_type=covariance_type, backend="numpy", **FIT_KW).fit(X)
    with client.as_current():
        got = GaussianMixture(covariance_type=covariance_type, backend="dask", **FIT_KW).fit(X)
    _assert_same_fit(got, ref, rtol=1e-7, atol=1e-7)


def test_scoring_a_dask_array_stays_lazy_and_runs_on_the_workers(client, X):
    """predict / score_samples / predict_proba of a dask array (or DataFrame) were computed on
    the client (the whole array gathered there, as NumPy); now each gives a lazy dask array
    scored block by block on the workers, equal to the NumPy result."""
    da = pytest.importorskip("dask.array")
    dd = pytest.importorskip("dask.dataframe")
    import pandas as pd

    model = GaussianMixture(backend="numpy", **FIT_KW).fit(X)
    X_dask = da.from_array(X, chunks=(6_000, 2))  # 4 row blocks; features split in two
    for method, shape in (("predict", (N_SAMPLES,)), ("score_samples", (N_SAMPLES,)),
                          ("predict_proba", (N_SAMPLES, N_COMPONENTS))):  # fmt: skip
        lazy = getattr(model, method)(X_dask)
        assert isinstance(lazy, da.Array), method
        assert lazy.shape == shape and lazy.numblocks[0] == 4
        got = client.compute(lazy).result()  # on the workers
        want = getattr(model, method)(X)
        assert got.dtype == want.dtype, method
        np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=method)
    assert model.score(X_dask) == pytest.approx(model.score(X), rel=1e-12)
    with client.as_current():  # fit_predict too: the labels stay lazy, as predict's
        fitted = GaussianMixture(backend="dask", **FIT_KW)
        lazy = fitted.fit_predict(X_dask)
    assert isinstance(lazy, da.Array) and lazy.numblocks[0] == 4
    np.testing.assert_array_equal(client.compute(lazy).result(), fitted.predict(X))
    frame = dd.from_pandas(pd.DataFrame(X, columns=list("abcd")), npartitions=3)
    labels = model.predict(frame)
    assert isinstance(labels, da.Array)
    np.testing.assert_array_equal(labels.compute(), model.predict(X))
    with pytest.raises(ValueError, match="3 features"):
        model.predict(X_dask[:, :3])


def test_selection_of_a_dask_array_keeps_its_partitions_on_the_workers(
    client, X, prepared, monkeypatch
):
    """QA probe: ``GaussianMixtureSelect.fit`` turned a dask array into one NumPy array on the
    client (validate_data) before the Dask engine saw it, unlike ``GaussianMixture.fit``. Now the
    engine gets the dask array (moments by dask reductions, the initialisations from its rows),
    the table is the NumPy backend's, and a dask holdout is scored on the workers."""
    import dask.array as da

    from gmm_core import GaussianMixtureSelect, _dask_input

    kw = dict(n_components=range(1, 5), covariance_type=("diag", "full"), random_state=0)
    train, holdout = X[:16_000], X[16_000:]
    ref = GaussianMixtureSelect(backend="numpy", criterion="holdout", **kw).fit(
        train, X_holdout=holdout
    )
    with client.as_current():
        got = GaussianMixtureSelect(backend="dask", criterion="holdout", **kw).fit(
            da.from_array(train, chunks=5_000), X_holdout=da.from_array(holdout, chunks=1_000)
        )
    assert prepared == ["dask", "dask"]  # one prepare per covariance type, of the dask array
    assert got.backend_ == "dask" and got.batched_
    for column in ("bic", "holdout_score"):
        np.testing.assert_allclose(got.results_[column], ref.results_[column], rtol=1e-9)
    np.testing.assert_array_equal(got.results_["n_iter"], ref.results_["n_iter"])
    assert got.best_params_ == ref.best_params_
    # above INIT_SAMPLE_ROWS the initialisations read a seeded sample of rows; EM every row
    monkeypatch.setattr(_dask_input, "INIT_SAMPLE_ROWS", 3_000)
    with client.as_current():
        sampled = [
            GaussianMixtureSelect(backend="dask", **kw).fit(da.from_array(train, chunks=5_000))
            for _ in range(2)
        ]
    np.testing.assert_array_equal(sampled[0].results_["bic"], sampled[1].results_["bic"])
    np.testing.assert_allclose(sampled[0].results_["bic"], ref.results_["bic"], rtol=1e-3)
    bad = da.from_array(np.where(np.arange(len(train))[:, None] == 7, np.nan, train), chunks=5_000)
    with client.as_current(), pytest.raises(ValueError, match="NaN or infinity"):
        GaussianMixtureSelect(backend="dask", **kw).fit(bad)


def test_a_dask_dataframes_column_names_are_recorded_and_checked(client, X):
    """QA probe: a dask DataFrame's column names were dropped (no ``feature_names_in_``), so a
    holdout or a scored frame with its columns reordered or renamed was read by position,
    silently. Its names are now recorded and checked as a pandas DataFrame's."""
    import warnings

    import dask.dataframe as dd
    import pandas as pd

    from gmm_core import GaussianMixtureSelect

    frame = dd.from_pandas(pd.DataFrame(X, columns=list("abcd")), npartitions=3)
    with client.as_current():
        model = GaussianMixture(backend="dask", **FIT_KW).fit(frame)
        sel = GaussianMixtureSelect([1, 2], backend="dask", random_state=0).fit(frame)
        with pytest.raises(ValueError, match="same order"):
            GaussianMixtureSelect([1, 2], backend="dask", criterion="holdout").fit(
                frame, X_holdout=frame[["d", "c", "b", "a"]]
            )
        with pytest.raises(ValueError, match="X_holdout has 0 row"):
            GaussianMixtureSelect([1, 2], backend="dask").fit(frame, X_holdout=frame[frame.a > 1e9])
    for fitted in (model, sel, sel.best_estimator_):
        assert list(fitted.feature_names_in_) == list("abcd")
    with pytest.raises(ValueError, match="unseen at fit time"):
        model.predict(frame.rename(columns={"a": "x"}))
    named = pd.DataFrame(X, columns=list("abcd"))
    pandas_fit = GaussianMixture(backend="numpy", **FIT_KW).fit(named)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matching names: no "valid feature names" warning
        labels = pandas_fit.predict(frame).compute(scheduler="sync")
    np.testing.assert_array_equal(labels, pandas_fit.predict(named))
