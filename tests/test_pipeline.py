"""emflow.pipeline without Airflow: request resolution, split, train, summary of a run."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest

from emflow import pipeline
from emflow.config import Settings


@pytest.fixture()
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path / "home").ensure_dirs()


def _request(**params):
    return pipeline.build_request(params, run_id="manual__2026-11-20T00:00:00+00:00",
                                  logical_date=datetime(2026, 11, 20, 5, tzinfo=UTC))


# ---------------------------------------------------------------------------- request


def test_run_key_is_file_system_safe_stable_and_unique():
    key = pipeline.run_key_for("scheduled__2026-11-20T00:00:00+00:00")
    assert key == "scheduled__2026-11-20T00-00-00-00-00-f16325f7"
    assert pipeline.run_key_for("scheduled__2026-11-20T00:00:00+00:00") == key
    assert pipeline.run_key_for("manual__run-7") == "manual__run-7"  # already safe: unchanged
    # ids that differ only in characters a key cannot hold still get different keys
    twins = ["manual__a:b", "manual__a-b", "manual__a b", "manual__a/b", "manual__a--b"]
    keys = [pipeline.run_key_for(t) for t in twins]
    assert len(set(keys)) == len(twins)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", k) for k in keys)
    with pytest.raises(ValueError, match="no usable characters"):
        pipeline.run_key_for("::")


def test_window_defaults_to_the_day_of_the_logical_date():
    request = _request()["request"]
    assert (request["window_start"], request["window_end"]) == ("2026-11-20", "2026-11-21")
    assert request["n_components"] == pipeline.DEFAULT_PARAMS["n_components"]
    assert request["run_key"] == "manual__2026-11-20T00-00-00-00-00-3377663e"
    assert pipeline.window_days(request) == ["2026-11-20"]


def test_explicit_window_params_win_over_logical_date_and_asset_events():
    state = pipeline.build_request(
        {"window_start": "2026-11-01", "window_end": "2026-11-04"}, run_id="r",
        logical_date=date(2026, 11, 20), asset_event_extras=[{"day": "2026-11-10"}],
    )
    assert pipeline.window_days(state["request"]) == ["2026-11-01", "2026-11-02", "2026-11-03"]


def test_asset_event_day_is_used_without_window_params():
    state = pipeline.build_request({}, run_id="asset_triggered__x", logical_date=None,
                                   asset_event_extras=[{"day": "2026-11-10"}])
    assert pipeline.window_days(state["request"]) == ["2026-11-10"]


def test_asset_events_folded_into_one_run_span_every_window():
    """Events queued while a run was pending come in one run: none of their days is skipped."""
    extras = [{"day": "2026-11-10"}, {}, {"window_start": "2026-11-07", "window_end": "2026-11-09"},
              {"day": "2026-11-09"}]
    state = pipeline.build_request({}, run_id="asset_triggered__y", logical_date=None,
                                   asset_event_extras=extras)
    assert pipeline.window_days(state["request"]) == [
        "2026-11-07", "2026-11-08", "2026-11-09", "2026-11-10"]
    with pytest.raises(pipeline.WindowError, match="asset event day"):
        pipeline.build_request({}, run_id="z", asset_event_extras=[{"day": "soon"}])


@pytest.mark.parametrize(
    ("params", "kwargs", "error", "match"),
    [
        ({}, {"logical_date": None}, pipeline.WindowError, "set the window_start parameter"),
        ({"window_start": "2026-11-05", "window_end": "2026-11-05"}, {},
         pipeline.WindowError, "must be after"),
        ({"window_start": "yesterday"}, {}, pipeline.WindowError, "YYYY-MM-DD"),
        ({"n_components": 0}, {}, ValueError, "n_components must be a positive integer"),
        ({"covariance_type": "banana"}, {}, ValueError, "covariance_type must be one of"),
        ({"backend": "tpu"}, {}, ValueError, "backend must be one of"),
        ({"holdout_fraction": 1.5}, {}, ValueError, "holdout_fraction"),
        ({"promotion_margin": -1}, {}, ValueError, "promotion_margin"),
        ({"n_component": 3}, {}, ValueError, "unknown parameter"),
    ],
)
def test_bad_requests_name_the_fix(params, kwargs, error, match):
    kwargs = {"logical_date": date(2026, 11, 20), **kwargs}
    with pytest.raises(error, match=match):
        pipeline.build_request(params, run_id="r", **kwargs)


def test_promotion_margin_param_overrides_settings(settings):
    assert pipeline.settings_for(_request()["request"], settings) is settings
    tuned = pipeline.settings_for(_request(promotion_margin=0.5)["request"], settings)
    assert tuned.promotion_margin == 0.5 and tuned.home == settings.home


def test_missing_window_says_where_it_looked(settings):
    with pytest.raises(pipeline.WindowError, match=r"incoming/<YYYY-MM-DD>/"):
        pipeline.window_files(_request()["request"], settings)


def test_window_files_lists_each_day_in_order(settings):
    request = pipeline.build_request({"window_start": "2026-11-01", "window_end": "2026-11-03"},
                                     run_id="r")["request"]
    for day in ("2026-11-02", "2026-11-01"):
        folder = settings.data_root / "incoming" / day
        folder.mkdir(parents=True)
        (folder / "telemetry.parquet").write_bytes(b"x")
        (folder / "notes.txt").write_text("ignored")
    files = pipeline.window_files(request, settings)
    assert [f.parent.name for f in files] == ["2026-11-01", "2026-11-02"]
    assert all(f.suffix == ".parquet" for f in files)
    # as the validator lists a batch: any letter case, sub-folders; not files being written
    day = settings.data_root / "incoming" / "2026-11-01"
    (day / "UPPER.PARQUET").write_bytes(b"x")
    (day / "hour=00").mkdir()
    (day / "hour=00" / "nested.csv").write_text("x")
    (day / ".inflight.parquet").write_bytes(b"x")
    names = [f.name for f in pipeline.window_files(request, settings)]
    assert names == ["UPPER.PARQUET", "nested.csv", "telemetry.parquet", "telemetry.parquet"]


def test_retried_validation_meets_the_quarantined_batch_again(settings):
    """A retry of the same run must not train on the rest of a window whose bad day it moved
    to quarantine on the first try."""
    import validation
    from validation.synthetic import make_telemetry, write_window

    for day, bad in (("2026-11-01", False), ("2026-11-02", True)):
        frame = make_telemetry(400, day, f"2026-11-0{int(day[-1]) + 1}", seed=int(day[-1]))
        if bad:
            frame.loc[3, "latency_ms"] = np.inf
        write_window(frame, settings.data_root, day)
    state = pipeline.build_request({"window_start": "2026-11-01", "window_end": "2026-11-03"},
                                   run_id="manual__retry")
    for _attempt in range(2):  # the second try finds day 2 only in quarantine
        with pytest.raises(validation.BatchRejected, match="expect_column_values_to_be_finite") \
                as caught:
            pipeline.validate_window(state, settings)
        assert not list((settings.data_root / "incoming" / "2026-11-02").glob("*.parquet"))
        facts = pipeline.rejection_summary(caught.value)
        assert (facts["rows_validated"], facts["rows_quarantined"]) == (800, 400)
    quarantined = list((settings.data_root / "quarantine").rglob("*.parquet"))
    assert len(quarantined) == 1 and quarantined[0].parent.name == "2026-11-02"


# ---------------------------------------------------------------------------- split + train


def _validated_state(settings, n_rows=900, seed=3, **params):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [8.0, 8.0], [-8.0, 6.0]])
    X = centers[rng.integers(0, 3, n_rows)] + rng.normal(size=(n_rows, 2))
    frame = pd.DataFrame({"event_id": np.arange(n_rows), "f0": X[:, 0], "f1": X[:, 1]})
    folder = settings.data_root / "incoming" / "2026-11-20"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "telemetry.parquet"
    frame.to_parquet(path, index=False)
    state = _request(**params)
    state["validation"] = {"files": [str(path)], "reports": [], "rows_validated": n_rows,
                           "rows_quarantined": 0, "feature_columns": ["f0", "f1"], "contract": "x"}
    return state, frame


def test_split_is_deterministic_disjoint_and_complete(settings):
    state, frame = _validated_state(settings, holdout_fraction=0.25, seed=7)
    split = pipeline.split_window(state, settings)["split"]
    train = pd.read_parquet(split["train_path"])
    holdout = pd.read_parquet(split["holdout_path"])
    assert (split["n_train"], split["n_holdout"]) == (675, 225) == (len(train), len(holdout))
    assert list(train.columns) == ["f0", "f1"]
    both = pd.concat([train, holdout])
    assert sorted(map(tuple, both.to_numpy())) == sorted(map(tuple, frame[["f0", "f1"]].to_numpy()))
    assert not set(map(tuple, train.to_numpy())) & set(map(tuple, holdout.to_numpy()))
    again = pipeline.split_window(state, settings)["split"]
    pd.testing.assert_frame_equal(pd.read_parquet(again["holdout_path"]), holdout)
    reseeded = {**state, "request": {**state["request"], "seed": 8, "run_key": "other"}}
    other = pipeline.split_window(reseeded, settings)["split"]
    assert other["n_holdout"] == 225
    assert not pd.read_parquet(other["holdout_path"]).equals(holdout)


def test_split_refuses_a_window_too_small_for_the_model(settings):
    state, _ = _validated_state(settings, n_rows=6, n_components=8)
    with pytest.raises(ValueError, match="too few"):
        pipeline.split_window(state, settings)


def test_train_saves_model_curves_and_logs_cpu_fallback(settings, caplog, capsys):
    import gmm_core

    state, _ = _validated_state(settings, n_components=3, n_init=2, max_iter=50, backend="auto")
    state = pipeline.split_window(state, settings)
    with caplog.at_level(logging.INFO, logger="emflow.pipeline"):
        trained = pipeline.train_challenger(state, settings)["train"]
    assert trained["backend"] == "numpy"
    assert "training on the CPU with the NumPy backend" in caplog.text
    assert "Iteration 1" in capsys.readouterr().out  # per-iteration progress in the task log
    assert len(trained["restart_final_lower_bounds"]) == 2
    assert trained["lower_bound"] == max(trained["restart_final_lower_bounds"])
    model = gmm_core.load_model(trained["model_dir"])
    assert model.n_components == 3 and list(model.feature_names_) == ["f0", "f1"]
    curves = json.loads(open(trained["training_json"]).read())
    assert len(curves["restart_lower_bounds"]) == 2
    assert curves["restart_lower_bounds"][0][-1] == pytest.approx(
        trained["restart_final_lower_bounds"][0])
    json.dumps(trained)  # XCom-able


# ---------------------------------------------------------------------------- summary


def test_summary_of_a_quarantined_run_names_the_failed_step(settings):
    request = _request()
    rejected = {"message": "expect_column_values_to_be_finite", "failed": ["x"],
                "rows_quarantined": 500, "quarantine_dirs": []}
    summary = pipeline.run_summary(request, dict.fromkeys(pipeline.STEPS), rejected=rejected,
                                   settings=settings)
    assert summary["status"] == "failed" and summary["failed_step"] == "validate"
    assert summary["decision"] == "quarantined" and summary["rows_quarantined"] == 500
    assert summary["model_name"] == settings.model_name


def test_summary_of_a_run_that_failed_in_training(settings):
    state, _ = _validated_state(settings)
    states = dict.fromkeys(pipeline.STEPS)
    states["validate"] = state
    states["split"] = {**state, "split": {}}
    summary = pipeline.run_summary(_request(), states, settings=settings)
    assert summary["failed_step"] == "train" and summary["rows_validated"] == 900
    assert "decision" not in summary and "train_seconds" not in summary


def test_request_from_an_airflow_context_uses_params_dates_and_asset_events():
    from types import SimpleNamespace

    dag_run = SimpleNamespace(run_id="asset_triggered__2026-11-21T03:00:00+00:00",
                              dag_id="gmm_retrain")
    context = {
        "dag_run": dag_run,
        "params": {**pipeline.DEFAULT_PARAMS, "n_init": 5},
        "logical_date": None,
        "data_interval_start": None,
        "triggering_asset_events": {"emflow-telemetry": [
            SimpleNamespace(extra={"day": "2026-11-19"}),
            SimpleNamespace(extra={"day": "2026-11-20"}),
        ]},
    }
    request = pipeline.request_from_context(context)["request"]
    # both events' days: the run was triggered by two updates
    assert (request["window_start"], request["window_end"]) == ("2026-11-19", "2026-11-21")
    assert request["n_init"] == 5 and request["dag_id"] == "gmm_retrain"
    assert request["run_key"] == "asset_triggered__2026-11-21T03-00-00-00-00-e0393ea8"
    scheduled = {**context, "triggering_asset_events": {},
                 "logical_date": datetime(2026, 11, 18, tzinfo=UTC)}
    assert pipeline.request_from_context(scheduled)["request"]["window_start"] == "2026-11-18"


def test_auto_backend_trains_on_the_configured_dask_cluster(settings, caplog):
    """EMFLOW_DASK_SCHEDULER (Settings.dask_scheduler) turns backend=auto into the Dask engine,
    with the same model as the single-process NumPy backend."""
    import dataclasses

    distributed = pytest.importorskip("distributed")
    import gmm_core

    state, _ = _validated_state(settings, n_components=3, n_init=2, max_iter=30, backend="auto")
    state = pipeline.split_window(state, settings)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        on_dask = dataclasses.replace(settings, dask_scheduler=cluster.scheduler_address)
        with caplog.at_level(logging.INFO, logger="emflow.pipeline"):
            trained = pipeline.train_challenger(state, on_dask)["train"]
    assert trained["backend"] == "dask"
    assert "training on the Dask cluster" in caplog.text
    numpy_state = {**state, "request": {**state["request"], "backend": "numpy",
                                        "run_key": "numpy-twin"}}
    reference = pipeline.train_challenger(numpy_state, settings)["train"]
    assert trained["lower_bound"] == pytest.approx(reference["lower_bound"], rel=1e-9)
    a, b = gmm_core.load_model(trained["model_dir"]), gmm_core.load_model(reference["model_dir"])
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-8, atol=1e-10)


def test_a_run_with_an_invalid_window_still_publishes_its_failure(settings):
    from types import SimpleNamespace

    context = {
        "dag_run": SimpleNamespace(run_id="manual__2026-11-20T00:00:00+00:00",
                                   dag_id="gmm_retrain"),
        "params": {"window_start": "2026-11-05", "window_end": "2026-11-01"},
        "logical_date": datetime(2026, 11, 20, tzinfo=UTC),
    }
    with pytest.raises(ValueError, match="must be after"):
        pipeline.request_from_context(context)
    request = pipeline.metrics_request_from_context(context)
    summary = pipeline.publish_run_metrics(request, dict.fromkeys(pipeline.STEPS),
                                           settings=settings)
    assert (summary["status"], summary["failed_step"]) == ("failed", "validate")
    assert summary["run_key"] == "manual__2026-11-20T00-00-00-00-00-3377663e"
    text = settings.metrics_textfile.read_text()
    assert 'emflow_retrain_last_run_success{model="telemetry-gmm"} 0.0' in text
