"""Issue 18.4 without Airflow: each train row's day through the split, time-decayed weights in the
train step, the anomaly threshold calibrated on half the holdout and checked on the other half,
and the band the gate holds the measured alarm rate to."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from scipy.stats import betabinom

import gmm_core
from emflow.config import Settings
from emflow.model.anomaly import (
    alarm_rate_band,
    calibrate_and_check,
    calibration_rows_needed,
    holdout_halves,
)
from emflow.model.evaluation import Evaluation
from emflow.model.gate import decide
from emflow.run.evaluate import calibrate_challenger
from emflow.run.request import build_request
from emflow.run.split import split_window
from emflow.run.state import Validated
from emflow.run.train import decay_weights, train_challenger
from gmm_core.anomaly import calibrate


@pytest.fixture()
def settings(settings: Settings) -> Settings:
    return settings.ensure_dirs()


def _two_day_window(settings, n_per_day=400, **params):
    """Days 2026-11-19 (rows near (20, 20)) and 2026-11-20 (rows near (0, 0)), one file each."""
    rng = np.random.default_rng(5)
    files = []
    for day, centre in (("2026-11-19", 20.0), ("2026-11-20", 0.0)):
        folder = settings.data_root / "incoming" / day
        folder.mkdir(parents=True, exist_ok=True)
        X = centre + rng.normal(size=(n_per_day, 2))
        path = folder / "telemetry.parquet"
        pd.DataFrame({"f0": X[:, 0], "f1": X[:, 1]}).to_parquet(path, index=False)
        files.append(str(path))
    validated = Validated(
        files=files,
        reports=[],
        rows_validated=2 * n_per_day,
        feature_columns=["f0", "f1"],
        contract="x",
    )
    request = build_request(
        {"window_start": "2026-11-19", "window_end": "2026-11-21", **params},
        run_id="manual__weights",
        logical_date=datetime(2026, 11, 20, tzinfo=UTC),
    )
    return request, validated


def test_split_keeps_each_train_rows_day_out_of_the_features(settings):
    request, validated = _two_day_window(settings)
    split = split_window(request, validated, settings)
    train = pd.read_parquet(split.train_path)
    assert list(train.columns) == ["f0", "f1"]  # the day is not a feature
    ages = np.load(split.train_age_days_path)
    assert ages.shape == (split.n_train,) and ages.dtype == np.int32
    # the older day's rows sit near (20, 20): age 1; the last day's near (0, 0): age 0
    np.testing.assert_array_equal(ages, (train["f0"] > 10.0).to_numpy().astype(np.int32))
    assert 0 < ages.sum() < split.n_train


def test_half_life_weights_are_what_the_fit_sees(settings):
    request, validated = _two_day_window(
        settings,
        n_components=2,
        n_init=1,
        max_iter=30,
        backend="numpy",
        sample_weight_half_life_days=0.5,
    )
    split = split_window(request, validated, settings)
    trained = train_challenger(request, split, settings)
    model = gmm_core.load_model(trained.model_dir)

    X = pd.read_parquet(split.train_path).to_numpy()
    ages = np.load(split.train_age_days_path)
    weights = decay_weights(ages, 0.5)
    assert set(np.unique(weights)) == {1.0, 0.25}  # a day old at a half-life of half a day
    reference = gmm_core.GaussianMixture(
        2, n_init=1, max_iter=30, random_state=request.seed, backend="numpy"
    ).fit(X, sample_weight=weights)
    np.testing.assert_array_equal(model.means_, reference.means_)
    np.testing.assert_array_equal(model.weights_, reference.weights_)
    # the old day's component weighs about 0.25 / 1.25 of the mixture, not half of it
    old = int(np.argmax(model.means_[:, 0]))
    assert model.weights_[old] == pytest.approx(0.2, abs=0.03)
    assert model.metadata_["sample_weight_half_life_days"] == 0.5
    n_old = int(ages.sum())
    kish = (ages.size - n_old + 0.25 * n_old) ** 2 / (ages.size - n_old + 0.0625 * n_old)
    assert model.metadata_["effective_n_train"] == pytest.approx(kish)


def test_without_a_half_life_every_row_weighs_the_same(settings):
    request, validated = _two_day_window(
        settings, n_components=2, n_init=1, max_iter=30, backend="numpy"
    )
    trained = train_challenger(request, split_window(request, validated, settings), settings)
    model = gmm_core.load_model(trained.model_dir)
    old = int(np.argmax(model.means_[:, 0]))
    assert model.weights_[old] == pytest.approx(0.5, abs=0.03)
    assert "sample_weight_half_life_days" not in model.metadata_


# ---------------------------------------------------------------------------- the band


def test_flagged_counts_follow_the_beta_binomial_the_band_is_built_on():
    """Calibrate on n normal scores, count flags among m fresh ones, 4000 times: the counts have
    the beta-binomial law, so the 99.9 % band is exact and not wider than it must be."""
    rng = np.random.default_rng(0)
    n, m, rate = 300, 300, 0.05
    counts = np.empty(4000, dtype=np.int64)
    for i in range(counts.size):
        threshold = calibrate(rng.normal(size=n), rate).threshold
        counts[i] = np.count_nonzero(rng.normal(size=m) > threshold)
    rank = int(np.ceil((n + 1) * (1 - rate)))
    law = betabinom(m, n + 1 - rank, rank)
    for k in (5, 10, 15, 20, 25):
        assert np.mean(counts <= k) == pytest.approx(law.cdf(k), abs=0.025), k
    low, high = alarm_rate_band(n, m, rate)
    outside = np.mean((counts / m < low) | (counts / m > high))
    assert outside <= 0.004  # 0.001 expected
    assert 0.0 < low and high < 0.13  # 0.0067 and 0.123 at these sizes (narrower with more rows)
    # a threshold that really flags 3x the target leaves the band most of the time
    shifted = np.array(
        [
            np.count_nonzero(
                rng.normal(size=m)
                > calibrate(rng.normal(size=n), rate).threshold - 0.61  # ~3x the tail mass
            )
            for _ in range(500)
        ]
    )
    assert np.mean(shifted / m > high) > 0.5


def test_calibration_needs_enough_rows_for_the_rate():
    assert calibration_rows_needed(0.01) == 99
    assert calibration_rows_needed(0.05) == 19
    calibrate(np.arange(99.0), 0.01)  # gmm_core agrees at the boundary
    with pytest.raises(ValueError, match="at least"):
        calibrate(np.arange(98.0), 0.01)


def test_evaluate_calibrates_on_one_half_checks_the_other_and_saves_the_threshold(tmp_path):
    rng = np.random.default_rng(1)
    means = np.array([[0.0, 0.0], [5.0, 5.0]])
    X_train = means[rng.integers(0, 2, 2000)] + rng.normal(size=(2000, 2))
    holdout = means[rng.integers(0, 2, 1001)] + rng.normal(size=(1001, 2))
    model = gmm_core.GaussianMixture(2, random_state=0, backend="numpy").fit(X_train)
    model_dir = tmp_path / "model"
    gmm_core.save_model(model, model_dir, feature_names=["f0", "f1"], metadata={"run": "r"})
    holdout_path = tmp_path / "holdout.parquet"
    pd.DataFrame(holdout, columns=["f0", "f1"]).to_parquet(holdout_path, index=False)
    request = build_request(
        {"false_alarm_rate": 0.05, "seed": 3}, run_id="manual__cal", logical_date="2026-11-20"
    )
    before = Evaluation(-3.0, None, None, 1001, "x", 1.0, 2.0)

    evaluation = calibrate_challenger(model_dir, holdout_path, before, request)

    calibration_rows, check_rows = holdout_halves(1001, 3)
    assert not set(calibration_rows) & set(check_rows)
    assert calibration_rows.size + check_rows.size == 1001
    expected = calibrate(-model.score_samples(holdout[calibration_rows]), 0.05)
    assert evaluation.anomaly_threshold == expected.threshold
    nll_check = -model.score_samples(holdout[check_rows])
    assert evaluation.alarm_rate == np.mean(nll_check > expected.threshold)
    assert evaluation.n_alarm_check == check_rows.size == 501
    assert evaluation.alarm_rate_band == list(alarm_rate_band(500, 501, 0.05))
    assert evaluation.false_alarm_rate == 0.05 and evaluation.challenger_mean_loglik == -3.0
    # the threshold is saved with the model (the pyfunc serves it), metadata kept
    saved = gmm_core.load_model(model_dir)
    assert saved.threshold_ == expected.threshold
    assert saved.anomaly_calibration_.n_calibration == 500
    assert saved.metadata_ == {"run": "r"}
    document = json.loads((model_dir / "model.json").read_text())
    assert document["anomaly"]["false_alarm_rate"] == 0.05


def test_calibrating_and_checking_on_the_same_rows_would_prove_nothing():
    """Why evaluate splits the holdout: on its own calibration rows the threshold flags at most
    the target, whatever the model; on fresh rows from elsewhere it does not."""
    rng = np.random.default_rng(2)
    model = gmm_core.GaussianMixture(1, random_state=0, backend="numpy").fit(
        rng.normal(size=(500, 2))
    )
    wide = 3.0 * rng.normal(size=(2000, 2))  # not what the model was fitted on
    check = calibrate_and_check(model, wide, 0.01, seed=0)
    assert check.within_band  # same distribution on both halves: the threshold holds
    flagged_on_own_rows = model.score_anomaly(wide[holdout_halves(2000, 0)[0]]).is_anomaly
    assert flagged_on_own_rows.mean() <= 0.01
    # calibrated on one distribution, checked on another: out of the band
    model.calibrate_threshold(rng.normal(size=(1000, 2)), false_alarm_rate=0.01)
    flagged = model.score_anomaly(wide[:1000]).is_anomaly.mean()
    low, high = alarm_rate_band(1000, 1000, 0.01)
    assert not low <= flagged <= high


# ---------------------------------------------------------------------------- the gate


def _evaluation(alarm_rate, band=(0.0, 0.03), champion=-10.0, version="3"):
    return Evaluation(
        challenger_mean_loglik=-10.0,
        champion_mean_loglik=champion,
        champion_version=version,
        n_holdout=1000,
        holdout_sha256="x",
        challenger_aic=1.0,
        challenger_bic=2.0,
        false_alarm_rate=None if alarm_rate is None else 0.01,
        alarm_rate=alarm_rate,
        alarm_rate_band=[] if alarm_rate is None else list(band),
        n_alarm_check=500,
    )


@pytest.mark.parametrize(
    ("alarm_rate", "champion", "version", "promote"),
    [
        (0.012, -10.0, "3", True),
        (0.03, -10.0, "3", True),  # at the band's edge
        (0.0302, -10.0, "3", False),
        (0.05, None, None, False),  # also the first model: its threshold would be wrong
        (0.012, None, None, True),
        (None, -10.0, "3", True),  # no threshold calibrated: nothing to check
        (float("nan"), -10.0, "3", False),
    ],
)
def test_gate_holds_the_alarm_rate_to_its_band(alarm_rate, champion, version, promote):
    ok, reason = decide(
        _evaluation(alarm_rate, champion=champion, version=version),
        alignment_mean_cost=0.1,
        promotion_margin=0.05,
        alignment_threshold=0.5,
    )
    assert ok is promote, reason
    if not promote:
        assert "anomaly threshold flags" in reason and "[0.0000, 0.0300]" in reason
        assert "target false-alarm rate 0.01" in reason


@pytest.mark.slow  # creates the MLflow SQLite store (~5 s)
def test_update_mode_without_a_champion_retrains_the_window(settings, caplog):
    """The first run of a family has nothing to update: it fits the window (real SQLite store)."""
    import logging

    request, validated = _two_day_window(
        settings, n_components=2, n_init=1, max_iter=30, backend="numpy", mode="update"
    )
    split = split_window(request, validated, settings)
    with caplog.at_level(logging.WARNING, logger="emflow.run.train"):
        trained = train_challenger(request, split, settings)
    assert "mode=update without a champion: retraining the window" in caplog.text
    assert trained.mode == "retrain" and trained.n_iter > 1
    assert gmm_core.load_model(trained.model_dir).metadata_["mode"] == "retrain"
