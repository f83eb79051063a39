"""``fit(X, sample_weight=...)``: ones are the unweighted fit, integers are repeated rows.

References: the same estimator on the unweighted data (bit for bit), on rows repeated as many
times as their weight (to rounding), and scikit-learn's GaussianMixture on the repeated rows.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from gmm_core import GaussianMixture
from gmm_core._gaussian import Params
from gmm_core._numpy_engine import NumpyEngine

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]
FITTED = ("weights_", "means_", "covariances_", "precisions_cholesky_")


def _two_blobs(seed: int = 0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    return np.concatenate([rng.normal(0, 1, (60, 3)), rng.normal(4, 0.7, (50, 3))]) + 5.0


def _fit(X, sample_weight=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianMixture(backend="numpy", **kw).fit(X, sample_weight=sample_weight)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_weights_of_ones_give_the_unweighted_fit_bit_for_bit(dtype, covariance_type, init_params):
    X = _two_blobs().astype(dtype)
    kw = dict(
        n_components=3,
        covariance_type=covariance_type,
        init_params=init_params,
        n_init=2,
        random_state=1,
        max_iter=30,
    )
    plain = _fit(X, **kw)
    ones = _fit(X, np.ones(len(X)), **kw)
    for name in FITTED:
        np.testing.assert_array_equal(getattr(ones, name), getattr(plain, name), err_msg=name)
    assert ones.lower_bounds_ == plain.lower_bounds_
    assert ones.n_iter_ == plain.n_iter_


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_integer_weights_equal_repeated_rows_and_scikit_learn_on_them(covariance_type):
    X = _two_blobs()
    w = np.random.RandomState(3).randint(0, 4, len(X))  # zeros drop rows
    repeated = np.repeat(X, w, axis=0)
    start = GaussianMixture(
        2, covariance_type=covariance_type, max_iter=0, random_state=0, backend="numpy"
    ).fit(X)
    kw = dict(
        n_components=2,
        covariance_type=covariance_type,
        weights_init=start.weights_,
        means_init=start.means_,
        precisions_init=start.precisions_,
        max_iter=15,
        tol=0.0,
    )
    weighted = _fit(X, w, **kw)
    ours_repeated = _fit(repeated, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sklearn_repeated = SkGaussianMixture(**kw).fit(repeated)
    for reference in (ours_repeated, sklearn_repeated):
        for name in ("weights_", "means_", "covariances_"):
            np.testing.assert_allclose(
                getattr(weighted, name), getattr(reference, name), rtol=1e-11, atol=1e-12
            )
        assert weighted.lower_bound_ == pytest.approx(reference.lower_bound_, rel=1e-12)
    np.testing.assert_allclose(weighted.lower_bounds_, ours_repeated.lower_bounds_, rtol=1e-12)


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++"])
def test_weighted_kmeans_initialisation_matches_repeated_rows(init_params):
    """Well-separated blobs: weighted k-means finds the partition k-means finds on the repeats."""
    X = _two_blobs(1)
    w = np.random.RandomState(4).randint(1, 4, len(X))
    kw = dict(n_components=2, covariance_type="diag", init_params=init_params, random_state=0)
    weighted = _fit(X, w, **kw)
    repeated = _fit(np.repeat(X, w, axis=0), **kw)
    order_w, order_r = np.argsort(weighted.means_[:, 0]), np.argsort(repeated.means_[:, 0])
    np.testing.assert_allclose(weighted.means_[order_w], repeated.means_[order_r], rtol=1e-9)
    np.testing.assert_allclose(weighted.weights_[order_w], repeated.weights_[order_r], rtol=1e-9)


def test_weights_change_the_fit():
    """A weight is not ignored: up-weighting one blob moves the mixture weights towards it."""
    X = _two_blobs()
    w = np.where(X[:, 0] > 7.0, 5.0, 1.0)
    plain = _fit(X, n_components=2, random_state=0)
    weighted = _fit(X, w, n_components=2, random_state=0)
    right_plain = plain.weights_[np.argmax(plain.means_[:, 0])]
    right_weighted = weighted.weights_[np.argmax(weighted.means_[:, 0])]
    assert right_weighted > right_plain + 0.2


def test_numpy_pass_weights_statistics_as_repeated_rows():
    """The engine's pass alone: weighted statistics equal those of the repeated rows."""
    X = _two_blobs()
    w = np.random.RandomState(5).randint(0, 3, len(X)).astype(float)
    model = _fit(X, n_components=2, random_state=0, covariance_type="full")
    params = Params(
        model.weights_[None].astype(float),
        model.means_[None],
        model.covariances_[None],
        model.precisions_cholesky_[None],
    )
    engine = NumpyEngine()
    weighted = engine.accumulate(
        engine.prepare(X, None, "full", sample_weight=w), params, np.ones(1, bool)
    )
    repeated = engine.accumulate(
        engine.prepare(np.repeat(X, w.astype(int), axis=0), None, "full"), params, np.ones(1, bool)
    )
    assert weighted.weight_sum == repeated.n_samples == w.sum()
    for name in ("loglik", "nk", "sx", "sxx"):
        np.testing.assert_allclose(getattr(weighted, name), getattr(repeated, name), rtol=1e-12)


@pytest.mark.parametrize(
    ("sample_weight", "match"),
    [
        (np.ones((110, 1)), r"1-D .* shape \(110,\)"),
        (np.ones(109), "109 entries but X has 110 rows"),
        (np.r_[np.ones(109), np.nan], "NaN or infinite .* finite"),
        (np.r_[np.ones(109), np.inf], "NaN or infinite"),
        (np.r_[np.ones(109), -0.5], r"non-negative, found -0.5 at row 109; use 0"),
        (np.zeros(110), "zero for every row; give at least n_components rows"),
        (np.r_[np.zeros(109), 1.0], "only 1 row.* lower n_components"),
        (np.array(["a"] * 110), "must be numeric"),
    ],
)
def test_bad_sample_weight_is_refused_naming_the_fix(sample_weight, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(2, backend="numpy").fit(_two_blobs(), sample_weight=sample_weight)


def test_a_scalar_weight_weighs_every_row_alike():
    X = _two_blobs()
    plain = _fit(X, n_components=2, random_state=0)
    scaled = _fit(X, 2.5, n_components=2, random_state=0)
    np.testing.assert_allclose(scaled.means_, plain.means_, rtol=1e-9)
    assert scaled.lower_bound_ == pytest.approx(plain.lower_bound_, rel=1e-12)


@pytest.mark.parametrize("engine_module", ["gmm_core._cupy", "gmm_core._multigpu_engine"])
def test_gpu_engines_take_weights_and_an_engine_without_them_is_refused(engine_module):
    """The GPU engines weight their passes (tests/gpu/test_gpu_weights.py checks the numbers);
    an engine that cannot is refused by name (never silently ignored), 'auto' uses NumPy."""
    import importlib

    from gmm_core._engine import Engine
    from gmm_core._weights import engine_for_weights

    pytest.importorskip("cupy")
    module = importlib.import_module(engine_module)
    engine_class = module.CupyEngine if engine_module.endswith("_cupy") else module.MultiGpuEngine
    assert engine_class.supports_sample_weight
    assert engine_for_weights(engine_class, engine_class.name) is engine_class

    class Unweighted(Engine):
        name = "unweighted"

    with pytest.raises(NotImplementedError, match=r"backend='numpy'.*np\.repeat"):
        engine_for_weights(Unweighted(), "unweighted")
    assert isinstance(engine_for_weights(Unweighted(), "auto"), NumpyEngine)


@pytest.mark.parametrize("init_params", ["kmeans", "random"])
def test_weighted_tied_initialisation_is_scikit_learns_on_repeated_rows(init_params):
    """The tied init's X^T X over all rows, weighted, in centred coordinates: with the shift not
    the weighted mean its cross terms were missing, so every weighted tied fit from kmeans or
    random responsibilities raised "ill-defined covariance" (QA probe of the sweep). Against
    scikit-learn's own M-step on repeated rows with the same responsibilities."""
    from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

    from gmm_core._gaussian import estimate_parameters
    from gmm_core._host_init import stats_from_resp

    X = _two_blobs(2)
    w = np.random.RandomState(5).randint(0, 4, len(X))
    rs = np.random.RandomState(0)
    resp = (
        rs.uniform(size=(len(X), 3))
        if init_params == "random"
        else np.eye(3)[rs.randint(0, 3, len(X))]
    )
    resp /= resp.sum(axis=1, keepdims=True)
    shift = X.mean(axis=0)  # not the weighted mean
    eps = 10 * np.finfo(np.float64).eps
    stats = stats_from_resp(X - shift, resp, 3, "tied", shift, eps, w.astype(np.float64))
    _, means, cov = estimate_parameters(stats, "tied", 1e-6, eps, np, shift)
    _, want_means, want_cov = _estimate_gaussian_parameters(
        np.repeat(X, w, axis=0), np.repeat(resp, w, axis=0), 1e-6, "tied"
    )
    np.testing.assert_allclose(means[0] + shift, want_means, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cov[0], want_cov, rtol=1e-10, atol=1e-12)
    fitted = _fit(X, w, n_components=3, covariance_type="tied", init_params=init_params)
    assert np.isfinite(fitted.lower_bound_)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_a_chosen_row_counts_once_as_one_copy_among_repeated_rows(covariance_type):
    """k-means++ / random_from_data start each component on one chosen row: with integer
    weights that is one copy of the row among the repeats (nk = 1, as the device path counts
    it), not all its copies (the host path had nk = w, so other starting weights)."""
    from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

    from gmm_core._gaussian import estimate_parameters
    from gmm_core._host_init import stats_from_resp

    X = _two_blobs(3)
    w = np.random.RandomState(6).randint(1, 4, len(X))
    chosen = np.array([4, 71])
    labels = np.full(len(X), -1)
    labels[chosen] = [0, 1]
    shift = X.mean(axis=0)
    eps = 10 * np.finfo(np.float64).eps
    stats = stats_from_resp(X - shift, labels, 2, covariance_type, shift, eps, w.astype(float))
    nk, means, cov = estimate_parameters(stats, covariance_type, 1e-6, eps, np, shift)
    repeated = np.repeat(X, w, axis=0)
    first_copy = np.concatenate([[0], np.cumsum(w)[:-1]])[chosen]
    resp = np.zeros((len(repeated), 2))
    resp[first_copy, [0, 1]] = 1.0
    want_nk, want_means, want_cov = _estimate_gaussian_parameters(
        repeated, resp, 1e-6, covariance_type
    )
    np.testing.assert_allclose(nk[0] / stats.weight_sum, want_nk / len(repeated), rtol=1e-12)
    np.testing.assert_allclose(means[0] + shift, want_means, rtol=1e-12)
    np.testing.assert_allclose(cov[0], want_cov, rtol=1e-8, atol=1e-12)


def test_weights_summing_to_one_fit_as_the_unweighted_data():
    """QA probe: float32 telemetry far from the origin with a small component (20 of 20,000
    rows); weights 1/n are the unweighted fit. The M-step's 10 eps added to every N_k (a count
    of rows) weighed like 0.05 rows against the small component's 5e-4 and moved its mean by a
    standard deviation (1008.1 -> 1006.9)."""
    rng = np.random.RandomState(0)
    X = np.vstack([rng.normal(0, 1, (19980, 2)), rng.normal(8, 1, (20, 2))]) + 1000
    X = X.astype(np.float32)
    kw = dict(n_components=2, means_init=[[1000.0, 1000.0], [1008.0, 1008.0]], max_iter=50)
    plain = _fit(X, **kw)
    normalised = _fit(X, np.full(len(X), 1.0 / len(X)), **kw)
    np.testing.assert_allclose(normalised.means_, plain.means_, atol=1e-3)
    np.testing.assert_allclose(normalised.covariances_, plain.covariances_, rtol=1e-3)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("scale", [1e-300, 1e-12, 1e-3, 0.5])
def test_the_scale_of_fractional_weights_does_not_change_the_fit(covariance_type, scale):
    """Weights of mean below 1 are scaled to mean 1: any common factor gives the same fit (in
    memory, over chunks, one partial_fit step) as the weights of mean 1."""
    X = _two_blobs()
    w = np.random.RandomState(4).uniform(0.05, 1.0, len(X))
    w = w / w.mean()
    kw = dict(n_components=3, covariance_type=covariance_type, random_state=2, max_iter=40)
    unit = _fit(X, w, **kw)
    scaled = _fit(X, w * scale, **kw)
    for name in FITTED:
        np.testing.assert_allclose(
            getattr(scaled, name), getattr(unit, name), rtol=1e-7, err_msg=name
        )
    chunked = [_fit([(X[:50], w[:50] * c), (X[50:], w[50:] * c)], **kw) for c in (1.0, scale)]
    np.testing.assert_allclose(chunked[1].means_, chunked[0].means_, rtol=1e-7)
    step_unit = _fit(X, w, **kw).partial_fit(X[:40], sample_weight=w[:40])
    step_scaled = _fit(X, w, **kw).partial_fit(X[:40], sample_weight=w[:40] * scale)
    np.testing.assert_allclose(step_scaled.means_, step_unit.means_, rtol=1e-9)
