"""``partial_fit`` (stepwise EM) and ``fit`` over chunks of rows (exact EM).

References: one stepwise-EM update written out with scipy's densities; the batch fit of the
whole stream; the in-memory fit of the concatenated chunks.
"""

from __future__ import annotations

import tempfile
import warnings

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning

from gmm_core import GaussianMixture, load_model, save_model

MEANS = np.array([[0.0, 0.0], [4.0, 1.0], [-2.0, 5.0]])
SCALES = np.array([1.0, 0.6, 0.8])
MIX = np.array([0.5, 0.3, 0.2])


def _stream(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rows of a fixed (stationary) 3-component mixture in 2-D."""
    z = rng.choice(3, n, p=MIX)
    return MEANS[z] + rng.standard_normal((n, 2)) * SCALES[z, None] + 100.0


# ---------------------------------------------------------------------------------------------
# partial_fit


def test_one_partial_fit_step_is_the_stepwise_em_update():
    """s <- (1 - g) s(theta) + g s_batch(theta) with g = (t + 2) ** -decay, theta <- M(s)."""
    rng = np.random.default_rng(0)
    model = GaussianMixture(3, covariance_type="full", random_state=0, backend="numpy")
    model.partial_fit(_stream(rng, 400))
    model.partial_fit(_stream(rng, 300))  # n_steps_ 1: the next step is 3 ** -0.6
    assert model.n_steps_ == 1
    w, mu, cov = model.weights_.copy(), model.means_.copy(), model.covariances_.copy()
    batch, bw = _stream(rng, 250), rng.uniform(0.5, 2.0, 250)
    reg = model.reg_covar

    log_dens = np.stack(
        [np.log(w[k]) + multivariate_normal(mu[k], cov[k]).logpdf(batch) for k in range(3)], 1
    )
    resp = np.exp(log_dens - logsumexp(log_dens, axis=1, keepdims=True)) * bw[:, None] / bw.sum()
    nk_b = resp.sum(0)
    sx_b = resp.T @ batch
    sxx_b = np.einsum("nk,ni,nj->kij", resp, batch, batch)
    nk_m = w
    sx_m = w[:, None] * mu
    sxx_m = w[:, None, None] * (cov - reg * np.eye(2) + np.einsum("ki,kj->kij", mu, mu))
    gamma = 3.0**-0.6
    nk = (1 - gamma) * nk_m + gamma * nk_b
    sx = (1 - gamma) * sx_m + gamma * sx_b
    sxx = (1 - gamma) * sxx_m + gamma * sxx_b
    means = sx / nk[:, None]
    covs = sxx / nk[:, None, None] - np.einsum("ki,kj->kij", means, means) + reg * np.eye(2)

    model.partial_fit(batch, sample_weight=bw)
    assert model.n_steps_ == 2
    np.testing.assert_allclose(model.weights_, nk / nk.sum(), rtol=1e-9)
    np.testing.assert_allclose(model.means_, means, rtol=1e-9)
    np.testing.assert_allclose(model.covariances_, covs, rtol=1e-7, atol=1e-9)
    expected_bound = (bw * logsumexp(log_dens, axis=1)).sum() / bw.sum()
    assert model.lower_bound_ == pytest.approx(expected_bound, rel=1e-10)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_partial_fit_on_a_stationary_stream_approaches_the_batch_fit(covariance_type):
    """60 batches of 1000 rows: within 2e-3 nats/row of the batch fit on all 60,000 rows.

    Why 2e-3: after T updates the stepwise-EM estimate carries noise of order
    gamma_T / batch = 61 ** -0.6 / 1000 per parameter, so its expected log-likelihood gap is
    about n_parameters * gamma_T / (4 * batch) ~ 4e-4 nats (17 parameters, full); the batch
    fit's own sampling error is far smaller. A model that stopped learning after the first
    batch misses by n_parameters / (2 * 1000) ~ 8e-3 (checked below), so the bound can fail.
    """
    rng = np.random.default_rng(1)
    batches = [_stream(rng, 1000) for _ in range(60)]
    test = _stream(rng, 40_000)
    kw = dict(n_components=3, covariance_type=covariance_type, random_state=0, backend="numpy")
    online = GaussianMixture(**kw)
    for batch in batches:
        online.partial_fit(batch)
    batch_fit = GaussianMixture(**kw).fit(np.concatenate(batches))
    first_only = GaussianMixture(**kw).fit(batches[0])
    assert online.n_steps_ == 59 and online.n_features_in_ == 2
    gap = batch_fit.score(test) - online.score(test)
    assert abs(gap) < 2e-3
    assert batch_fit.score(test) - first_only.score(test) > 2 * abs(gap)


def test_partial_fit_continues_a_loaded_model_as_the_live_one():
    """The running statistics come from the parameters: a saved model steps identically."""
    rng = np.random.default_rng(2)
    live = GaussianMixture(3, covariance_type="diag", random_state=0, backend="numpy")
    for _ in range(3):
        live.partial_fit(_stream(rng, 500))
    batch = _stream(rng, 500)
    with tempfile.TemporaryDirectory() as tmp:
        save_model(live, tmp)
        loaded = load_model(tmp)
    assert loaded.n_steps_ == live.n_steps_ == 2
    live.partial_fit(batch)
    loaded.partial_fit(batch)
    np.testing.assert_array_equal(loaded.means_, live.means_)
    np.testing.assert_array_equal(loaded.covariances_, live.covariances_)


def test_a_step_records_itself_as_a_fit_does_and_drops_an_outdated_threshold():
    """After a step the fit record describes the step, and a calibration of the previous
    parameters is gone (it would flag against the old model); a refit drops it too."""
    rng = np.random.default_rng(4)
    gm = GaussianMixture(3, covariance_type="full", random_state=0, backend="numpy")
    gm.fit(_stream(rng, 1500))
    gm.calibrate_threshold(_stream(rng, 1000), false_alarm_rate=0.05)
    batch = _stream(rng, 500)
    before = gm.score(batch)
    gm.partial_fit(batch)
    assert (gm.n_iter_, gm.backend_, gm.n_steps_) == (1, "numpy", 1)
    assert gm.lower_bound_ == pytest.approx(before, rel=1e-12)  # the batch, previous params
    assert gm.lower_bounds_ == [gm.lower_bound_]
    assert [list(b) for b in gm.restart_lower_bounds_] == [[gm.lower_bound_]]
    assert gm.fit_seconds_ > 0
    for name in ("anomaly_calibration_", "threshold_", "false_alarm_rate_"):
        assert not hasattr(gm, name)
    gm.calibrate_threshold(_stream(rng, 1000), false_alarm_rate=0.05)
    gm.fit(_stream(rng, 1500))
    assert not hasattr(gm, "threshold_")


def test_partial_fit_refuses_a_batch_with_other_features():
    model = GaussianMixture(2, backend="numpy").partial_fit(_stream(np.random.default_rng(3), 50))
    with pytest.raises(ValueError, match="3 features, but GaussianMixture is expecting 2"):
        model.partial_fit(np.zeros((10, 3)))


def test_learning_decay_outside_its_range_is_refused():
    with pytest.raises(ValueError, match="learning_decay"):
        GaussianMixture(learning_decay=0.4).partial_fit(np.zeros((10, 2)))


# ---------------------------------------------------------------------------------------------
# fit over chunks


def _given_init(X: np.ndarray, covariance_type: str) -> dict:
    start = GaussianMixture(
        3, covariance_type=covariance_type, max_iter=0, random_state=0, backend="numpy"
    ).fit(X)
    return dict(
        weights_init=start.weights_, means_init=start.means_, precisions_init=start.precisions_
    )


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_fit_over_chunks_equals_the_in_memory_fit(covariance_type):
    X = _stream(np.random.default_rng(4), 3000)
    chunks = [X[:700], X[700:2000], X[2000:]]
    kw = dict(
        n_components=3,
        covariance_type=covariance_type,
        n_init=1,
        max_iter=40,
        tol=1e-6,
        backend="numpy",
        **_given_init(X, covariance_type),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        in_memory = GaussianMixture(**kw).fit(X)
        from_list = GaussianMixture(**kw).fit(chunks)
        from_reader = GaussianMixture(**kw).fit(lambda: iter(chunks))
    for chunked in (from_list, from_reader):
        assert chunked.n_iter_ == in_memory.n_iter_
        np.testing.assert_allclose(chunked.lower_bounds_, in_memory.lower_bounds_, rtol=1e-12)
        for name in ("weights_", "means_", "covariances_"):
            np.testing.assert_allclose(
                getattr(chunked, name), getattr(in_memory, name), rtol=1e-9, atol=1e-12
            )


def test_fit_over_weighted_chunks_equals_the_weighted_in_memory_fit():
    rng = np.random.default_rng(5)
    X = _stream(rng, 2000)
    w = rng.integers(0, 3, len(X)).astype(float)
    kw = dict(n_components=3, max_iter=30, tol=0.0, backend="numpy", **_given_init(X, "full"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        in_memory = GaussianMixture(**kw).fit(X, sample_weight=w)
        chunked = GaussianMixture(**kw).fit([(X[:900], w[:900]), (X[900:], w[900:])])
    np.testing.assert_allclose(chunked.lower_bounds_, in_memory.lower_bounds_, rtol=1e-12)
    np.testing.assert_allclose(chunked.means_, in_memory.means_, rtol=1e-10)


def test_one_chunk_with_the_default_initialisation_is_the_in_memory_fit():
    X = _stream(np.random.default_rng(6), 1500)
    kw = dict(n_components=3, n_init=2, random_state=0, backend="numpy")
    in_memory = GaussianMixture(**kw).fit(X)
    chunked = GaussianMixture(**kw).fit([X])
    np.testing.assert_allclose(chunked.means_, in_memory.means_, rtol=1e-10)
    assert chunked.n_iter_ == in_memory.n_iter_


def test_fit_refuses_a_one_shot_generator_and_changing_chunks():
    X = _stream(np.random.default_rng(7), 600)
    with pytest.raises(TypeError, match="one-shot iterator .* function returning a new iterator"):
        GaussianMixture(2, backend="numpy").fit(c for c in (X[:300], X[300:]))
    calls = []

    def shrinking():
        calls.append(1)
        return iter([X[:300], X[300 : 600 - 10 * len(calls)]])

    with pytest.raises(ValueError, match="same data on every pass"):
        GaussianMixture(2, backend="numpy").fit(shrinking)


def test_empty_and_zero_weight_leading_chunks_are_taken_as_the_rest_of_the_data():
    """QA probe: an empty chunk (an empty file or row group) or a first chunk of one row failed
    the fit with scikit-learn's minimum-samples error, and a first chunk of zero weights with
    KMeans' "at least one non-zero" or "ill-defined covariance". The initialisation is drawn
    from the first chunk with n_components rows of positive weight; empty chunks add nothing."""
    rng = np.random.default_rng(0)
    A, B, C = (
        rng.normal(size=(400, 3)),
        rng.normal(size=(400, 3)) + 5,
        rng.normal(size=(400, 3)) - 3,
    )
    kw = dict(n_components=2, backend="numpy", random_state=0, max_iter=50)
    plain = GaussianMixture(**kw).fit([B, C])
    with_empty = GaussianMixture(**kw).fit([A[:0], B, C[:0], C])
    np.testing.assert_allclose(with_empty.means_, plain.means_, rtol=1e-12)
    zero_first = GaussianMixture(**kw).fit([(A, np.zeros(len(A))), B, C])
    np.testing.assert_allclose(zero_first.means_, plain.means_, rtol=1e-12)
    one_row_first = GaussianMixture(**kw).fit([B[:1], B[1:], C])
    assert np.isfinite(one_row_first.lower_bound_) and one_row_first.converged_
    with pytest.raises(ValueError, match="yielded no rows"):
        GaussianMixture(**kw).fit([A[:0]])
    with pytest.raises(ValueError, match="no chunk has n_components = 2 rows of positive weight"):
        GaussianMixture(**kw).fit([A[:1], B[:1]])


def test_chunks_given_to_fit_predict_or_partial_fit_say_what_to_do():
    """QA probe: they failed with "Found array with dim 3, while dim <= 2 is required"."""
    chunks = [np.random.default_rng(1).normal(size=(50, 2)) for _ in range(2)]
    model = GaussianMixture(2, backend="numpy", random_state=0)
    with pytest.raises(TypeError, match="fit_predict takes one array .* predict on each chunk"):
        model.fit_predict(chunks)
    with pytest.raises(TypeError, match="partial_fit takes one array .* once per chunk"):
        model.partial_fit(chunks)
