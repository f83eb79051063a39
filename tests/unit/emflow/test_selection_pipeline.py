"""n_components="auto" through the retrain steps: params, train (the sweep), gate, the table."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from support.batches import three_clusters_batch

import gmm_core
from emflow.config import Settings
from emflow.model.evaluation import Evaluation
from emflow.model.gate import gate_models
from emflow.model.selection import validation_split
from emflow.model.telemetry import load_model_dir
from emflow.run.params import add_cli_options, airflow_params, check_params
from emflow.run.request import build_request
from emflow.run.split import split_window
from emflow.run.state import Trained
from emflow.run.train import train_challenger


@pytest.fixture()
def settings(settings: Settings) -> Settings:
    return settings.ensure_dirs()


def _request(**params):
    return build_request(
        params,
        run_id="manual__2026-11-20T00:00:00+00:00",
        logical_date=datetime(2026, 11, 20, 5, tzinfo=UTC),
    )


def _three_clusters(settings, n_rows=900, seed=3):
    return three_clusters_batch(settings, n_rows, seed)[0]


# ---------------------------------------------------------------------------- params


def test_auto_is_accepted_by_the_checks_the_dag_form_and_the_cli():
    merged = check_params({"n_components": "auto", "k_min": 2, "k_max": 6, "criterion": "aic"})
    assert merged["n_components"] == "auto" and (merged["k_min"], merged["k_max"]) == (2, 6)
    with pytest.raises(ValueError, match='positive integer or "auto"'):
        check_params({"n_components": "many"})
    with pytest.raises(ValueError, match="k_min .* must not exceed k_max"):
        check_params({"n_components": "auto", "k_min": 9, "k_max": 3})
    with pytest.raises(ValueError, match="criterion must be one of"):
        check_params({"criterion": "vibes"})
    # model selection weighs rows too: a half-life beside "auto" is taken
    assert (
        check_params({"n_components": "auto", "sample_weight_half_life_days": 3})[
            "sample_weight_half_life_days"
        ]
        == 3
    )
    assert check_params({"n_components": 4, "sample_weight_half_life_days": 3})["n_components"] == 4

    from airflow.sdk import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(airflow_params())
    for good in ("auto", 7):
        params["n_components"] = good
        params.validate()
    for bad in ("many", 0, 257):
        with pytest.raises(ParamValidationError, match="n_components"):
            params["n_components"] = bad
            params.validate()

    parser = argparse.ArgumentParser()
    add_cli_options(parser)
    args = parser.parse_args(["--n-components", "auto", "--k-max", "5", "--criterion", "holdout"])
    assert (args.n_components, args.k_max, args.criterion) == ("auto", 5, "holdout")
    assert parser.parse_args(["--n-components", "3"]).n_components == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--n-components", "many"])


# ---------------------------------------------------------------------------- train


@pytest.mark.parametrize("criterion", ["bic", "holdout"])
def test_train_with_auto_chooses_the_true_k_and_writes_the_table(settings, criterion):
    request = _request(
        n_components="auto", k_min=1, k_max=5, criterion=criterion, n_init=1, backend="numpy"
    )
    split = split_window(request, _three_clusters(settings), settings)
    trained = train_challenger(request, split, settings)
    assert trained.n_components == 3
    model = gmm_core.load_model(trained.model_dir)
    assert model.n_components == 3
    table = json.loads(open(trained.selection_json).read())
    assert table["criterion"] == criterion and table["chosen"]["n_components"] == 3
    assert [r["n_components"] for r in table["rows"]] == [1, 2, 3, 4, 5]
    assert [r["chosen"] for r in table["rows"]] == [False, False, True, False, False]
    assert all(r["holdout_score"] is not None for r in table["rows"])
    csv = pd.read_csv(trained.selection_json.replace(".json", ".csv"))
    np.testing.assert_allclose(csv["bic"], [r["bic"] for r in table["rows"]], rtol=1e-12)
    assert Trained.from_json(json.loads(json.dumps(trained.to_json()))) == trained  # XCom-able

    X = pd.read_parquet(split.train_path).to_numpy()
    if criterion == "bic":
        # the table's BIC is the chosen model's on the train rows, as gmm_core computes it
        chosen = next(r for r in table["rows"] if r["chosen"])
        assert chosen["bic"] == pytest.approx(model.bic(X), rel=1e-9)
        holdout = pd.read_parquet(split.holdout_path).to_numpy()
        assert chosen["holdout_score"] == pytest.approx(model.score(holdout), rel=1e-9)
    else:
        # judged on a seeded fifth of the train rows; the run's holdout is left for the gate
        _, validation = validation_split(len(X), request.seed)
        chosen = next(r for r in table["rows"] if r["chosen"])
        assert chosen["holdout_score"] == pytest.approx(model.score(X[validation]), rel=1e-9)


def test_train_with_auto_and_a_half_life_weighs_every_candidate(settings):
    """n_components="auto" beside sample_weight_half_life_days (refused before the sweep took
    weights): the table is GaussianMixtureSelect's on the train rows with their time decay."""
    from emflow.run.train import decay_weights

    request = _request(
        n_components="auto", k_min=1, k_max=4, n_init=1, backend="numpy",
        sample_weight_half_life_days=0.5,
    )  # fmt: skip
    validated, frame = three_clusters_batch(settings)
    older = settings.data_root / "incoming" / "2026-11-18" / "telemetry.parquet"
    older.parent.mkdir(parents=True)
    shifted = frame.assign(f0=frame["f0"] + 1.5, event_id=frame["event_id"] + len(frame))
    shifted.to_parquet(older, index=False)  # two days ago: weighs 1/16 at this half-life
    validated = dataclasses.replace(
        validated, files=[str(older), *validated.files], rows_validated=2 * len(frame)
    )
    split = split_window(request, validated, settings)
    trained = train_challenger(request, split, settings)
    table = json.loads(open(trained.selection_json).read())
    X = pd.read_parquet(split.train_path).to_numpy(dtype=np.float64)
    weights = decay_weights(np.load(split.train_age_days_path), 0.5)
    assert weights.min() < weights.max()  # the window spans days: the decay weighs them apart
    want = gmm_core.GaussianMixtureSelect(
        range(1, 5), covariance_type=request.covariance_type, random_state=request.seed,
        max_iter=request.max_iter, backend="numpy",
    ).fit(X, sample_weight=weights)  # fmt: skip
    np.testing.assert_allclose([r["bic"] for r in table["rows"]], want.results_["bic"], rtol=1e-9)
    unweighted = want.fit(X).results_["bic"]
    assert not np.allclose([r["bic"] for r in table["rows"]], unweighted, rtol=1e-6)


def test_split_with_auto_only_needs_rows_for_k_min(settings):
    validated = _three_clusters(settings, n_rows=10)
    split = split_window(_request(n_components="auto", k_min=2, k_max=64), validated, settings)
    assert split.n_train == 8
    with pytest.raises(ValueError, match="k_min=9"):
        split_window(_request(n_components="auto", k_min=9, k_max=64), validated, settings)


# ---------------------------------------------------------------------------- gate


def _saved(tmp_path, name, X, k, seed=0):
    model = gmm_core.GaussianMixture(k, random_state=seed, backend="numpy").fit(X)
    folder = tmp_path / name
    gmm_core.save_model(model, folder, feature_names=["f0", "f1"])
    return load_model_dir(folder), folder


def _evaluation(challenger, champion, X_holdout):
    return Evaluation(
        challenger_mean_loglik=float(challenger.score(X_holdout)),
        champion_mean_loglik=float(champion.score(X_holdout)),
        champion_version="1",
        n_holdout=len(X_holdout),
        holdout_sha256="x",
        challenger_aic=0.0,
        challenger_bic=0.0,
        weights=[float(w) for w in challenger.weights_],
    )


def test_a_changed_k_is_gated_on_likelihood_and_reports_unmatched_components(tmp_path):
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [8.0, 8.0], [-8.0, 6.0]])
    X = centers[rng.integers(0, 3, 1200)] + rng.normal(size=(1200, 2))
    X_train, X_holdout = X[:900], X[900:]
    champion, _ = _saved(tmp_path, "champion", X_train, 2)
    challenger, challenger_dir = _saved(tmp_path, "challenger", X_train, 3)
    evaluation = _evaluation(challenger, champion, X_holdout)
    # a threshold no matched pair could meet: with equal K it would reject
    strict = functools.partial(
        gate_models,
        evaluation,
        challenger,
        challenger_dir,
        champion,
        promotion_margin=0.05,
        alignment_threshold=1e-9,
    )
    decision = strict(k_selected=True)  # n_components="auto" chose K = 3
    assert decision.promote and "K changed from 2 to 3" in decision.reason
    assert "alignment threshold was not applied" in decision.reason
    assert not decision.alignment_gated
    assert (decision.n_components, decision.champion_n_components) == (3, 2)
    assert len(decision.unmatched) == 1 and decision.unmatched_champion == []
    assert decision.alignment_mean_cost is not None and decision.alignment_mean_cost > 1e-9
    aligned = load_model_dir(decision.model_dir)
    assert aligned.n_components == 3  # matched components first, the new one last
    np.testing.assert_allclose(aligned.means_[2], challenger.means_[decision.unmatched[0]])

    # fewer components than the champion: the champion's extra one is retired, and a
    # challenger worse than the margin is still rejected
    worse = gate_models(
        _evaluation(champion, challenger, X_holdout),
        champion,
        tmp_path / "champion",
        challenger,
        promotion_margin=0.05,
        alignment_threshold=1e-9,
        k_selected=True,
    )
    assert not worse.promote and "worse than the champion" in worse.reason
    assert len(worse.unmatched_champion) == 1 and worse.unmatched == []

    # a fixed n_components unlike the champion's K keeps the alignment threshold (QA probe: an
    # operator's trial with K = 5 passed a regime shift that K = 4 was rejected for)
    fixed = strict()
    assert not fixed.promote and fixed.alignment_gated
    assert "components moved too far" in fixed.reason and "by a fixed n_components" in fixed.reason

    # the same K keeps the alignment threshold in the rule
    same, same_dir = _saved(tmp_path, "same", X_train, 2, seed=1)
    kept = gate_models(
        _evaluation(same, champion, X_holdout),
        same,
        same_dir,
        champion,
        promotion_margin=0.05,
        alignment_threshold=1e-12,
    )
    assert kept.alignment_gated
    if kept.alignment_mean_cost > 1e-12:
        assert not kept.promote and "components moved too far" in kept.reason


# ---------------------------------------------------------------------------- MLflow plot


def test_selection_plot_and_metrics_from_the_table(tmp_path):
    from emflow.model import plots
    from emflow.model.selection import selection_rows, write_selection
    from emflow.registry.run_record import _selection, _selection_metrics

    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(c, 0.5, size=(150, 2)) for c in (-4.0, 0.0, 4.0)])
    selector = gmm_core.GaussianMixtureSelect(
        [1, 2, 3, 4, 500], random_state=0, backend="numpy"
    ).fit(X, X_holdout=X[::3])
    path = write_selection(selector, tmp_path)
    selection = _selection({"selection_json": str(path)})
    assert selection["rows"] == json.loads(json.dumps(selection_rows(selector)))
    assert selection["rows"][-1]["failed"] and selection["rows"][-1]["bic"] is None
    png = plots.selection_curves(selection["rows"], tmp_path / "s.png", criterion="bic")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = _selection_metrics(selection)
    bic = {step: value for key, value, step in metrics if key == "selection_bic"}
    assert bic == pytest.approx(
        {
            int(k): b
            for k, b in zip(
                selector.results_["n_components"], selector.results_["bic"], strict=True
            )
            if k < 500
        }
    )
    assert _selection({"selection_json": None}) is None
