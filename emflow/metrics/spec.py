"""The exported metrics (:data:`METRICS`) and one run's summary turned into a registry."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)

PUSHGATEWAY_JOB = "emflow_retrain"
#: the rollbacks' own group (a rollback leaves the latest retrain run's series as they are)
ROLLBACK_JOB = "emflow_rollback"
#: families a rollback publishes (:func:`build_rollback_registry`)
ROLLBACK_FAMILIES = (
    "emflow_rollback_last_timestamp_seconds",
    "emflow_rollback_champion_version",
)
#: Families a run leaves as they were when it does not set them (a failed run keeps the last
#: success's time). Every other family of a model holds the latest run's values only: a series
#: the latest run did not produce is removed, so a dashboard never shows a failed run's
#: predecessor as current.
PERSISTENT = (
    "emflow_retrain_last_success_timestamp_seconds",
    "emflow_retrain_last_promotion_timestamp_seconds",
)
STATUSES = ("success", "failed")
DECISIONS = ("promoted", "rejected", "quarantined")


class MetricSpec(NamedTuple):
    """What one exported metric is.

    Attributes
    ----------
    type : str
        Prometheus type (all ``"gauge"``: see the module docstring for why).
    help : str
        The HELP text, with the unit.
    labels : tuple of str
        Label names, ``model`` first.
    source : str
        The ``summary`` key the value comes from.
    """

    type: str
    help: str
    labels: tuple[str, ...]
    source: str


METRICS: dict[str, MetricSpec] = {
    "emflow_retrain_last_run_timestamp_seconds": MetricSpec(
        "gauge",
        "Unix time the latest retrain run finished, whatever its status.",
        ("model",),
        "status",
    ),
    "emflow_retrain_last_success_timestamp_seconds": MetricSpec(
        "gauge",
        "Unix time the latest successful retrain run finished (set on success only).",
        ("model",),
        "status",
    ),
    "emflow_retrain_last_promotion_timestamp_seconds": MetricSpec(
        "gauge",
        "Unix time the latest run that promoted its challenger finished (set on promotion only).",
        ("model",),
        "decision",
    ),
    "emflow_rollback_last_timestamp_seconds": MetricSpec(
        "gauge",
        "Unix time of the latest rollback of the model's champion (job emflow_rollback).",
        ("model",),
        "rollback",
    ),
    "emflow_rollback_champion_version": MetricSpec(
        "gauge",
        "Registry version the latest rollback made champion (job emflow_rollback).",
        ("model",),
        "rollback",
    ),
    "emflow_retrain_last_run_success": MetricSpec(
        "gauge", "1 if the latest retrain run succeeded, 0 if it failed.", ("model",), "status"
    ),
    "emflow_retrain_last_run_info": MetricSpec(
        "gauge",
        "Always 1; labels describe the latest retrain run (run_id: Airflow's run id).",
        ("model", "run_key", "run_id", "status", "failed_step", "backend", "decision"),
        "run_key",
    ),
    "emflow_train_duration_seconds": MetricSpec(
        "gauge",
        "Wall time of the training step (all restarts), seconds.",
        ("model", "backend"),
        "train_seconds",
    ),
    "emflow_em_iterations": MetricSpec(
        "gauge", "EM iterations run by the winning restart.", ("model",), "n_iter"
    ),
    "emflow_model_components": MetricSpec(
        "gauge",
        "Components (K) of the latest trained model; chosen by model selection when the run "
        "asked for n_components=auto.",
        ("model",),
        "n_components",
    ),
    "emflow_em_restarts": MetricSpec(
        "gauge",
        "Number of seeded EM restarts (n_init) in the latest training.",
        ("model",),
        "n_restarts",
    ),
    "emflow_restart_lower_bound_nats": MetricSpec(
        "gauge",
        "Final lower bound of each restart, mean log-likelihood per sample in nats.",
        ("model", "restart"),
        "restart_lower_bounds",
    ),
    "emflow_winner_lower_bound_nats": MetricSpec(
        "gauge",
        "Lower bound of the winning restart, mean log-likelihood per sample in nats.",
        ("model",),
        "winner_lower_bound",
    ),
    "emflow_holdout_log_likelihood_nats": MetricSpec(
        "gauge",
        "Mean holdout log-likelihood per sample in nats; role is challenger or champion.",
        ("model", "role"),
        "holdout_loglik_challenger",
    ),
    "emflow_promotion_decision": MetricSpec(
        "gauge",
        "1 for the promotion gate's outcome of the latest evaluated run, 0 for the others.",
        ("model", "outcome"),
        "decision",
    ),
    "emflow_component_alignment_cost": MetricSpec(
        "gauge",
        "Mean matched Bhattacharyya distance between challenger and champion components.",
        ("model",),
        "alignment_cost",
    ),
    "emflow_feature_drift_psi": MetricSpec(
        "gauge",
        "Population stability index of each feature, new window against the reference.",
        ("model", "feature"),
        "drift",
    ),
    "emflow_drift_score_divergence": MetricSpec(
        "gauge",
        "Jensen-Shannon divergence (nats) of the model's log-likelihood scores, new "
        "window against the reference.",
        ("model",),
        "drift",
    ),
    "emflow_validated_rows": MetricSpec(
        "gauge",
        "Rows checked by the data contract in the latest run.",
        ("model",),
        "rows_validated",
    ),
    "emflow_quarantined_rows": MetricSpec(
        "gauge",
        "Rows of the latest run moved to quarantine by the data contract.",
        ("model",),
        "rows_quarantined",
    ),
    "emflow_gpu_memory_peak_bytes": MetricSpec(
        "gauge", "Peak device memory used by training, bytes.", ("model",), "gpu_memory_peak_bytes"
    ),
    "emflow_train_device_peak_bytes": MetricSpec(
        "gauge",
        "Peak device memory of the latest fit as gmm_core measured it "
        "(device_peak_bytes_), bytes; absent for CPU fits.",
        ("model",),
        "device_peak_bytes",
    ),
    "emflow_anomaly_alarm_rate": MetricSpec(
        "gauge",
        "Share of fresh holdout rows (not used to calibrate it) that the challenger's "
        "anomaly threshold flags, a ratio.",
        ("model",),
        "alarm_rate",
    ),
    "emflow_anomaly_alarm_rate_bound": MetricSpec(
        "gauge",
        "Target false-alarm rate of the challenger's anomaly threshold (bound=target) and the "
        "band its measured alarm rate must lie in (bound=low, high), ratios.",
        ("model", "bound"),
        "alarm_rate_band",
    ),
    "emflow_component_weight": MetricSpec(
        "gauge",
        "Mixing weight of each (aligned) component of the latest trained model.",
        ("model", "component"),
        "component_weights",
    ),
}


# ---------------------------------------------------------------------------------------------
# summary checks


def _number(summary: Mapping[str, Any], key: str) -> float | None:
    """``summary[key]`` as a float, ``None`` when absent; a clear error for anything else."""
    value = summary.get(key)
    if value is None:
        return None
    try:
        if isinstance(value, bool | str | bytes):
            raise TypeError
        return float(value)  # int, float and NumPy scalars
    except (TypeError, ValueError):
        raise TypeError(
            f"run summary key {key!r} must be a number, got {type(value).__name__} {value!r}; "
            "pass a float (e.g. float(x)) or leave the key out"
        ) from None


def _number_list(summary: Mapping[str, Any], key: str) -> list[float] | None:
    values = summary.get(key)
    if values is None:
        return None
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
        raise TypeError(f"run summary key {key!r} must be a list of numbers, got {values!r}")
    return [_number({key: v}, key) for v in values]  # type: ignore[misc]


def _choice(summary: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str | None:
    value = summary.get(key)
    if value is not None and value not in allowed:
        raise ValueError(
            f"run summary key {key!r} is {value!r}; it must be one of {', '.join(allowed)}"
        )
    return value


def _check_summary(summary: Mapping[str, Any]) -> None:
    if not isinstance(summary, Mapping):
        raise TypeError(f"the run summary must be a dict, got {type(summary).__name__}")
    for key in ("model_name", "status"):
        if not summary.get(key):
            raise ValueError(
                f"run summary is missing {key!r}; publish_run_metrics needs at least "
                "{'model_name': ..., 'status': 'success' | 'failed'}"
            )
    _choice(summary, "status", STATUSES)
    _choice(summary, "decision", DECISIONS)
    drift = summary.get("drift")
    if drift is not None and not isinstance(drift, Mapping):
        raise TypeError(
            f"run summary key 'drift' must be a dict feature -> PSI (plus 'score_divergence'), "
            f"got {type(drift).__name__}"
        )


# ---------------------------------------------------------------------------------------------
# building the registry


def build_registry(summary: Mapping[str, Any], *, now: float | None = None):
    """Return a fresh ``CollectorRegistry`` holding the metrics of one run summary.

    Parameters
    ----------
    summary : dict
        The run summary (keys in the module docstring).
    now : float, optional
        Unix time to stamp the run with; the current time by default.

    Returns
    -------
    prometheus_client.CollectorRegistry
        Only the metrics whose source keys are present are set.
    """
    from prometheus_client import CollectorRegistry, Gauge

    _check_summary(summary)
    now = time.time() if now is None else float(now)
    model = str(summary["model_name"])
    status = summary["status"]
    registry = CollectorRegistry()

    def gauge(name: str):
        spec = METRICS[name]
        return Gauge(name, spec.help, list(spec.labels), registry=registry)

    gauge("emflow_retrain_last_run_timestamp_seconds").labels(model).set(now)
    gauge("emflow_retrain_last_run_success").labels(model).set(1.0 if status == "success" else 0.0)
    if status == "success":
        gauge("emflow_retrain_last_success_timestamp_seconds").labels(model).set(now)
        if summary.get("decision") == "promoted":
            gauge("emflow_retrain_last_promotion_timestamp_seconds").labels(model).set(now)
    gauge("emflow_retrain_last_run_info").labels(
        model,
        str(summary.get("run_key") or ""),
        str(summary.get("run_id") or ""),
        status,
        str(summary.get("failed_step") or ""),
        str(summary.get("backend") or ""),
        str(summary.get("decision") or ""),
    ).set(1.0)

    scalars = {
        "emflow_em_iterations": "n_iter",
        "emflow_em_restarts": "n_restarts",
        "emflow_model_components": "n_components",
        "emflow_winner_lower_bound_nats": "winner_lower_bound",
        "emflow_component_alignment_cost": "alignment_cost",
        "emflow_validated_rows": "rows_validated",
        "emflow_quarantined_rows": "rows_quarantined",
        "emflow_gpu_memory_peak_bytes": "gpu_memory_peak_bytes",
        "emflow_train_device_peak_bytes": "device_peak_bytes",
        "emflow_anomaly_alarm_rate": "alarm_rate",
    }
    for name, key in scalars.items():
        value = _number(summary, key)
        if value is not None:
            gauge(name).labels(model).set(value)

    train_seconds = _number(summary, "train_seconds")
    if train_seconds is not None:
        gauge("emflow_train_duration_seconds").labels(model, str(summary.get("backend") or "")).set(
            train_seconds
        )

    for name, key in (
        ("emflow_restart_lower_bound_nats", "restart_lower_bounds"),
        ("emflow_component_weight", "component_weights"),
    ):
        values = _number_list(summary, key)
        if values:
            family = gauge(name)
            for index, value in enumerate(values):
                family.labels(model, str(index)).set(value)

    holdout = {
        role: _number(summary, f"holdout_loglik_{role}") for role in ("challenger", "champion")
    }
    if any(v is not None for v in holdout.values()):
        family = gauge("emflow_holdout_log_likelihood_nats")
        for role, value in holdout.items():
            if value is not None:
                family.labels(model, role).set(value)

    band = _number_list(summary, "alarm_rate_band") or []
    if len(band) not in (0, 2):
        raise ValueError(f"run summary key 'alarm_rate_band' must be [low, high], got {band!r}")
    target = _number(summary, "false_alarm_rate")
    if band or target is not None:
        family = gauge("emflow_anomaly_alarm_rate_bound")
        bounds = dict(zip(("low", "high"), band, strict=False))
        if target is not None:
            bounds["target"] = target
        for bound, value in bounds.items():
            family.labels(model, bound).set(value)

    decision = summary.get("decision")
    if decision is not None:
        family = gauge("emflow_promotion_decision")
        for outcome in DECISIONS:  # every outcome: a 0 where the previous run had its 1
            family.labels(model, outcome).set(1.0 if outcome == decision else 0.0)

    drift = dict(summary.get("drift") or {})
    score_divergence = _number(drift, "score_divergence")
    if score_divergence is not None:
        gauge("emflow_drift_score_divergence").labels(model).set(score_divergence)
    drift.pop("score_divergence", None)
    if drift:
        family = gauge("emflow_feature_drift_psi")
        for feature, psi in sorted(drift.items()):
            family.labels(model, str(feature)).set(_number({"drift": psi}, "drift"))
    return registry


def build_rollback_registry(model: str, version: str | int, now: float | None = None) -> Any:
    """A registry of one rollback: when, and which version it made champion."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    values = (time.time() if now is None else float(now), float(int(version)))
    for name, value in zip(ROLLBACK_FAMILIES, values, strict=True):
        spec = METRICS[name]
        Gauge(name, spec.help, list(spec.labels), registry=registry).labels(model).set(value)
    return registry
