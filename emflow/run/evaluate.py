"""Evaluate step: challenger and champion on the same holdout rows, and the window's drift."""

from __future__ import annotations

import dataclasses
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
    With a ``false_alarm_rate``, the challenger's anomaly threshold is calibrated on one half of
    the holdout and its alarm rate measured on the other (:func:`calibrate_challenger`); a
    holdout too small for the rate gets no threshold, and the log says why and what to change.
    """
    from emflow.model.drift import measure_drift
    from emflow.model.telemetry import read_telemetry
    from emflow.registry.champion import version_model_dir
    from emflow.registry.tracking import connect

    settings = settings_for(request, settings)
    evaluation = evaluate(trained.model_dir, split.holdout_path, settings)
    if request.false_alarm_rate is not None and _holdout_calibrates(evaluation, request):
        evaluation = calibrate_challenger(
            trained.model_dir, split.holdout_path, evaluation, request
        )
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


def _holdout_calibrates(evaluation: Evaluation, request: RunRequest) -> bool:
    """Whether half the holdout can calibrate ``request.false_alarm_rate`` (else warn why not)."""
    from emflow.model.anomaly import calibration_rows_needed

    rate = float(request.false_alarm_rate)  # type: ignore[arg-type]
    needed = calibration_rows_needed(rate)
    if evaluation.n_holdout // 2 >= needed:
        return True
    log.warning(
        "no anomaly threshold: half of the %d holdout rows cannot calibrate a false-alarm rate "
        "of %g (that takes %d rows, ten times more for a stable threshold); use a longer "
        "window, a larger holdout_fraction or a higher false_alarm_rate",
        evaluation.n_holdout,
        rate,
        needed,
    )
    return False


def calibrate_challenger(
    challenger_dir: str | Path, holdout: Any, evaluation: Evaluation, request: RunRequest
) -> Evaluation:
    """Calibrate the challenger's anomaly threshold, save it with the model, record the check.

    :func:`emflow.model.anomaly.calibrate_and_check` on the holdout rows (halves seeded by the
    request's ``seed``); the model folder is saved again with its calibration (``model.json``'s
    ``anomaly`` section, which the served pyfunc returns as ``p_value``/``is_anomaly``).

    Returns
    -------
    Evaluation
        ``evaluation`` with the threshold, the measured alarm rate and its band.
    """
    import gmm_core
    from emflow.model.anomaly import calibrate_and_check
    from emflow.model.pyfunc_model import model_feature_names
    from emflow.model.telemetry import as_frame, feature_matrix, load_model_dir

    challenger = load_model_dir(challenger_dir)
    X = feature_matrix(challenger, as_frame(holdout))
    rate = float(request.false_alarm_rate)  # type: ignore[arg-type]
    check = calibrate_and_check(challenger, X, rate, int(request.seed))
    gmm_core.save_model(
        challenger,
        challenger_dir,
        feature_names=model_feature_names(challenger),
        metadata=dict(getattr(challenger, "metadata_", None) or {}),
    )
    return dataclasses.replace(
        evaluation,
        false_alarm_rate=check.false_alarm_rate,
        anomaly_threshold=check.threshold,
        alarm_rate=check.alarm_rate,
        alarm_rate_band=check.band,
        n_alarm_check=check.n_check,
    )
