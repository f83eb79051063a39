"""Drift against a stored reference window: PSI, Wasserstein-1 and log-likelihood score drift."""

from __future__ import annotations

import json

import numpy as np
import pytest

from validation.contract import DriftThresholds, load_contract
from validation.drift import (
    drift_report,
    jensen_shannon,
    psi,
    read_reference,
    summarize_reference,
    write_reference,
)
from validation.synthetic import FEATURE_COLUMNS, make_telemetry

FEATURES = list(FEATURE_COLUMNS)
REFERENCE_WINDOW = ("2026-11-01", "2026-11-02")
BATCH_WINDOW = ("2026-11-02", "2026-11-03")


@pytest.fixture(scope="module")
def reference_rows():
    return make_telemetry(5000, *REFERENCE_WINDOW, seed=0)


@pytest.fixture(scope="module")
def champion(reference_rows):
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(4, covariance_type="full", random_state=0).fit(
        reference_rows[FEATURES].to_numpy()
    )


@pytest.fixture(scope="module")
def reference(reference_rows, champion):
    # stored beside the champion as JSON: the report must work from the JSON round trip
    return json.loads(json.dumps(summarize_reference(reference_rows, FEATURES, model=champion)))


def test_resample_of_the_reference_is_not_flagged(reference, reference_rows, champion):
    rng = np.random.default_rng(1)
    for n_rows in (500, 2000):
        resample = reference_rows.iloc[rng.choice(len(reference_rows), n_rows, replace=True)]
        report = drift_report(reference, resample, model=champion)
        assert not report.drifted, report.summary
        assert report.max_psi < 0.05 and report.max_wasserstein_std < 0.15
        assert report.score.js_divergence < 0.01


def test_fresh_draw_of_the_same_process_is_not_flagged(reference, champion):
    for seed in (5, 6, 7):
        batch = make_telemetry(2000, *BATCH_WINDOW, seed=seed)
        assert not drift_report(reference, batch, model=champion).drifted


def test_shifted_distribution_is_flagged(reference, champion):
    batch = make_telemetry(2000, *BATCH_WINDOW, seed=5, shift=1.5)
    report = drift_report(reference, batch, model=champion)
    assert report.drifted
    limits = load_contract().drift
    assert report.thresholds == limits
    assert set(report.drifted_features) == set(FEATURES)
    assert all(f.psi > limits.psi for f in report.features.values())
    assert report.score.drifted and report.score.js_divergence > limits.score_divergence
    assert report.score.mean_shift < -1.0  # the champion explains the shifted batch worse
    assert any("PSI" in reason for reason in report.reasons)
    assert "DRIFTED" in report.summary


def test_shift_in_one_feature_names_that_feature(reference, reference_rows):
    batch = reference_rows.sample(2000, random_state=3).copy()
    batch["temp_c"] = batch["temp_c"] + 8.0
    report = drift_report(reference, batch)
    assert report.drifted_features == ["temp_c"]
    assert report.score is None  # no model given


def test_thresholds_come_from_configuration(reference, reference_rows):
    batch = reference_rows.sample(1000, random_state=4)
    assert not drift_report(reference, batch).drifted
    strict = drift_report(reference, batch, thresholds={"psi": 1e-6})
    assert strict.drifted and strict.thresholds.psi == 1e-6
    lax = DriftThresholds(psi=50.0, wasserstein=50.0, score_divergence=1.0)
    shifted = make_telemetry(1000, *BATCH_WINDOW, seed=2, shift=1.5)
    assert not drift_report(reference, shifted, thresholds=lax).drifted


def test_reference_scores_can_be_given_directly(reference_rows, champion):
    bare = summarize_reference(reference_rows, FEATURES)  # no model: no stored scores
    batch = make_telemetry(1500, *BATCH_WINDOW, seed=8, shift=2.0)
    with pytest.raises(ValueError, match="reference_scores="):
        drift_report(bare, batch, model=champion)
    scores = champion.score_samples(reference_rows[FEATURES].to_numpy())
    report = drift_report(bare, batch, model=champion, reference_scores=scores)
    assert report.score.drifted
    same = drift_report(
        bare, reference_rows.sample(1500, random_state=0), model=champion, reference_scores=scores
    )
    assert not same.score.drifted


def test_report_dict_is_json_and_arrays_work(reference, reference_rows):
    matrix = reference_rows[FEATURES].to_numpy()[:1500]
    report = drift_report(reference, matrix)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["drifted"] is False
    assert set(data["features"]) == set(FEATURES)
    assert data["max_psi"] == pytest.approx(max(f["psi"] for f in data["features"].values()))
    with pytest.raises(ValueError, match="lacks feature column"):
        drift_report(reference, reference_rows.drop(columns=["mem_util"]))


def test_psi_and_js_basics():
    uniform = np.full(10, 0.1)
    assert psi(uniform, uniform) == 0.0
    assert jensen_shannon(uniform, uniform) == 0.0
    disjoint_p, disjoint_q = np.r_[1.0, 0.0], np.r_[0.0, 1.0]
    assert jensen_shannon(disjoint_p, disjoint_q) == pytest.approx(np.log(2))
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * np.log(1.8) - 0.4 * np.log(0.2))


def test_reference_is_stored_beside_the_model(reference, tmp_path):
    assert read_reference(tmp_path) is None
    path = write_reference(reference, tmp_path)
    assert path.name == "reference_summary.json"
    assert read_reference(tmp_path) == reference
    path.write_text(json.dumps({**reference, "version": 99}))
    with pytest.raises(ValueError, match="re-create it"):
        read_reference(tmp_path)


def test_wasserstein_matches_scipy_and_flags_a_shift_on_its_own(reference, reference_rows):
    """W1 against the stored reference quantiles approximates scipy's W1 against the reference
    rows, and a shifted batch is flagged by W1 alone when PSI cannot fire."""
    from scipy.stats import wasserstein_distance

    batch = make_telemetry(2000, *BATCH_WINDOW, seed=5, shift=1.5)
    report = drift_report(reference, batch, thresholds={"psi": 1e9})
    for name in FEATURES:
        exact = wasserstein_distance(batch[name], reference_rows[name])
        got = report.features[name].wasserstein
        assert got == pytest.approx(exact, rel=0.05, abs=1e-3 * reference_rows[name].std())
        assert report.features[name].wasserstein_std == pytest.approx(
            got / reference_rows[name].std(ddof=0), rel=0.02
        )
    assert report.drifted and report.max_psi > 0.2  # PSI is high, but only W1 may flag here
    assert all(
        "W1" in reason or "JS" in reason or "scores" in reason for reason in report.reasons
    ), report.reasons
    assert any("W1" in reason for reason in report.reasons)
