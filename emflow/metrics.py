"""Prometheus metrics of one retrain run: what on-call, the alert rules and the dashboards read.

The last task of the retrain pipeline (and ``emflow demo``) calls :func:`publish_run_metrics` with a
plain ``summary`` dict. Every key except ``model_name`` and ``status`` is optional; a metric whose
source key is missing is simply not sent (see "Semantics" for what the receiver then shows).

Summary keys
------------
=============================  ===============================================================
key                            meaning
=============================  ===============================================================
``model_name`` (required)      registered model name; becomes the ``model`` label everywhere
``status`` (required)          ``"success"`` or ``"failed"``
``run_key``                    identifier of the pipeline run (Airflow run id or similar)
``failed_step``                name of the step that failed (``"validate"``, ``"train"``, ...)
``train_seconds``              wall time of ``GaussianMixture.fit`` (all restarts), seconds
``n_iter``                     EM iterations of the winning restart
``n_restarts``                 restarts run (``n_init``)
``restart_lower_bounds``       final lower bound of every restart, list of floats (nats/sample)
``winner_lower_bound``         lower bound of the winning restart (nats/sample)
``holdout_loglik_challenger``  mean holdout log-likelihood of the new model (nats/sample)
``holdout_loglik_champion``    the same for the model in service on the same rows
``decision``                   ``"promoted"``, ``"rejected"`` (gate kept the champion) or
                               ``"quarantined"`` (the batch failed validation)
``alignment_cost``             mean matched Bhattacharyya cost of component alignment
``drift``                      dict ``feature -> PSI`` plus ``score_divergence`` (JS, nats)
``rows_validated``             rows checked by the data contract in this run
``rows_quarantined``           of those, rows moved to quarantine
``gpu_memory_peak_bytes``      bytes CuPy's memory pool held after training
``device_peak_bytes``          peak device memory of the fit as gmm_core measured it, bytes
``backend``                    resolved ``gmm_core`` backend (``"numpy"``, ``"cupy"``)
``component_weights``          mixing weight per (aligned) component, list of floats
=============================  ===============================================================

The exported metrics are listed in :data:`METRICS` (name -> :class:`MetricSpec`); the README's
"Operating emflow" section points here. All are gauges with a ``model`` label.

Semantics: why gauges, and no ``_total`` counters
-------------------------------------------------
A retrain is a batch job: the process that knows the numbers exits right after pushing. A counter
that such a job pushes would either restart at 1 on every push (``rate()`` sees resets, never an
increase) or need a read-modify-write on the Pushgateway (racy, and wrong after a gateway restart).
So, as the Prometheus guidance for batch jobs recommends, every metric is a **per-run gauge** and
runs are counted in PromQL from the timestamps, e.g. runs in a week
``changes(emflow_retrain_last_run_timestamp_seconds[7d])`` and successes
``changes(emflow_retrain_last_success_timestamp_seconds[7d])``.

Metrics go to the Pushgateway with **push-add** (HTTP POST, job ``emflow_retrain``, grouping
key ``model``): POST replaces only the metric families this push contains. That is what makes
``emflow_retrain_last_success_timestamp_seconds`` (sent only on success) survive a failed run, so
the staleness alert measures the age of the last *good* run; likewise a run that fails before
training leaves the last training numbers in place. Without a Pushgateway the textfile-collector
file (``settings.metrics_textfile``) gets the same merge: families of this model that the run did
not set, and every other model's samples, are carried over from the previous file, and the new file
replaces the old one atomically (``prometheus_client.write_to_textfile``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)

PUSHGATEWAY_JOB = "emflow_retrain"
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
        "gauge", "Unix time the latest retrain run finished, whatever its status.",
        ("model",), "status"),
    "emflow_retrain_last_success_timestamp_seconds": MetricSpec(
        "gauge", "Unix time the latest successful retrain run finished (set on success only).",
        ("model",), "status"),
    "emflow_retrain_last_run_success": MetricSpec(
        "gauge", "1 if the latest retrain run succeeded, 0 if it failed.",
        ("model",), "status"),
    "emflow_retrain_last_run_info": MetricSpec(
        "gauge", "Always 1; labels describe the latest retrain run.",
        ("model", "run_key", "status", "failed_step", "backend", "decision"), "run_key"),
    "emflow_train_duration_seconds": MetricSpec(
        "gauge", "Wall time of the training step (all restarts), seconds.",
        ("model", "backend"), "train_seconds"),
    "emflow_em_iterations": MetricSpec(
        "gauge", "EM iterations run by the winning restart.",
        ("model",), "n_iter"),
    "emflow_em_restarts": MetricSpec(
        "gauge", "Number of seeded EM restarts (n_init) in the latest training.",
        ("model",), "n_restarts"),
    "emflow_restart_lower_bound_nats": MetricSpec(
        "gauge", "Final lower bound of each restart, mean log-likelihood per sample in nats.",
        ("model", "restart"), "restart_lower_bounds"),
    "emflow_winner_lower_bound_nats": MetricSpec(
        "gauge", "Lower bound of the winning restart, mean log-likelihood per sample in nats.",
        ("model",), "winner_lower_bound"),
    "emflow_holdout_log_likelihood_nats": MetricSpec(
        "gauge", "Mean holdout log-likelihood per sample in nats; role is challenger or champion.",
        ("model", "role"), "holdout_loglik_challenger"),
    "emflow_promotion_decision": MetricSpec(
        "gauge", "1 for the promotion gate's outcome of the latest evaluated run, 0 for the "
        "others.",
        ("model", "outcome"), "decision"),
    "emflow_component_alignment_cost": MetricSpec(
        "gauge", "Mean matched Bhattacharyya distance between challenger and champion components.",
        ("model",), "alignment_cost"),
    "emflow_feature_drift_psi": MetricSpec(
        "gauge", "Population stability index of each feature, new window against the reference.",
        ("model", "feature"), "drift"),
    "emflow_drift_score_divergence": MetricSpec(
        "gauge", "Jensen-Shannon divergence (nats) of the model's log-likelihood scores, new "
        "window against the reference.",
        ("model",), "drift"),
    "emflow_validated_rows": MetricSpec(
        "gauge", "Rows checked by the data contract in the latest run.",
        ("model",), "rows_validated"),
    "emflow_quarantined_rows": MetricSpec(
        "gauge", "Rows of the latest run moved to quarantine by the data contract.",
        ("model",), "rows_quarantined"),
    "emflow_gpu_memory_peak_bytes": MetricSpec(
        "gauge", "Peak device memory used by training, bytes.",
        ("model",), "gpu_memory_peak_bytes"),
    "emflow_train_device_peak_bytes": MetricSpec(
        "gauge", "Peak device memory of the latest fit as gmm_core measured it "
        "(device_peak_bytes_), bytes; absent for CPU fits.",
        ("model",), "device_peak_bytes"),
    "emflow_component_weight": MetricSpec(
        "gauge", "Mixing weight of each (aligned) component of the latest trained model.",
        ("model", "component"), "component_weights"),
}


class MetricsPushError(RuntimeError):
    """The Pushgateway could not be reached; the metrics were kept in the textfile instead."""


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
    gauge("emflow_retrain_last_run_info").labels(
        model,
        str(summary.get("run_key") or ""),
        status,
        str(summary.get("failed_step") or ""),
        str(summary.get("backend") or ""),
        str(summary.get("decision") or ""),
    ).set(1.0)

    scalars = {
        "emflow_em_iterations": "n_iter",
        "emflow_em_restarts": "n_restarts",
        "emflow_winner_lower_bound_nats": "winner_lower_bound",
        "emflow_component_alignment_cost": "alignment_cost",
        "emflow_validated_rows": "rows_validated",
        "emflow_quarantined_rows": "rows_quarantined",
        "emflow_gpu_memory_peak_bytes": "gpu_memory_peak_bytes",
        "emflow_train_device_peak_bytes": "device_peak_bytes",
    }
    for name, key in scalars.items():
        value = _number(summary, key)
        if value is not None:
            gauge(name).labels(model).set(value)

    train_seconds = _number(summary, "train_seconds")
    if train_seconds is not None:
        gauge("emflow_train_duration_seconds").labels(
            model, str(summary.get("backend") or "")
        ).set(train_seconds)

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

    decision = summary.get("decision")
    if decision is not None:
        family = gauge("emflow_promotion_decision")
        for outcome in DECISIONS:  # every outcome, so a push-add replaces the previous 1
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


# ---------------------------------------------------------------------------------------------
# sinks


def _merged_textfile_registry(new_registry, old_text: str, model: str):
    """A registry exposing ``new_registry`` plus what the old file keeps under push-add rules."""
    from prometheus_client.core import CollectorRegistry, Metric
    from prometheus_client.parser import text_string_to_metric_families

    new_families = {family.name: family for family in new_registry.collect()}
    merged: dict[str, Metric] = {}
    for name, family in new_families.items():
        copy = Metric(family.name, family.documentation, family.type)
        copy.samples = list(family.samples)
        merged[name] = copy
    for family in text_string_to_metric_families(old_text):
        # push-add: a family this run set replaces this model's old samples of it
        keep = [
            s for s in family.samples
            if family.name not in new_families or s.labels.get("model") != model
        ]
        if not keep:
            continue
        target = merged.setdefault(
            family.name, Metric(family.name, family.documentation, family.type)
        )
        target.samples.extend(keep)

    class _Families:
        def collect(self):
            return list(merged.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families())
    return registry


def write_textfile(registry, path: Path, model: str) -> Path:
    """Merge ``registry`` into the textfile-collector file at ``path`` atomically; return it.

    A previous file that cannot be parsed is renamed to ``<name>.unreadable-<unix time>`` (never
    deleted) and a warning is logged.
    """
    from prometheus_client import write_to_textfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_write = registry
    if path.exists():
        old_text = path.read_text(encoding="utf-8")
        try:
            to_write = _merged_textfile_registry(registry, old_text, model)  # parses eagerly
        except ValueError as error:
            kept = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
            path.rename(kept)
            logger.warning("metrics textfile %s was unreadable (%s); kept it as %s", path,
                           error, kept)
            to_write = registry
    write_to_textfile(str(path), to_write)
    return path


def _pushgateway_target(url: str, model: str) -> str:
    base = url if "://" in url else f"http://{url}"
    return f"{base.rstrip('/')}/metrics/job/{PUSHGATEWAY_JOB}/model/{model}"


def publish_run_metrics(
    summary: Mapping[str, Any],
    settings,
    *,
    attempts: int = 3,
    retry_wait_seconds: float = 1.0,
    now: float | None = None,
) -> str:
    """Publish the metrics of one retrain run; return where they went.

    Parameters
    ----------
    summary : dict
        Plain run summary (keys in the module docstring); ``model_name`` and ``status`` required.
    settings : emflow.config.Settings
        Uses ``pushgateway_url`` (push-add, job ``emflow_retrain``, grouping key ``model``) when
        set, else ``metrics_textfile``.
    attempts : int, default=3
        Push attempts before giving up on the Pushgateway.
    retry_wait_seconds : float, default=1.0
        Wait before the second attempt; doubled for each further one.
    now : float, optional
        Unix time to stamp the run with (tests); the current time by default.

    Returns
    -------
    str
        The push URL (``<gateway>/metrics/job/emflow_retrain/model/<model>``) or the textfile path.

    Raises
    ------
    ValueError, TypeError
        The summary lacks ``model_name``/``status`` or holds a value of the wrong kind.
    MetricsPushError
        The Pushgateway stayed unreachable; the metrics were written to ``metrics_textfile``
        first, so nothing is lost, and the task can be retried.
    """
    from prometheus_client import pushadd_to_gateway

    registry = build_registry(summary, now=now)
    model = str(summary["model_name"])
    url = getattr(settings, "pushgateway_url", None)
    if not url:
        path = write_textfile(registry, settings.metrics_textfile, model)
        logger.info("run metrics of %s written to %s", model, path)
        return str(path)

    last_error: Exception | None = None
    for attempt in range(1, max(1, attempts) + 1):
        try:
            pushadd_to_gateway(url, job=PUSHGATEWAY_JOB, registry=registry,
                               grouping_key={"model": model}, timeout=10)
        except OSError as error:  # URLError, ConnectionRefusedError, timeouts
            last_error = error
            logger.warning("push to Pushgateway %s failed (attempt %d/%d): %s",
                           url, attempt, attempts, error)
            if attempt < attempts:
                time.sleep(retry_wait_seconds * 2 ** (attempt - 1))
            continue
        target = _pushgateway_target(url, model)
        logger.info("run metrics of %s pushed to %s", model, target)
        return target

    fallback = write_textfile(registry, settings.metrics_textfile, model)
    raise MetricsPushError(
        f"could not push run metrics to the Pushgateway at {url} after {attempts} attempts "
        f"({last_error}); they were written to {fallback} instead. Check that the Pushgateway "
        "runs and that EMFLOW_PUSHGATEWAY points at it, then retry the task."
    ) from last_error

