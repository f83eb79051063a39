"""Publish step: the run in MLflow, its registered version, the aliases as the gate decided."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from emflow.config import Settings
from emflow.model.gate import Decision
from emflow.run.request import settings_for
from emflow.run.state import RunRequest, Split, Trained, Validated

log = logging.getLogger(__name__)

TRAIN_SAMPLE_ROWS = 2_000


def train_info(request: RunRequest, split: Split, trained: Trained) -> dict[str, Any]:
    """What :func:`emflow.registry.publish.publish` records about training."""
    curves = json.loads(Path(trained.training_json).read_text())
    return {
        "params": request.params,
        "backend": trained.backend,
        "fit_seconds": trained.fit_seconds,
        "n_iter": trained.n_iter,
        "converged": trained.converged,
        "lower_bound": trained.lower_bound,
        "restart_lower_bounds": curves["restart_lower_bounds"],
        "gpu_memory_peak_bytes": trained.gpu_memory_peak_bytes,
        "n_train": split.n_train,
        "n_holdout": split.n_holdout,
        "run_id": request.run_id,
        "dag_id": request.dag_id,
        "n_components_chosen": trained.n_components,
        "selection_json": trained.selection_json,
    }


def publish_challenger(
    request: RunRequest,
    validated: Validated,
    split: Split,
    trained: Trained,
    decision: Decision,
    settings: Settings | None = None,
) -> Any:
    """Log the run to MLflow, register the version, move the aliases as decided.

    Idempotent per run key (:func:`emflow.registry.publish.publish` finds the version a killed
    try already registered), so a retried task never duplicates a registry version.

    Returns
    -------
    emflow.registry.publish.PublishResult
    """
    from emflow.model.telemetry import read_telemetry
    from emflow.registry.publish import publish

    settings = settings_for(request, settings)
    sample = read_telemetry([split.train_path]).head(TRAIN_SAMPLE_ROWS)
    reports = [json.loads(Path(p).read_text()) for p in validated.reports if p]
    publication = publish(
        decision,
        trained.model_dir,
        run_key=request.run_key,
        data_window=(str(request.window_start), str(request.window_end)),
        train_info=train_info(request, split, trained),
        settings=settings,
        validation_report=reports[0] if len(reports) == 1 else {"batches": reports},
        train_sample=sample,
    )
    log.info("published: %s", publication)
    return publication
