"""Evaluate step: challenger and champion on the same holdout rows, and the window's drift."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from emflow.config import Settings
from emflow.model.evaluation import Evaluation
from emflow.run.request import settings_for
from emflow.run.state import Evaluated, RunRequest, Split, Trained

log = logging.getLogger(__name__)


def evaluate(challenger_dir: str | Path, holdout: Any, settings: Settings) -> Evaluation:
    """Score the challenger and the registry's current champion on the same holdout rows.

    Parameters
    ----------
    challenger_dir : str or Path
        gmm_core model folder written by the train step.
    holdout : DataFrame, array of shape (n_samples, n_features), or path
        Holdout rows (Parquet/CSV/.npy path or a folder); extra columns are ignored when the
        model knows its feature names.
    settings : Settings
        Registry to read the champion from.
    """
    from emflow.model.evaluation import evaluate_models
    from emflow.model.telemetry import as_frame, load_model_dir
    from emflow.registry.champion import load_champion

    challenger = load_model_dir(challenger_dir)
    frame = as_frame(holdout)
    version, champion_dir = load_champion(settings)
    champion = None if champion_dir is None else load_model_dir(champion_dir)
    return evaluate_models(challenger, frame, champion, version)


def evaluate_challenger(
    request: RunRequest, split: Split, trained: Trained, settings: Settings | None = None
) -> Evaluated:
    """:func:`evaluate` on the run's holdout rows, plus drift from the champion's window.

    Drift (:func:`emflow.model.drift.measure_drift`) is measured against the reference summary
    stored with the champion; it is None without a champion or without a stored reference.
    """
    from emflow.model.drift import measure_drift
    from emflow.model.telemetry import read_telemetry
    from emflow.registry.champion import version_model_dir
    from emflow.registry.tracking import connect

    settings = settings_for(request, settings)
    evaluation = evaluate(trained.model_dir, split.holdout_path, settings)
    log.info(
        "holdout mean log-likelihood: challenger %s, champion %s (v%s)",
        evaluation.challenger_mean_loglik,
        evaluation.champion_mean_loglik,
        evaluation.champion_version,
    )
    drift = None
    version = evaluation.champion_version
    if version is not None:
        champion_dir = version_model_dir(connect(settings), settings, str(version))  # cached
        drift = measure_drift(champion_dir, read_telemetry([split.holdout_path]), str(version))
    return Evaluated(evaluation, drift)
