"""scikit-learn's estimator checks, bad input, the sequential reference EM."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from gmm_core import GaussianMixture
from gmm_core.reference import sequential_em


@parametrize_with_checks([GaussianMixture(backend="numpy")])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_reference_em_agrees_with_numpy_backend(covariance_type):
    rng = np.random.RandomState(0)
    X = np.concatenate([rng.normal(0, 1, (40, 2)), rng.normal(4, 0.7, (40, 2))])
    gm0 = GaussianMixture(
        2, covariance_type=covariance_type, max_iter=0, random_state=0, backend="numpy"
    ).fit(X)
    from gmm_core.alignment import _full_covariances

    ref = sequential_em(
        X,
        gm0.weights_,
        gm0.means_,
        _full_covariances(gm0),
        covariance_type=covariance_type,
        n_iter=8,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(
            2, covariance_type=covariance_type, max_iter=8, tol=0.0, random_state=0, backend="numpy"
        ).fit(X)
    np.testing.assert_allclose(gm.lower_bounds_, ref.lower_bounds, rtol=1e-10)
    np.testing.assert_allclose(gm.weights_, ref.weights, rtol=1e-9)
    np.testing.assert_allclose(gm.means_, ref.means, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(_full_covariances(gm), ref.covariances, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Bad input: each raises a clear error that says what to change


def _data(n=50, d=2):
    return np.random.RandomState(0).normal(size=(n, d))


@pytest.mark.parametrize(
    ("X", "match"),
    [
        (np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 4.0]]), "NaN"),
        (np.array([[0.0, np.inf], [1.0, 2.0], [3.0, 4.0]]), "infinity"),
        (np.arange(10.0), "Reshape your data"),
        (np.empty((0, 3)), "0 sample"),
        (np.array([["a", "b"], ["c", "d"]]), "Pass only the numeric feature columns"),
    ],
    ids=["nan", "inf", "1-D", "empty", "non-numeric"],
)
def test_bad_data_is_refused_with_the_fix(X, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(1, backend="numpy").fit(X)


def test_more_components_than_samples():
    with pytest.raises(ValueError, match="lower n_components or provide more samples"):
        GaussianMixture(5, backend="numpy").fit(_data(3))


def test_wrong_number_of_features_at_predict():
    gm = GaussianMixture(2, backend="numpy", random_state=0).fit(_data())
    with pytest.raises(ValueError, match="X has 3 features, but GaussianMixture is expecting 2"):
        gm.predict(_data(5, 3))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"n_components": 0}, "'n_components' parameter .* must be an int in the range"),
        ({"covariance_type": "banana"}, "'covariance_type' parameter .* must be a str among"),
        ({"backend": "tpu"}, "'backend' parameter .* must be a str among"),
        ({"reg_covar": -1.0}, "'reg_covar' parameter"),
        ({"weights_init": [0.5, 0.6]}, "divide weights_init by its sum"),
        ({"means_init": [[0.0, 0.0]]}, r"should have the shape of \(2, 2\)"),
        (
            {"precisions_init": [[1.0, 0.0], [1.0, 1.0]], "covariance_type": "full"},
            "should have the shape",
        ),
        ({"precisions_init": [-1.0, 1.0], "covariance_type": "spherical"}, "should be positive"),
    ],
)
def test_invalid_parameters(params, match):
    kwargs = {"n_components": 2, "backend": "numpy", **params}
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kwargs).fit(_data())


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_constant_and_duplicated_data_fit_thanks_to_reg_covar(covariance_type):
    constant = np.ones((30, 3))
    duplicated = np.repeat(_data(3, 3), 10, axis=0)
    for X in (constant, duplicated):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", UserWarning)  # KMeans: fewer distinct points than K
            gm = GaussianMixture(
                2, covariance_type=covariance_type, random_state=0, backend="numpy"
            ).fit(X)
        assert np.isfinite(gm.lower_bound_)
        assert np.isfinite(gm.score_samples(X)).all()
        assert np.isfinite(gm.covariances_).all()


def test_ill_defined_covariance_names_the_fix():
    with pytest.raises(ValueError, match="increase reg_covar"):
        GaussianMixture(
            2, reg_covar=0.0, covariance_type="full", backend="numpy", random_state=0
        ).fit(np.ones((10, 2)))
