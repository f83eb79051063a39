"""The metrics step: one run's summary from what its steps returned, published to Prometheus."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from emflow.config import Settings
from emflow.run.request import settings_for
from emflow.run.state import Evaluated, RunRequest, Split, Trained, Validated

log = logging.getLogger(__name__)

#: The DAG's task ids, in pipeline order (publish_metrics excepted).
STEPS = ("validate", "split", "train", "evaluate", "gate", "publish")


class StepOutputs(NamedTuple):
    """What each step of one run returned; None where the step did not succeed."""

    validate: Validated | None = None
    split: Split | None = None
    train: Trained | None = None
    evaluate: Evaluated | None = None
    gate: Any = None  # emflow.model.gate.Decision
    publish: Any = None  # emflow.registry.publish.PublishResult

    @property
    def failed_step(self) -> str | None:
        """The first step without an output (None: the run succeeded)."""
        return next((step for step in STEPS if getattr(self, step) is None), None)


def run_summary(
    request: RunRequest,
    outputs: StepOutputs,
    *,
    rejected: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """The metrics summary of one run (keys of :mod:`emflow.metrics`).

    Parameters
    ----------
    request : RunRequest
        The run's request (:func:`emflow.run.request.metrics_request_from_context`).
    outputs : StepOutputs
        What each step returned.
    rejected : dict, optional
        :func:`emflow.run.validate.rejection_summary` of a batch the validate step rejected.
    """
    settings = settings_for(request, settings)
    failed_step = outputs.failed_step
    summary: dict[str, Any] = {
        "model_name": settings.model_name,
        "run_key": request.run_key,
        "run_id": request.run_id,  # Airflow's own (the run key is its path-safe form)
        "status": "success" if failed_step is None else "failed",
        "failed_step": failed_step,
    }
    if outputs.validate is not None:
        summary["rows_validated"] = outputs.validate.rows_validated
        summary["rows_quarantined"] = outputs.validate.rows_quarantined
    drift = None if outputs.evaluate is None else outputs.evaluate.drift
    if drift is not None:
        summary["drift"] = {
            **drift.psi,
            **(
                {"score_divergence": drift.score_divergence}
                if drift.score_divergence is not None
                else {}
            ),
        }
    elif rejected:
        summary["rows_validated"] = rejected.get("rows_validated", rejected["rows_quarantined"])
        summary["rows_quarantined"] = rejected["rows_quarantined"]
        summary["decision"] = "quarantined"
    trained = outputs.train
    if trained is not None:
        summary.update(
            train_seconds=trained.fit_seconds,
            n_iter=trained.n_iter,
            n_components=trained.n_components,
            n_restarts=len(trained.restart_final_lower_bounds),
            restart_lower_bounds=trained.restart_final_lower_bounds,
            winner_lower_bound=trained.lower_bound,
            backend=trained.backend,
            gpu_memory_peak_bytes=trained.gpu_memory_peak_bytes,
            device_peak_bytes=trained.device_peak_bytes,
        )
    if outputs.evaluate is not None:
        evaluation = outputs.evaluate.evaluation
        summary["holdout_loglik_challenger"] = evaluation.challenger_mean_loglik
        summary["holdout_loglik_champion"] = evaluation.champion_mean_loglik
        if evaluation.weights:
            summary["component_weights"] = evaluation.weights
        if evaluation.alarm_rate is not None:
            summary["alarm_rate"] = evaluation.alarm_rate
            summary["false_alarm_rate"] = evaluation.false_alarm_rate
            summary["alarm_rate_band"] = evaluation.alarm_rate_band
    decision = outputs.gate
    if decision is not None:
        summary["alignment_cost"] = decision.alignment_mean_cost
        order = decision.permutation
        weights = summary.get("component_weights")
        if order and weights and sorted(order) == list(range(len(weights))):
            # evaluation reports the trained order; component ids are the champion's
            summary["component_weights"] = [weights[i] for i in order]
        if outputs.publish is not None:
            summary["decision"] = "promoted" if outputs.publish.promoted else "rejected"
    return {k: v for k, v in summary.items() if v is not None}


def publish_metrics(
    request: RunRequest,
    outputs: StepOutputs,
    *,
    rejected: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Build :func:`run_summary` and publish it (:func:`emflow.metrics.publish_run_metrics`).

    Returns
    -------
    dict
        The summary, plus ``metrics_target`` (Pushgateway URL or textfile path).
    """
    from emflow import metrics

    settings = settings_for(request, settings)
    summary = run_summary(request, outputs, rejected=rejected, settings=settings)
    target = metrics.publish_run_metrics(summary, settings)
    log.info("metrics of run %s (%s) -> %s", summary["run_key"], summary["status"], target)
    return {**summary, "metrics_target": str(target)}
