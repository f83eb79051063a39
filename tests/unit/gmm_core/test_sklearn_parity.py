"""gmm_core.GaussianMixture against scikit-learn at the same initialisation and iterations."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from gmm_core import GaussianMixture

COV_TYPES = ["full", "tied", "diag", "spherical"]
INITS = ["kmeans", "k-means++", "random", "random_from_data"]


def _fit_both(X, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = GaussianMixture(backend="numpy", **kwargs).fit(X)
        ref = SkGaussianMixture(**kwargs).fit(X)
    return ours, ref


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("init_params", INITS)
def test_matches_sklearn_float64(blobs, covariance_type, init_params):
    # reg_covar=1e-2: k-means++ and random_from_data start from one sample per component, where
    # a covariance of 1e-6 makes the first step rounding noise (sklearn's uncentred x**2 - mean**2
    # on data offset by 50); gmm_core centres the data, so the two would part on noise alone.
    ours, ref = _fit_both(
        blobs,
        n_components=4,
        covariance_type=covariance_type,
        init_params=init_params,
        random_state=3,
        max_iter=15,
        tol=0.0,
        reg_covar=1e-2,
    )
    assert ours.n_iter_ == ref.n_iter_ == 15
    np.testing.assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=1e-7)
    np.testing.assert_allclose(ours.lower_bounds_, ref.lower_bounds_, rtol=1e-7)
    np.testing.assert_allclose(ours.weights_, ref.weights_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours.covariances_, ref.covariances_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.precisions_, ref.precisions_, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ours.predict(blobs), ref.predict(blobs))
    np.testing.assert_allclose(ours.score_samples(blobs), ref.score_samples(blobs), rtol=1e-6)
    np.testing.assert_allclose(ours.predict_proba(blobs), ref.predict_proba(blobs), atol=1e-6)
    assert ours.bic(blobs) == pytest.approx(ref.bic(blobs), rel=1e-7)
    assert ours.aic(blobs) == pytest.approx(ref.aic(blobs), rel=1e-7)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("init_params", INITS)
def test_float32_stays_float32_and_matches(blobs, covariance_type, init_params):
    X32 = blobs.astype(np.float32)
    kwargs = dict(
        n_components=4,
        covariance_type=covariance_type,
        init_params=init_params,
        random_state=3,
        max_iter=15,
        tol=0.0,
        reg_covar=1e-2,
    )
    ours, _ = _fit_both(X32, **kwargs)
    _, ref64 = _fit_both(blobs, **kwargs)
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert getattr(ours, name).dtype == np.float32, name
    assert ours.score_samples(X32).dtype == np.float32
    # the lower bounds as scikit-learn types them (code calls .round(), .dtype on them)
    ours64, ref32 = _fit_both(blobs, **kwargs)[0], _fit_both(X32, **kwargs)[1]
    for model, dtype in ((ours, np.float32), (ref32, np.float32), (ours64, np.float64)):
        assert type(model.lower_bound_) is dtype, (model, type(model.lower_bound_))
        assert {type(b) for b in model.lower_bounds_} == {dtype}
    # statistics are accumulated in float64 even for float32 data, so a float32 fit tracks
    # scikit-learn's float64 fit (sklearn's own float32 fit is the less accurate of the two)
    np.testing.assert_allclose(ours.lower_bound_, ref64.lower_bound_, rtol=1e-4)
    np.testing.assert_allclose(ours.means_, ref64.means_, rtol=1e-3)
    assert (ours.predict(X32) == ref64.predict(blobs)).mean() >= 0.999


def test_restarts_keep_the_best_like_sklearn(blobs):
    # restarts from random responsibilities land on different optima; the best must win
    kwargs = dict(
        n_components=6,
        covariance_type="diag",
        init_params="random",
        random_state=7,
        max_iter=60,
        n_init=4,
        tol=1e-6,
    )
    ours, ref = _fit_both(blobs, **kwargs)
    finals = [b[-1] for b in ours.restart_lower_bounds_]
    assert len(finals) == 4
    assert ours.lower_bound_ == pytest.approx(max(finals))
    np.testing.assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=1e-9)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-7, atol=1e-7)
    # every restart is the same as an independent one-restart sklearn fit drawn in sequence
    rng = np.random.RandomState(7)
    for r in range(4):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            single = SkGaussianMixture(**{**kwargs, "n_init": 1, "random_state": rng}).fit(blobs)
        np.testing.assert_allclose(ours.restart_lower_bounds_[r], single.lower_bounds_, rtol=1e-9)


def test_convergence_and_warning(blobs):
    gm = GaussianMixture(4, random_state=0, backend="numpy", tol=1e-3).fit(blobs)
    ref = SkGaussianMixture(4, random_state=0, tol=1e-3).fit(blobs)
    assert gm.converged_ and gm.n_iter_ == ref.n_iter_
    with pytest.warns(ConvergenceWarning, match="increase max_iter"):
        GaussianMixture(4, random_state=0, backend="numpy", max_iter=2, tol=0).fit(blobs)


def test_user_initial_parameters(blobs):
    rng = np.random.RandomState(0)
    means_init = blobs[rng.choice(len(blobs), 3, replace=False)]
    kwargs = dict(
        n_components=3,
        covariance_type="full",
        max_iter=10,
        tol=0.0,
        weights_init=[0.2, 0.3, 0.5],
        means_init=means_init,
        precisions_init=np.stack([np.eye(3) * 0.5] * 3),
        random_state=0,
    )
    ours, ref = _fit_both(blobs, **kwargs)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-8)
    np.testing.assert_allclose(ours.lower_bounds_, ref.lower_bounds_, rtol=1e-10)


def test_warm_start_continues_like_sklearn(blobs):
    kwargs = dict(
        n_components=4, covariance_type="diag", max_iter=3, tol=0.0, random_state=1, warm_start=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = GaussianMixture(backend="numpy", **kwargs)
        ref = SkGaussianMixture(**kwargs)
        for _ in range(3):
            ours.fit(blobs)
            ref.fit(blobs)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-9)
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-10)


def test_max_iter_zero_only_initialises(blobs):
    ours, ref = _fit_both(blobs, n_components=4, max_iter=0, random_state=0)
    assert ours.n_iter_ == 0 and not ours.converged_
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-9)


def test_sample_matches_sklearn(blobs):
    for cov in COV_TYPES:
        ours, ref = _fit_both(blobs, n_components=3, covariance_type=cov, random_state=0)
        Xo, yo = ours.sample(50)
        Xr, yr = ref.sample(50)
        np.testing.assert_array_equal(yo, yr)
        np.testing.assert_allclose(Xo, Xr, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n_init", [1, 3])
@pytest.mark.parametrize("verbose", [1, 2])
def test_verbose_output_is_scikit_learns_line_for_line(blobs, capsys, n_init, verbose):
    """QA probe: with n_init > 1 every "Initialization r" header came first, then one
    "Iteration" line of comma-joined changes for all restarts, and the first change read nan
    (scikit-learn: inf). The lines now match scikit-learn's but for the times."""
    kw = dict(
        n_components=3, verbose=verbose, verbose_interval=1, max_iter=30, tol=1e-4,
        random_state=0, n_init=n_init,
    )  # fmt: skip
    GaussianMixture(backend="numpy", **kw).fit(blobs)
    ours = capsys.readouterr().out
    SkGaussianMixture(**kw).fit(blobs)
    theirs = capsys.readouterr().out

    def untimed(text):
        lines = [re.sub(r"time lapse [0-9.e-]+s", "time lapse T", ln) for ln in text.splitlines()]
        return [
            re.sub(r"(ll change|lower bound) (-?[0-9]+\.[0-9]+|inf)", _rounded, ln) for ln in lines
        ]

    assert untimed(ours) == untimed(theirs)
    assert ("ll change inf" in ours) == (verbose >= 2)


def _rounded(match):
    value = match.group(2)
    return f"{match.group(1)} {value if value == 'inf' else f'{float(value):.3f}'}"


def test_backend_auto_falls_back_to_numpy_without_gpu(blobs, caplog):
    from gmm_core._engine import cupy_unavailable_reason

    if cupy_unavailable_reason() is None:
        pytest.skip("a GPU is usable here; the fallback is exercised on machines without one")
    with caplog.at_level("INFO", logger="gmm_core"):
        gm = GaussianMixture(2, backend="auto", random_state=0).fit(blobs)
    assert gm.backend_ == "numpy"
    assert "uses NumPy" in caplog.text
    with pytest.raises(RuntimeError, match="backend='auto'"):
        GaussianMixture(2, backend="cupy").fit(blobs)


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_a_variance_rounded_below_zero_is_zero_and_gets_reg_covar(covariance_type):
    """A component on one sample away from the data mean: float32 second moments leave its
    variance E[x^2] - mu^2 a little below 0 (rounding); it is 0, so the M-step gives reg_covar
    (what a centred sum gives), and with reg_covar=0 the covariance is still ill-defined."""
    from gmm_core._gaussian import ILL_DEFINED_COVARIANCE, Stats, m_step

    x = np.array([3.1, -4.7, 5.3])  # the one sample of component 1
    x2_f32 = (x.astype(np.float32) ** 2).astype(np.float64) * (1 - 2e-7)  # rounded low
    nk = np.array([[100.0, 1.0]])
    sx = np.stack([np.zeros(3), x])[None]
    sxx_diag = np.stack([np.full(3, 100.0), x2_f32])[None]
    sxx = sxx_diag if covariance_type == "diag" else sxx_diag.sum(-1)
    stats = Stats(np.zeros(1), nk, sx, sxx, 101)
    assert (sxx_diag[0, 1] - x**2 < 0).all()  # what the moments say: below zero
    params = m_step(stats, covariance_type, 1e-6, 0.0, np)
    np.testing.assert_allclose(params.covariances[0, 1], 1e-6, rtol=1e-12)
    assert np.isfinite(params.precisions_cholesky).all()
    with pytest.raises(ValueError, match=ILL_DEFINED_COVARIANCE[:40]):
        m_step(stats, covariance_type, 0.0, 0.0, np)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
@pytest.mark.parametrize("backend", ["numpy", "select"])
def test_a_component_left_without_samples_sits_where_scikit_learns_does(covariance_type, backend):
    """Three distinct points for four components: one component ends with (almost) no
    responsibility. scikit-learn's mean sum r x / (N_k + eps) puts it at the origin; centred
    statistics had put it at the data mean (6, 2), where it took new points near that mean
    (predict 3 instead of 0, score -25 instead of -5e6: found by a QA probe)."""
    from gmm_core import GaussianMixtureSelect

    X = np.repeat([[0.0, 0.0], [5.0, 5.0], [10.0, 0.0]], [5, 10, 10], axis=0)
    kwargs = dict(covariance_type=covariance_type, random_state=0)
    ref = SkGaussianMixture(4, **kwargs).fit(X)
    if backend == "numpy":
        ours = GaussianMixture(4, backend="numpy", **kwargs).fit(X)
    else:  # the padded sweep's M-step (K = 4 beside K = 2 and 1)
        ours = GaussianMixtureSelect([1, 2, 4], backend="numpy", criterion="aic", **kwargs)
        ours = ours.fit(X).best_estimator_
        assert ours.n_components == 4
    np.testing.assert_allclose(ours.weights_, ref.weights_, rtol=1e-6, atol=1e-20)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ours.covariances_, ref.covariances_, rtol=1e-6, atol=1e-12)
    new = np.array([[6.0, 2.0], [0.1, -0.1], [5.0, 4.0], [6.0, 2.5]])
    np.testing.assert_array_equal(ours.predict(new), ref.predict(new))
    np.testing.assert_allclose(ours.score_samples(new), ref.score_samples(new), rtol=1e-7)
