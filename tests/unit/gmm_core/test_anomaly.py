"""Calibrated anomaly thresholds: a known distribution, exact p-values, save/load.

Reference: a single Gaussian, whose negative log-likelihood is ``c + chi2_D / 2`` (scipy), so
the threshold at a false-alarm rate is known in closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.exceptions import NotFittedError

from gmm_core import GaussianMixture, load_model, save_model
from gmm_core.anomaly import calibrate, p_values

D = 3
MU = np.array([1.0, -2.0, 0.5])
SIGMA = np.array([[2.0, 0.3, 0.0], [0.3, 1.0, -0.4], [0.0, -0.4, 1.5]])


def _true_gaussian() -> GaussianMixture:
    """The data's own distribution as a fitted one-component model (no estimation error)."""
    model = GaussianMixture(1, covariance_type="full", backend="numpy")
    precision = np.linalg.inv(SIGMA)
    model.weights_ = np.ones(1)
    model.means_ = MU[None]
    model.covariances_ = SIGMA[None]
    model.precisions_ = precision[None]
    model.precisions_cholesky_ = np.linalg.cholesky(precision)[None]
    model.n_features_in_ = D
    model.converged_, model.n_iter_, model.lower_bound_ = True, 1, 0.0
    return model


def test_threshold_and_false_alarm_rate_on_a_known_gaussian():
    rng = np.random.default_rng(0)
    n_cal, n_fresh, rate = 20_000, 20_000, 0.01
    model = _true_gaussian().calibrate_threshold(
        rng.multivariate_normal(MU, SIGMA, n_cal), false_alarm_rate=rate
    )
    # closed form: NLL = D/2 log(2 pi) + 1/2 log det Sigma + chi2_D / 2
    const = 0.5 * D * math.log(2 * math.pi) + 0.5 * np.linalg.slogdet(SIGMA)[1]
    exact = const + 0.5 * stats.chi2.ppf(1 - rate, D)
    # standard error of an empirical quantile: sqrt(p (1 - p) / n) / density at the quantile
    density = 2 * stats.chi2.pdf(2 * (exact - const), D)
    se = math.sqrt(rate * (1 - rate) / n_cal) / density
    assert abs(model.threshold_ - exact) < 4 * se

    fresh = model.score_anomaly(rng.multivariate_normal(MU, SIGMA, n_fresh))
    # the flag rate varies with the fresh sample and with the calibrated threshold alike
    band = 4 * math.sqrt(rate * (1 - rate) * (1 / n_fresh + 1 / n_cal))
    assert abs(fresh.is_anomaly.mean() - rate) < band
    # p-values of normal rows are uniform: P(p <= a) ~ a at a few levels
    for level in (0.01, 0.05, 0.2, 0.5):
        sd = math.sqrt(level * (1 - level) * (1 / n_fresh + 1 / n_cal))
        assert abs((fresh.p_value <= level).mean() - level) < 4 * sd + 1 / n_cal
    # the score is the negative log-likelihood, scipy's
    rows = rng.multivariate_normal(MU, SIGMA, 5)
    nll = -stats.multivariate_normal(MU, SIGMA).logpdf(rows)
    np.testing.assert_allclose(model.score_anomaly(rows).score, nll, rtol=1e-12)


def test_outliers_get_small_p_values_and_flags():
    rng = np.random.default_rng(1)
    model = _true_gaussian().calibrate_threshold(rng.multivariate_normal(MU, SIGMA, 5000), 0.01)
    far = MU + 10.0 * np.sqrt(np.diag(SIGMA))
    result = model.score_anomaly(np.stack([MU, far]))
    assert list(result.is_anomaly) == [False, True]
    assert result.p_value[0] > 0.5 and result.p_value[1] == pytest.approx(1 / 5001)


def test_p_values_equal_the_empirical_count_at_stored_order_statistics():
    scores = np.random.default_rng(2).gamma(2.0, size=5000)
    calibration = calibrate(scores, 0.05)
    assert len(calibration.quantiles) < 450  # a table, not the scores
    ordered = np.sort(scores)
    at = ordered[calibration.ranks]
    expected = (1 + (scores[None, :] >= at[:, None]).sum(axis=1)) / (len(scores) + 1)
    np.testing.assert_allclose(p_values(calibration, at), expected, rtol=1e-12)
    # the threshold is the conformal order statistic: ceil((n + 1)(1 - a))-th smallest
    assert calibration.threshold == ordered[math.ceil(5001 * 0.95) - 1]
    assert (scores > calibration.threshold).mean() <= 0.05


def test_calibration_survives_save_and_load(tmp_path):
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(0, 1, (800, 2)), rng.normal(5, 1, (800, 2))])
    model = GaussianMixture(2, random_state=0, backend="numpy").fit(X[::2])
    model.calibrate_threshold(X[1::2], false_alarm_rate=0.02)
    save_model(model, tmp_path)
    document = (tmp_path / "model.json").read_text()
    assert '"anomaly"' in document and str(X[1, 0]) not in document  # quantiles, not rows
    loaded = load_model(tmp_path)
    assert loaded.threshold_ == model.threshold_ and loaded.false_alarm_rate_ == 0.02
    probe = rng.normal(2.5, 3.0, (300, 2))
    got, want = loaded.score_anomaly(probe), model.score_anomaly(probe)
    np.testing.assert_array_equal(got.p_value, want.p_value)
    np.testing.assert_array_equal(got.is_anomaly, want.is_anomaly)


def test_bad_calibration_requests_name_the_fix():
    model = _true_gaussian()
    X = np.random.default_rng(4).multivariate_normal(MU, SIGMA, 50)
    with pytest.raises(ValueError, match="give at least 999 held-out rows"):
        model.calibrate_threshold(X, false_alarm_rate=0.001)
    with pytest.raises(ValueError, match=r"false_alarm_rate must be in \(0, 1\)"):
        model.calibrate_threshold(X, false_alarm_rate=1.5)
    with pytest.raises(NotFittedError, match="calibrate_threshold"):
        model.score_anomaly(X)


def test_p_values_are_the_counts_where_ranks_are_stored_and_agree_with_the_flags():
    """QA probe: between consecutive stored ranks the p-value was interpolated as if the score
    sat at the lower rank, one calibration score too many: rows flagged at rate 0.1 got 0.105
    (0.01046 at rate 0.01), so ``p_value <= false_alarm_rate`` disagreed with ``is_anomaly``."""
    from gmm_core.anomaly import calibrate, p_values

    def brute(calibration_scores, s):
        return (1 + (calibration_scores[None, :] >= s[:, None]).sum(1)) / (
            len(calibration_scores) + 1
        )

    small = np.arange(1, 100, dtype=float)  # every rank stored
    cal = calibrate(small, 0.1)
    probe = np.linspace(-1, 101, 409)
    np.testing.assert_allclose(p_values(cal, probe), brute(small, probe), rtol=0, atol=1e-12)

    rng = np.random.default_rng(7)
    scores = rng.normal(size=2000)
    cal = calibrate(scores, 0.01)
    fresh = rng.normal(size=20000) * 1.3
    p = p_values(cal, fresh)
    flagged = fresh > cal.threshold
    assert flagged.any() and (p[flagged] <= 0.01).all()
    # where the stored tail's ranks are consecutive, the counts are exact
    dense = cal.quantiles[np.flatnonzero(np.diff(cal.ranks) > 1).max() + 1]
    tail = fresh > dense
    assert tail.sum() > 50
    np.testing.assert_allclose(p[tail], brute(scores, fresh[tail]), rtol=0, atol=1e-12)
    order = np.argsort(fresh)
    assert (np.diff(p[order]) <= 1e-15).all()  # never rises with the score
    gap = np.diff(cal.ranks).max()  # bulk: within the stored ranks' largest gap
    assert np.abs(p - brute(scores, fresh)).max() <= gap / (len(scores) + 1)


def test_too_few_calibration_rows_name_the_fewest_that_resolve_the_rate():
    from gmm_core.anomaly import calibrate

    calibrate(np.arange(99, dtype=float), 0.01)  # 1 / rate - 1 rows resolve the rate
    with pytest.raises(ValueError, match="give at least 99 held-out rows"):
        calibrate(np.arange(98, dtype=float), 0.01)
