"""A real pipeline run (emflow.run steps, no Airflow) pushes its metrics to a real Debian
Pushgateway; every metric the run's summary feeds is read back with the summary's value."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.ops import http_get, pushgateway

from emflow.config import Settings
from emflow.metrics import METRICS
from emflow.run.evaluate import evaluate_challenger
from emflow.run.gate import gate_challenger
from emflow.run.publish import publish_challenger
from emflow.run.request import build_request
from emflow.run.split import split_window
from emflow.run.summary import StepOutputs, publish_metrics
from emflow.run.train import train_challenger
from emflow.run.validate import validate_window

# metric -> the summary key (and label) its value comes from, for the scalar ones
SCALARS = {
    "emflow_train_duration_seconds": "train_seconds",
    "emflow_em_iterations": "n_iter",
    "emflow_em_restarts": "n_restarts",
    "emflow_winner_lower_bound_nats": "winner_lower_bound",
    "emflow_component_alignment_cost": "alignment_cost",
    "emflow_validated_rows": "rows_validated",
    "emflow_quarantined_rows": "rows_quarantined",
    "emflow_gpu_memory_peak_bytes": "gpu_memory_peak_bytes",
    "emflow_drift_score_divergence": "drift",
}


def run_pipeline(settings: Settings, day: date, seed: int) -> dict:
    from validation.synthetic import make_telemetry, write_window

    frame = make_telemetry(2000, str(day), str(day + timedelta(days=1)), seed=seed)
    write_window(frame, settings.data_root, day)
    request = build_request(
        {"n_components": 3, "n_init": 2, "max_iter": 50},
        run_id=f"manual__{day}",
        logical_date=datetime(day.year, day.month, day.day, tzinfo=UTC),
    )
    validated = validate_window(request, settings)
    split = split_window(request, validated, settings)
    trained = train_challenger(request, split, settings)
    evaluated = evaluate_challenger(request, split, trained, settings)
    decision = gate_challenger(request, trained, evaluated, settings)
    publication = publish_challenger(request, validated, split, trained, decision, settings)
    outputs = StepOutputs(validated, split, trained, evaluated, decision, publication)
    return publish_metrics(request, outputs, settings=settings)


def gateway_samples(url: str, model: str) -> dict[str, list]:
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(http_get(f"{url}/metrics")):
        for sample in family.samples:
            if sample.labels.get("model") == model:
                found.setdefault(sample.name, []).append(sample)
    return found


@pytest.mark.integration
@pytest.mark.slow
def test_pipeline_runs_push_their_metrics_to_a_real_pushgateway(tmp_path):
    with pushgateway(tmp_path) as url:
        settings = Settings(home=tmp_path / "home", pushgateway_url=url).ensure_dirs()
        first = run_pipeline(settings, date(2026, 11, 20), seed=1)
        assert first["status"] == "success" and first["decision"] == "promoted"
        assert first["metrics_target"].startswith(url)
        second = run_pipeline(settings, date(2026, 11, 21), seed=2)  # gated against a champion
        assert second["status"] == "success"

        samples = gateway_samples(url, settings.model_name)
        fed = {name for name, spec in METRICS.items() if spec.source in second}
        assert fed <= set(samples), f"not on the gateway: {sorted(fed - set(samples))}"
        # what a CPU run cannot feed: GPU memory (CuPy backend only) and drift, until the
        # validate step reports it
        assert set(METRICS) - fed <= {
            "emflow_gpu_memory_peak_bytes",
            "emflow_feature_drift_psi",
            "emflow_drift_score_divergence",
            "emflow_train_device_peak_bytes",
            # a rollback's, in their own group (tests/unit/emflow/test_metrics.py)
            "emflow_rollback_last_timestamp_seconds",
            "emflow_rollback_champion_version",
        }

        def value(name, **labels):
            (match,) = [
                s.value
                for s in samples[name]
                if all(s.labels.get(k) == v for k, v in labels.items())
            ]
            return match

        for name, key in SCALARS.items():
            if key in second and key != "drift":
                assert value(name) == pytest.approx(second[key]), name
        assert value("emflow_retrain_last_run_success") == 1.0
        assert value("emflow_retrain_last_success_timestamp_seconds") == value(
            "emflow_retrain_last_run_timestamp_seconds"
        )
        for role in ("challenger", "champion"):
            assert value("emflow_holdout_log_likelihood_nats", role=role) == pytest.approx(
                second[f"holdout_loglik_{role}"]
            )
        assert value("emflow_promotion_decision", outcome=second["decision"]) == 1.0
        for index, bound in enumerate(second["restart_lower_bounds"]):
            assert value("emflow_restart_lower_bound_nats", restart=str(index)) == pytest.approx(
                bound
            )
        for index, weight in enumerate(second["component_weights"]):
            assert value("emflow_component_weight", component=str(index)) == pytest.approx(weight)
        (info,) = samples["emflow_retrain_last_run_info"]
        assert info.labels["run_key"] == second["run_key"] and info.labels["backend"] == "numpy"
        assert info.labels["run_id"] == second["run_id"] != ""  # Airflow's own run id
