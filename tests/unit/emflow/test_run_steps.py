"""The steps of emflow.run without Airflow: request resolution, split, train, summary of a run."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.batches import three_clusters_batch

from emflow.config import Settings, SettingsError
from emflow.run.params import DEFAULT_PARAMS
from emflow.run.request import (
    WindowError,
    build_request,
    metrics_request_from_context,
    request_from_context,
    run_key_for,
    settings_for,
    window_batches,
)
from emflow.run.split import split_window
from emflow.run.state import RunRequest, Split
from emflow.run.summary import StepOutputs, publish_metrics, run_summary
from emflow.run.train import train_challenger
from emflow.run.validate import rejection_summary, validate_window


@pytest.fixture()
def settings(settings: Settings) -> Settings:
    return settings.ensure_dirs()


def _request(**params) -> RunRequest:
    return build_request(
        params,
        run_id="manual__2026-11-20T00:00:00+00:00",
        logical_date=datetime(2026, 11, 20, 5, tzinfo=UTC),
    )


# ---------------------------------------------------------------------------- request


def test_run_key_is_file_system_safe_stable_and_unique():
    key = run_key_for("scheduled__2026-11-20T00:00:00+00:00")
    assert key == "scheduled__2026-11-20T00-00-00-00-00-f16325f7"
    assert run_key_for("scheduled__2026-11-20T00:00:00+00:00") == key
    assert run_key_for("manual__run-7") == "manual__run-7"  # already safe: unchanged
    # ids that differ only in characters a key cannot hold still get different keys
    twins = ["manual__a:b", "manual__a-b", "manual__a b", "manual__a/b", "manual__a--b"]
    keys = [run_key_for(t) for t in twins]
    assert len(set(keys)) == len(twins)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", k) for k in keys)
    with pytest.raises(ValueError, match="no usable characters"):
        run_key_for("::")


def test_window_defaults_to_the_day_of_the_logical_date():
    request = _request()
    assert (request.window_start, request.window_end) == ("2026-11-20", "2026-11-21")
    assert request.n_components == DEFAULT_PARAMS["n_components"]
    assert request.run_key == "manual__2026-11-20T00-00-00-00-00-3377663e"
    assert request.days == ["2026-11-20"]
    assert RunRequest.from_json(json.loads(json.dumps(request.to_json()))) == request


def test_explicit_window_params_win_over_logical_date_and_asset_events():
    state = build_request(
        {"window_start": "2026-11-01", "window_end": "2026-11-04"},
        run_id="r",
        logical_date=date(2026, 11, 20),
        asset_event_extras=[{"day": "2026-11-10"}],
    )
    assert state.days == ["2026-11-01", "2026-11-02", "2026-11-03"]


def test_asset_event_day_is_used_without_window_params():
    state = build_request(
        {},
        run_id="asset_triggered__x",
        logical_date=None,
        asset_event_extras=[{"day": "2026-11-10"}],
    )
    assert state.days == ["2026-11-10"]


def test_asset_events_folded_into_one_run_span_every_window():
    """Events queued while a run was pending come in one run: none of their days is skipped."""
    extras = [
        {"day": "2026-11-10"},
        {},
        {"window_start": "2026-11-07", "window_end": "2026-11-09"},
        {"day": "2026-11-09"},
    ]
    state = build_request(
        {}, run_id="asset_triggered__y", logical_date=None, asset_event_extras=extras
    )
    assert state.days == ["2026-11-07", "2026-11-08", "2026-11-09", "2026-11-10"]
    with pytest.raises(WindowError, match="asset event day"):
        build_request({}, run_id="z", asset_event_extras=[{"day": "soon"}])


@pytest.mark.parametrize(
    ("params", "kwargs", "error", "match"),
    [
        ({}, {"logical_date": None}, WindowError, "set the window_start parameter"),
        (
            {"window_start": "2026-11-05", "window_end": "2026-11-05"},
            {},
            WindowError,
            "must be after",
        ),
        ({"window_start": "yesterday"}, {}, WindowError, "YYYY-MM-DD"),
        ({"n_components": 0}, {}, ValueError, "n_components must be a positive integer"),
        ({"covariance_type": "banana"}, {}, ValueError, "covariance_type must be one of"),
        ({"backend": "tpu"}, {}, ValueError, "backend must be one of"),
        ({"holdout_fraction": 1.5}, {}, ValueError, "holdout_fraction"),
        ({"promotion_margin": -1}, {}, ValueError, "promotion_margin"),
        ({"n_component": 3}, {}, ValueError, "unknown parameter"),
        (
            {"sample_weight_half_life_days": 0},
            {},
            ValueError,
            "half_life_days must be a number > 0",
        ),
        ({"false_alarm_rate": 1.0}, {}, ValueError, r"false_alarm_rate must be in \(0, 1\)"),
        ({"mode": "rebuild"}, {}, ValueError, "mode must be one of"),
    ],
)
def test_bad_requests_name_the_fix(params, kwargs, error, match):
    kwargs = {"logical_date": date(2026, 11, 20), **kwargs}
    with pytest.raises(error, match=match):
        build_request(params, run_id="r", **kwargs)


def test_promotion_margin_param_overrides_settings(settings):
    assert settings_for(_request(), settings) is settings
    tuned = settings_for(_request(promotion_margin=0.5), settings)
    assert tuned.promotion_margin == 0.5 and tuned.home == settings.home


def test_missing_window_says_where_it_looked(settings):
    with pytest.raises(WindowError, match=r"incoming/<YYYY-MM-DD>/"):
        window_batches(_request(), settings)


def test_window_batches_are_the_days_in_order_that_hold_data_files(settings):
    request = build_request({"window_start": "2026-11-01", "window_end": "2026-11-04"}, run_id="r")
    for day in ("2026-11-02", "2026-11-01"):
        folder = settings.data_root / "incoming" / day
        folder.mkdir(parents=True)
        (folder / "telemetry.parquet").write_bytes(b"x")
    # a day of no data file as the validator lists a batch (notes, files being written): none
    idle = settings.data_root / "incoming" / "2026-11-03"
    (idle / "hour=00").mkdir(parents=True)
    (idle / "notes.txt").write_text("ignored")
    (idle / "hour=00" / ".inflight.parquet").write_bytes(b"x")
    batches = window_batches(request, settings)
    assert [b.name for b in batches] == ["2026-11-01", "2026-11-02"]
    (idle / "hour=00" / "UPPER.PARQUET").write_bytes(b"x")  # any letter case, sub-folders
    assert [b.name for b in window_batches(request, settings)][-1] == "2026-11-03"


def test_a_day_is_checked_as_one_batch_across_its_files(settings):
    """QA probe: the DAG checked each file alone, so a file delivered twice passed (its rows
    duplicated into train and holdout) and a day split into files smaller than min_rows was
    quarantined whole, while ``emflow validate <day folder>`` said the opposite."""
    import validation
    from validation.synthetic import make_telemetry, write_window

    day = "2026-11-20"
    folder = settings.data_root / "incoming" / day
    frame = make_telemetry(3000, day, "2026-11-21", seed=3)
    write_window(frame, settings.data_root, day)
    (folder / "telemetry.parquet").unlink()
    for i, part in enumerate(np.array_split(np.arange(len(frame)), 40)):  # 75 rows each
        frame.iloc[part].to_parquet(folder / f"part-{i:02d}.parquet", index=False)
    request = _request()
    validated = validate_window(request, settings)
    assert validated.rows_validated == 3000 and len(validated.files) == 40
    assert validation.validate_batch(folder).success  # what the CLI checks

    replay = build_request(
        {"window_start": day, "window_end": "2026-11-21"}, run_id="manual__replayed"
    )
    (folder / "part-00-redelivered.parquet").write_bytes((folder / "part-00.parquet").read_bytes())
    with pytest.raises(validation.BatchRejected, match="expect_column_values_to_be_unique"):
        validate_window(replay, settings)
    assert not folder.exists()  # the day went to quarantine whole, every file of it
    moved = settings.data_root / "quarantine" / "manual__replayed" / day
    assert len(list(moved.glob("*.parquet"))) == 41


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
    state = build_request(
        {"window_start": "2026-11-01", "window_end": "2026-11-03"}, run_id="manual__retry"
    )
    for _attempt in range(2):  # the second try finds day 2 only in quarantine
        with pytest.raises(
            validation.BatchRejected, match="expect_column_values_to_be_finite"
        ) as caught:
            validate_window(state, settings)
        assert not list((settings.data_root / "incoming" / "2026-11-02").glob("*.parquet"))
        facts = rejection_summary(caught.value)
        assert (facts["rows_validated"], facts["rows_quarantined"]) == (800, 400)
    quarantined = list((settings.data_root / "quarantine").rglob("*.parquet"))
    assert len(quarantined) == 1 and quarantined[0].parent.name == "2026-11-02"


# ---------------------------------------------------------------------------- split + train


def _validated_state(settings, n_rows=900, seed=3, **params):
    validated, frame = three_clusters_batch(settings, n_rows, seed)
    return _request(**params), validated, frame


def test_split_is_deterministic_disjoint_and_complete(settings):
    request, validated, frame = _validated_state(settings, holdout_fraction=0.25, seed=7)
    split = split_window(request, validated, settings)
    train = pd.read_parquet(split.train_path)
    holdout = pd.read_parquet(split.holdout_path)
    assert (split.n_train, split.n_holdout) == (675, 225) == (len(train), len(holdout))
    assert list(train.columns) == ["f0", "f1"]
    both = pd.concat([train, holdout])
    assert sorted(map(tuple, both.to_numpy())) == sorted(map(tuple, frame[["f0", "f1"]].to_numpy()))
    assert not set(map(tuple, train.to_numpy())) & set(map(tuple, holdout.to_numpy()))
    again = split_window(request, validated, settings)
    pd.testing.assert_frame_equal(pd.read_parquet(again.holdout_path), holdout)
    reseeded = dataclasses.replace(request, seed=8, run_key="other")
    other = split_window(reseeded, validated, settings)
    assert other.n_holdout == 225
    assert not pd.read_parquet(other.holdout_path).equals(holdout)
    assert Split.from_json(json.loads(json.dumps(split.to_json()))) == split  # XCom-able


def test_split_refuses_a_window_too_small_for_the_model(settings):
    request, validated, _ = _validated_state(settings, n_rows=6, n_components=8)
    with pytest.raises(ValueError, match="too few"):
        split_window(request, validated, settings)


def test_train_saves_model_curves_and_logs_cpu_fallback(settings, caplog, capsys):
    import gmm_core

    request, validated, _ = _validated_state(
        settings, n_components=3, n_init=2, max_iter=50, backend="auto"
    )
    split = split_window(request, validated, settings)
    with caplog.at_level(logging.INFO, logger="emflow.run.train"):
        trained = train_challenger(request, split, settings)
    assert trained.backend == "numpy"
    assert "training on the CPU with the NumPy backend" in caplog.text
    assert "Iteration 1" in capsys.readouterr().out  # per-iteration progress in the task log
    assert len(trained.restart_final_lower_bounds) == 2
    assert trained.lower_bound == max(trained.restart_final_lower_bounds)
    model = gmm_core.load_model(trained.model_dir)
    assert model.n_components == 3 and list(model.feature_names_) == ["f0", "f1"]
    curves = json.loads(open(trained.training_json).read())
    assert len(curves["restart_lower_bounds"]) == 2
    assert curves["restart_lower_bounds"][0][-1] == pytest.approx(
        trained.restart_final_lower_bounds[0]
    )
    # where the time went: read and save around the fit, one log line per phase
    assert {"read", "save"} <= set(trained.timings) == set(curves["timings"])
    assert re.search(r"time read +\d", caplog.text) and re.search(r"time save +\d", caplog.text)
    assert re.search(r"iterations \d+, [\d.]+ ms per iteration", caplog.text)
    json.dumps(trained.to_json())  # XCom-able


# ---------------------------------------------------------------------------- summary


def test_summary_of_a_quarantined_run_names_the_failed_step(settings):
    request = _request()
    rejected = {
        "message": "expect_column_values_to_be_finite",
        "failed": ["x"],
        "rows_quarantined": 500,
        "quarantine_dirs": [],
    }
    summary = run_summary(request, StepOutputs(), rejected=rejected, settings=settings)
    assert summary["status"] == "failed" and summary["failed_step"] == "validate"
    assert summary["decision"] == "quarantined" and summary["rows_quarantined"] == 500
    assert summary["model_name"] == settings.model_name


def test_summary_of_a_run_that_failed_in_training(settings):
    request, validated, _ = _validated_state(settings)
    split = Split(train_path="t", holdout_path="h", n_train=1, n_holdout=1, feature_columns=[])
    summary = run_summary(request, StepOutputs(validate=validated, split=split), settings=settings)
    assert summary["failed_step"] == "train" and summary["rows_validated"] == 900
    assert "decision" not in summary and "train_seconds" not in summary


def test_request_from_an_airflow_context_uses_params_dates_and_asset_events():
    from types import SimpleNamespace

    dag_run = SimpleNamespace(
        run_id="asset_triggered__2026-11-21T03:00:00+00:00", dag_id="gmm_retrain"
    )
    context = {
        "dag_run": dag_run,
        "params": {**DEFAULT_PARAMS, "n_init": 5},
        "logical_date": None,
        "data_interval_start": None,
        "triggering_asset_events": {
            "emflow-telemetry": [
                SimpleNamespace(extra={"day": "2026-11-19"}),
                SimpleNamespace(extra={"day": "2026-11-20"}),
            ]
        },
    }
    request = request_from_context(context)
    # both events' days: the run was triggered by two updates
    assert (request.window_start, request.window_end) == ("2026-11-19", "2026-11-21")
    assert request.n_init == 5 and request.dag_id == "gmm_retrain"
    assert request.run_key == "asset_triggered__2026-11-21T03-00-00-00-00-e0393ea8"
    scheduled = {
        **context,
        "triggering_asset_events": {},
        "logical_date": datetime(2026, 11, 18, tzinfo=UTC),
    }
    assert request_from_context(scheduled).window_start == "2026-11-18"


@pytest.mark.slow
def test_auto_backend_trains_on_the_configured_dask_cluster(settings, caplog):
    """EMFLOW_DASK_SCHEDULER (Settings.dask_scheduler) turns backend=auto into the Dask engine,
    with the same model as the single-process NumPy backend."""
    distributed = pytest.importorskip("distributed")
    import gmm_core

    request, validated, _ = _validated_state(
        settings, n_components=3, n_init=2, max_iter=30, backend="auto"
    )
    split = split_window(request, validated, settings)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        on_dask = dataclasses.replace(settings, dask_scheduler=cluster.scheduler_address)
        with caplog.at_level(logging.INFO, logger="emflow.run.train"):
            trained = train_challenger(request, split, on_dask)
    assert trained.backend == "dask"
    assert "training on the Dask cluster" in caplog.text
    numpy_request = dataclasses.replace(request, backend="numpy", run_key="numpy-twin")
    reference = train_challenger(numpy_request, split, settings)
    assert trained.lower_bound == pytest.approx(reference.lower_bound, rel=1e-9)
    a, b = gmm_core.load_model(trained.model_dir), gmm_core.load_model(reference.model_dir)
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-8, atol=1e-10)


def test_a_run_with_an_invalid_window_still_publishes_its_failure(settings):
    from types import SimpleNamespace

    context = {
        "dag_run": SimpleNamespace(
            run_id="manual__2026-11-20T00:00:00+00:00", dag_id="gmm_retrain"
        ),
        "params": {"window_start": "2026-11-05", "window_end": "2026-11-01"},
        "logical_date": datetime(2026, 11, 20, tzinfo=UTC),
    }
    with pytest.raises(ValueError, match="must be after"):
        request_from_context(context)
    request = metrics_request_from_context(context)
    summary = publish_metrics(request, StepOutputs(), settings=settings)
    assert (summary["status"], summary["failed_step"]) == ("failed", "validate")
    assert summary["run_key"] == "manual__2026-11-20T00-00-00-00-00-3377663e"
    text = settings.metrics_textfile.read_text()
    assert 'emflow_retrain_last_run_success{model="telemetry-gmm"} 0.0' in text


def test_pq_and_upper_case_parquet_batches_validate_and_split(settings):
    """Issue 16.3: ``.pq`` / ``.PARQUET`` batches passed validation, then split read them as
    CSV (UnicodeDecodeError): every step reads through the validator's reader now."""
    from validation.synthetic import make_telemetry

    folder = settings.data_root / "incoming" / "2026-11-20"
    folder.mkdir(parents=True)
    frame = make_telemetry(900, "2026-11-20", "2026-11-21", seed=0)  # ids unique in the day
    for i, name in enumerate(("a.pq", "B.PARQUET", "c.Pq")):
        frame.iloc[i * 300 : (i + 1) * 300].to_parquet(folder / name)
    request = _request()
    validated = validate_window(request, settings)
    assert sorted(Path(f).name for f in validated.files) == ["B.PARQUET", "a.pq", "c.Pq"]
    split = split_window(request, validated, settings)
    assert split.n_train + split.n_holdout == 900


def test_a_quarantine_conflict_fails_the_run_without_retry(tmp_path, monkeypatch):
    """Issue 16.9: the validate task met QuarantineConflict as a traceback (and retried)."""
    from emflow.run import steps
    from validation.synthetic import write_bad_batch

    monkeypatch.setenv("EMFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EMFLOW_DATA_ROOT", raising=False)
    source = Settings().data_root / "incoming" / "2026-11-20" / "telemetry.parquet"
    write_bad_batch("duplicate_ids", source, start="2026-11-20", end="2026-11-21")
    request = _request().to_json()
    with pytest.raises(steps.RunRejected, match="expect_column_values_to_be_unique"):
        steps.validate(request)
    # a quarantine refused (here: bytes in the way without a manifest) fails without retry
    quarantined = Settings().data_root / "quarantine"
    (run_dir,) = quarantined.iterdir()
    aside = run_dir / "2026-11-20"
    aside.rename(run_dir / "elsewhere")
    (run_dir / "2026-11-20.manifest.json").unlink()
    aside.mkdir()
    write_bad_batch("nan", source, start="2026-11-20", end="2026-11-21", seed=5)
    with pytest.raises(steps.RunFailed, match="quarantine refused: .* without a manifest"):
        steps.validate(request)


@pytest.mark.parametrize("backend", ["cupy", "multigpu"])
def test_a_gpu_backend_on_a_worker_without_a_gpu_fails_without_retry(
    backend, settings, monkeypatch
):
    """backend=cupy on a worker without a usable GPU was retried three times, with back-off,
    before the run failed: no retry gives the worker a GPU. The step fails at once (RunFailed:
    Airflow's no-retry failure) and names the fix."""
    from emflow.run import steps
    from emflow.run import train as train_module

    monkeypatch.setattr(train_module, "_gpu_unavailable_reason", lambda: "no CUDA GPU (test)")
    request, validated, _ = _validated_state(
        settings, n_components=2, n_init=1, max_iter=5, backend=backend
    )
    split = split_window(request, validated, settings)
    with pytest.raises(SettingsError, match=rf"backend='{backend}' needs a usable GPU .*"
                       r"no CUDA GPU \(test\).* 'gpu' queue.*'auto'"):  # fmt: skip
        train_challenger(request, split, settings)
    # the train task (steps.train) turns it into RunFailed: Airflow's no-retry failure
    monkeypatch.setenv("EMFLOW_HOME", str(settings.home))
    with pytest.raises(steps.RunFailed, match="^configuration: backend="):
        steps.train(request.to_json(), split.to_json())
    assert not (settings.data_root / "models" / request.run_key).exists()


def test_the_train_step_never_saves_a_non_finite_model(settings, monkeypatch):
    """Issue 16.6: a fit with infinite covariances was saved and went on to the registry."""
    import gmm_core

    real_fit = gmm_core.GaussianMixture.fit

    def overflowing_fit(self, X, y=None):
        real_fit(self, X, y)
        self.covariances_ = np.full_like(self.covariances_, np.inf)
        return self

    monkeypatch.setattr(gmm_core.GaussianMixture, "fit", overflowing_fit)
    request, validated, _ = _validated_state(settings, n_components=2, n_init=1, max_iter=5)
    split = split_window(request, validated, settings)
    with pytest.raises(ValueError, match="non-finite covariances_"):
        train_challenger(request, split, settings)
    assert not (settings.data_root / "models" / request.run_key / "model.json").exists()


@pytest.mark.slow  # two retrains through every step into a real MLflow SQLite store (~20 s)
def test_a_backfilled_older_day_does_not_replace_a_newer_champion(settings, monkeypatch):
    """QA probe: a backfill of 11-10 triggered after 11-18 was promoted over 11-18's champion
    (gated on the old day's own holdout), putting an older model in service. It is registered
    with the reason and not promoted; the gate's own verdict is kept in the reason."""
    from emflow.run import steps
    from validation.synthetic import make_telemetry, write_window

    monkeypatch.setenv("EMFLOW_HOME", str(settings.home))  # where the steps' Settings() look
    for day, end, seed in (("2026-11-18", "2026-11-19", 1), ("2026-11-10", "2026-11-11", 2)):
        write_window(make_telemetry(1500, day, end, seed=seed), settings.data_root, day)
    published = {}
    for day in ("2026-11-18", "2026-11-10"):  # the newer day first, then the backfill
        request = build_request({}, run_id=f"backfill__{day}", logical_date=day).to_json()
        validated = steps.validate(request)
        split = steps.split(request, validated["validation"])
        trained = steps.train(request, split)
        evaluated = steps.evaluate(request, split, trained)
        decision = steps.gate(request, trained, evaluated)
        published[day] = steps.publish(request, validated["validation"], split, trained, decision)
    newer, older = published["2026-11-18"], published["2026-11-10"]
    assert newer["promoted"] and newer["version"] == "1"
    assert older["version"] == "2" and older["decision"] == "reject" and not older["promoted"]
    assert "before champion v1's (2026-11-18..2026-11-19)" in older["reason"]
    assert "gate said: promoted" in older["reason"]  # the case: the gate alone would promote
    assert older["champion_version"] == "1"


@pytest.mark.slow  # four retrains and a rollback into a real MLflow SQLite store (~40 s)
def test_a_retrain_of_a_rolled_back_window_does_not_undo_the_rollback(settings, monkeypatch):
    """QA probe: after a rollback from v2 to v1, re-running v2's day (a cleared run, a
    backfill) trained v2's model again and the gate promoted it over the operator's choice.
    Registered, not promoted, with the rollback named; a newer day goes through as any."""
    from emflow.registry.rollback import rollback
    from emflow.run import steps
    from validation.synthetic import make_telemetry, write_window

    monkeypatch.setenv("EMFLOW_HOME", str(settings.home))
    days = ("2026-11-17", "2026-11-18", "2026-11-19")
    for seed, day in enumerate(days, start=1):
        end = f"2026-11-{int(day[-2:]) + 1}"
        write_window(make_telemetry(1500, day, end, seed=seed), settings.data_root, day)

    def retrain(day: str, run_id: str) -> dict:
        request = build_request({}, run_id=run_id, logical_date=day).to_json()
        validated = steps.validate(request)
        split = steps.split(request, validated["validation"])
        trained = steps.train(request, split)
        evaluated = steps.evaluate(request, split, trained)
        decision = steps.gate(request, trained, evaluated)
        return steps.publish(request, validated["validation"], split, trained, decision)

    assert retrain(days[0], "scheduled__1")["promoted"]
    second = retrain(days[1], "scheduled__2")
    assert second["promoted"] and second["version"] == "2"
    rollback(version="1", reason="v2 pages on-call", actor="ops", settings=settings)
    again = retrain(days[1], "manual__rerun")
    assert again["version"] == "3" and not again["promoted"] and again["decision"] == "reject"
    assert "serves by a rollback from v2 (ops at" in again["reason"]
    assert "v2 pages on-call" in again["reason"] and "gate said: promoted" in again["reason"]
    assert again["champion_version"] == "1"
    newer = retrain(days[2], "scheduled__3")
    assert newer["promoted"] and newer["version"] == "4"
