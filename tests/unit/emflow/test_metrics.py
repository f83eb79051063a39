"""emflow.metrics: run summary -> Prometheus metrics, to a textfile and to a real Pushgateway."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.ops import http_get, pushgateway

from emflow.config import Settings
from emflow.metrics import (
    METRICS,
    PUSHGATEWAY_JOB,
    MetricsPushError,
    build_registry,
    publish_run_metrics,
)
from emflow.metrics.spec import ROLLBACK_FAMILIES, build_rollback_registry

#: what a retrain run exports (a rollback's two families go to their own group)
RUN_METRICS = set(METRICS) - set(ROLLBACK_FAMILIES)

MODEL = "telemetry-gmm"
RUN_TIME = 1_790_000_000.0


def realistic_summary(**changes):
    summary = {
        "model_name": MODEL,
        "run_key": "scheduled__2026-11-23T00-00-00-00-00-f16325f7",
        "run_id": "scheduled__2026-11-23T00:00:00+00:00",
        "status": "success",
        "failed_step": None,
        "train_seconds": 12.75,
        "n_iter": 37,
        "n_restarts": 4,
        "n_components": 6,
        "restart_lower_bounds": [-5.125, -5.0625, -5.25, -5.0625],
        "winner_lower_bound": -5.0625,
        "holdout_loglik_challenger": -5.09375,
        "holdout_loglik_champion": -5.15625,
        "decision": "promoted",
        "alignment_cost": 0.03125,
        "drift": {"latency_ms": 0.0625, "cpu_util": 0.3125, "score_divergence": 0.046875},
        "rows_validated": 50_000,
        "rows_quarantined": 125,
        "gpu_memory_peak_bytes": 268_435_456,
        "device_peak_bytes": 201_326_592,
        "backend": "cupy",
        "component_weights": [0.5, 0.25, 0.25],
        "alarm_rate": 0.0125,
        "false_alarm_rate": 0.01,
        "alarm_rate_band": [0.0, 0.03125],
    }
    summary.update(changes)
    return summary


def samples_by_name(text: str, model: str = MODEL) -> dict[str, list]:
    """Exposition text -> {metric name: [samples of ``model``]}."""
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") == model:
                found.setdefault(sample.name, []).append(sample)
    return found


def value(samples: dict[str, list], name: str, **labels) -> float:
    matching = [
        s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matching) == 1, (name, labels, samples.get(name))
    return matching[0]


def check_values(samples: dict[str, list], summary: dict, run_time: float) -> None:
    """Every exported value equals what the summary says."""
    assert value(samples, "emflow_retrain_last_run_timestamp_seconds") == run_time
    assert value(samples, "emflow_retrain_last_success_timestamp_seconds") == run_time
    assert value(samples, "emflow_retrain_last_run_success") == 1.0
    assert (
        value(
            samples,
            "emflow_retrain_last_run_info",
            run_key=summary["run_key"],
            run_id=summary["run_id"],  # QA probe: the Airflow run id, to paste into Airflow
            status="success",
            backend="cupy",
            decision="promoted",
            failed_step="",
        )
        == 1.0
    )
    assert value(samples, "emflow_train_duration_seconds", backend="cupy") == 12.75
    assert value(samples, "emflow_em_iterations") == 37
    assert value(samples, "emflow_em_restarts") == 4
    assert value(samples, "emflow_model_components") == 6
    for index, bound in enumerate(summary["restart_lower_bounds"]):
        assert value(samples, "emflow_restart_lower_bound_nats", restart=str(index)) == bound
    assert value(samples, "emflow_winner_lower_bound_nats") == -5.0625
    assert value(samples, "emflow_holdout_log_likelihood_nats", role="challenger") == -5.09375
    assert value(samples, "emflow_holdout_log_likelihood_nats", role="champion") == -5.15625
    assert value(samples, "emflow_promotion_decision", outcome="promoted") == 1.0
    assert value(samples, "emflow_promotion_decision", outcome="rejected") == 0.0
    assert value(samples, "emflow_promotion_decision", outcome="quarantined") == 0.0
    assert value(samples, "emflow_component_alignment_cost") == 0.03125
    assert value(samples, "emflow_feature_drift_psi", feature="cpu_util") == 0.3125
    assert value(samples, "emflow_feature_drift_psi", feature="latency_ms") == 0.0625
    assert len(samples["emflow_feature_drift_psi"]) == 2  # score_divergence is not a feature
    assert value(samples, "emflow_drift_score_divergence") == 0.046875
    assert value(samples, "emflow_validated_rows") == 50_000
    assert value(samples, "emflow_quarantined_rows") == 125
    assert value(samples, "emflow_gpu_memory_peak_bytes") == 268_435_456
    assert value(samples, "emflow_train_device_peak_bytes") == 201_326_592
    assert value(samples, "emflow_component_weight", component="2") == 0.25
    assert value(samples, "emflow_anomaly_alarm_rate") == 0.0125
    assert value(samples, "emflow_anomaly_alarm_rate_bound", bound="target") == 0.01
    assert value(samples, "emflow_anomaly_alarm_rate_bound", bound="low") == 0.0
    assert value(samples, "emflow_anomaly_alarm_rate_bound", bound="high") == 0.03125


# ---------------------------------------------------------------------------------------------
# the METRICS table itself


def test_metrics_table_follows_prometheus_naming():
    registry_names = {family.name for family in build_registry(realistic_summary()).collect()}
    rollback_names = {family.name for family in build_rollback_registry(MODEL, 2).collect()}
    # the table documents exactly what is exported
    assert registry_names == RUN_METRICS and rollback_names == set(ROLLBACK_FAMILIES)
    for name, spec in METRICS.items():
        assert name.startswith("emflow_"), name
        assert spec.type == "gauge", (name, "see the module docstring: per-run gauges only")
        assert not name.endswith("_total"), f"{name}: _total is reserved for counters"
        assert spec.labels[0] == "model", name
        assert spec.help.strip() and spec.source, name
        if "timestamp" in name or "duration" in name:
            assert name.endswith("_seconds"), name
        if "memory" in name:
            assert name.endswith("_bytes"), name
        if "lower_bound" in name or "log_likelihood" in name:
            assert name.endswith("_nats"), name


def test_every_summary_key_in_module_docstring_feeds_a_metric():
    import emflow.metrics as module

    sources = {spec.source for spec in METRICS.values()}
    for key in (
        "train_seconds",
        "n_iter",
        "n_restarts",
        "restart_lower_bounds",
        "winner_lower_bound",
        "holdout_loglik_challenger",
        "decision",
        "alignment_cost",
        "drift",
        "rows_validated",
        "rows_quarantined",
        "gpu_memory_peak_bytes",
        "alarm_rate",
        "alarm_rate_band",
    ):
        assert f"``{key}``" in module.__doc__, key
        assert key in sources, key


# ---------------------------------------------------------------------------------------------
# textfile sink


def test_textfile_holds_every_metric_with_summary_values(tmp_path):
    settings = Settings(home=tmp_path, pushgateway_url=None)
    where = publish_run_metrics(realistic_summary(), settings, now=RUN_TIME)
    assert where == str(settings.metrics_textfile)
    text = settings.metrics_textfile.read_text()
    samples = samples_by_name(text)
    assert set(samples) == RUN_METRICS
    check_values(samples, realistic_summary(), RUN_TIME)
    assert not list(settings.metrics_textfile.parent.glob("*.prom.*")), "temporary file left"


def test_failed_run_keeps_last_success_and_other_models(tmp_path):
    settings = Settings(home=tmp_path, pushgateway_url=None)
    publish_run_metrics(realistic_summary(), settings, now=RUN_TIME)
    publish_run_metrics(
        realistic_summary(model_name="other-gmm", train_seconds=99.0), settings, now=RUN_TIME + 5
    )
    failed = {
        "model_name": MODEL,
        "status": "failed",
        "failed_step": "validate",
        "run_key": "manual__1",
        "rows_validated": 1000,
        "rows_quarantined": 1000,
    }
    publish_run_metrics(failed, settings, now=RUN_TIME + 86_400)

    text = settings.metrics_textfile.read_text()
    samples = samples_by_name(text)
    assert value(samples, "emflow_retrain_last_run_timestamp_seconds") == RUN_TIME + 86_400
    assert value(samples, "emflow_retrain_last_success_timestamp_seconds") == RUN_TIME
    # the last promotion is carried too (EmflowChampionNotRefreshed measures it)
    assert value(samples, "emflow_retrain_last_promotion_timestamp_seconds") == RUN_TIME
    assert value(samples, "emflow_retrain_last_run_success") == 0.0
    info = samples["emflow_retrain_last_run_info"]
    assert [s.labels["failed_step"] for s in info] == ["validate"]  # replaced, not appended
    assert value(samples, "emflow_quarantined_rows") == 1000
    # issue 16.15: the previous run's training numbers no longer look current after a failure
    stale = set(samples) - {
        "emflow_retrain_last_run_timestamp_seconds",
        "emflow_retrain_last_success_timestamp_seconds",
        "emflow_retrain_last_promotion_timestamp_seconds",
        "emflow_retrain_last_run_success",
        "emflow_retrain_last_run_info",
        "emflow_validated_rows",
        "emflow_quarantined_rows",
    }
    assert stale == set(), f"series of the previous run left behind: {sorted(stale)}"
    other = samples_by_name(text, model="other-gmm")
    assert value(other, "emflow_train_duration_seconds", backend="cupy") == 99.0


def test_unreadable_textfile_is_kept_aside_not_deleted(tmp_path):
    settings = Settings(home=tmp_path, pushgateway_url=None)
    settings.metrics_textfile.parent.mkdir(parents=True)
    settings.metrics_textfile.write_text("this is { not exposition format\n")
    publish_run_metrics(realistic_summary(), settings, now=RUN_TIME)
    kept = list(settings.metrics_textfile.parent.glob("emflow.prom.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_text() == "this is { not exposition format\n"
    assert set(samples_by_name(settings.metrics_textfile.read_text())) == RUN_METRICS


@pytest.mark.parametrize(
    ("summary", "error", "words"),
    [
        ({"status": "success"}, ValueError, "model_name"),
        ({"model_name": MODEL}, ValueError, "status"),
        ({"model_name": MODEL, "status": "ok"}, ValueError, "success, failed"),
        ({"model_name": MODEL, "status": "success", "decision": "yes"}, ValueError, "promoted"),
        ({"model_name": MODEL, "status": "success", "n_iter": "12"}, TypeError, "n_iter"),
        ({"model_name": MODEL, "status": "success", "drift": [0.1]}, TypeError, "feature -> PSI"),
        (
            {"model_name": MODEL, "status": "success", "restart_lower_bounds": 3.0},
            TypeError,
            "list of numbers",
        ),
        (
            {"model_name": MODEL, "status": "success", "alarm_rate_band": [0.0]},
            ValueError,
            "[low, high]",
        ),
    ],
)
def test_bad_summary_names_the_key(tmp_path, summary, error, words):
    settings = Settings(home=tmp_path, pushgateway_url=None)
    with pytest.raises(error, match=words):
        publish_run_metrics(summary, settings)
    assert not settings.metrics_textfile.exists()


def test_unreachable_pushgateway_keeps_metrics_in_textfile(tmp_path):
    from support.ops import free_port

    settings = Settings(home=tmp_path, pushgateway_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(MetricsPushError, match="EMFLOW_PUSHGATEWAY"):
        publish_run_metrics(realistic_summary(), settings, attempts=2, retry_wait_seconds=0.01)
    assert set(samples_by_name(settings.metrics_textfile.read_text())) == RUN_METRICS


# ---------------------------------------------------------------------------------------------
# real Pushgateway (Debian prometheus-pushgateway) on 127.0.0.1


@pytest.mark.integration
def test_pushgateway_receives_every_documented_metric(tmp_path):
    with pushgateway(tmp_path) as url:
        settings = Settings(home=tmp_path, pushgateway_url=url)
        summary = realistic_summary()
        where = publish_run_metrics(summary, settings, now=RUN_TIME)
        assert where == f"{url}/metrics/job/{PUSHGATEWAY_JOB}/model/{MODEL}"
        assert not settings.metrics_textfile.exists()

        text = http_get(f"{url}/metrics")
        samples = samples_by_name(text)
        missing = RUN_METRICS - set(samples)
        assert not missing, f"documented metrics not on the gateway: {sorted(missing)}"
        check_values(samples, summary, RUN_TIME)
        assert all(
            s.labels["job"] == PUSHGATEWAY_JOB for series in samples.values() for s in series
        )

        # a failed run later: push-add keeps the last success, replaces the status
        failed = {
            "model_name": MODEL,
            "status": "failed",
            "failed_step": "train",
            "run_key": "scheduled__2026-11-24",
        }
        publish_run_metrics(failed, settings, now=RUN_TIME + 86_400)
        samples = samples_by_name(http_get(f"{url}/metrics"))
        assert value(samples, "emflow_retrain_last_success_timestamp_seconds") == RUN_TIME
        assert value(samples, "emflow_retrain_last_run_timestamp_seconds") == RUN_TIME + 86_400
        assert value(samples, "emflow_retrain_last_run_success") == 0.0
        assert [s.labels["failed_step"] for s in samples["emflow_retrain_last_run_info"]] == [
            "train"
        ]
        # issue 16.15: no series of the successful run is left looking current
        assert {name for name in samples if name.startswith("emflow_")} == {
            "emflow_retrain_last_run_timestamp_seconds",
            "emflow_retrain_last_success_timestamp_seconds",
            "emflow_retrain_last_promotion_timestamp_seconds",
            "emflow_retrain_last_run_success",
            "emflow_retrain_last_run_info",
        }

        # the gateway's own view of the group: one group, job + model grouping key
        groups = json.loads(http_get(f"{url}/api/v1/metrics"))["data"]
        assert [g["labels"] for g in groups] == [{"job": PUSHGATEWAY_JOB, "model": MODEL}]


def test_operator_docs_list_every_metric():
    from support.ops import OPS

    docs = (OPS / "README.md").read_text()
    table = {line.split("`")[1] for line in docs.splitlines() if line.startswith("| `emflow_")}
    assert table == set(METRICS)


def test_a_rejected_run_keeps_the_last_promotion_time_and_a_promotion_moves_it(tmp_path):
    """QA probe: under a lasting drift every retrain succeeded and was rejected, and no alert
    saw it; the last promotion's time is what EmflowChampionNotRefreshed measures."""
    settings = Settings(home=tmp_path, pushgateway_url=None)
    publish_run_metrics(realistic_summary(), settings, now=RUN_TIME)
    rejected = realistic_summary(decision="rejected")
    publish_run_metrics(rejected, settings, now=RUN_TIME + 86_400)
    samples = samples_by_name(settings.metrics_textfile.read_text())
    assert value(samples, "emflow_retrain_last_success_timestamp_seconds") == RUN_TIME + 86_400
    assert value(samples, "emflow_retrain_last_promotion_timestamp_seconds") == RUN_TIME
    publish_run_metrics(realistic_summary(), settings, now=RUN_TIME + 2 * 86_400)
    samples = samples_by_name(settings.metrics_textfile.read_text())
    assert (
        value(samples, "emflow_retrain_last_promotion_timestamp_seconds") == RUN_TIME + 2 * 86_400
    )


def test_a_rollback_publishes_the_serving_version_beside_the_latest_run(tmp_path):
    """QA probe: a rollback published nothing, so the dashboards kept showing the rolled-back
    run as current and no metric named the serving version. A rollback writes its two
    families (its own Pushgateway group) and leaves the latest run's series as they are."""
    from emflow.metrics import publish_rollback_metrics

    settings = Settings(home=tmp_path, pushgateway_url=None)
    publish_run_metrics(realistic_summary(), settings, now=RUN_TIME)
    publish_rollback_metrics(MODEL, "3", settings, now=RUN_TIME + 60)
    publish_rollback_metrics(MODEL, "2", settings, now=RUN_TIME + 120)  # replaces, not appends
    samples = samples_by_name(settings.metrics_textfile.read_text())
    assert value(samples, "emflow_rollback_champion_version") == 2.0
    assert value(samples, "emflow_rollback_last_timestamp_seconds") == RUN_TIME + 120
    check_values(samples, realistic_summary(), RUN_TIME)  # the run's series untouched
    # a later run leaves them, as on a Pushgateway (their own group): v2 still serves
    publish_run_metrics(realistic_summary(decision="rejected"), settings, now=RUN_TIME + 86_400)
    after_run = samples_by_name(settings.metrics_textfile.read_text())
    assert value(after_run, "emflow_rollback_champion_version") == 2.0
