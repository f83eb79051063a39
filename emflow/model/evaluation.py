"""Challenger and champion scored on the same holdout rows: models in, numbers out (no registry)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emflow.model.telemetry import feature_matrix, feature_names
from emflow.records import Record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation(Record):
    """Challenger and champion scored on the same holdout rows.

    Attributes
    ----------
    challenger_mean_loglik : float
        Mean per-row log-likelihood of the holdout under the challenger (nats per row).
    champion_mean_loglik : float or None
        The same for the champion in service; None when there is no champion yet.
    champion_version : str or None
        Registry version of that champion.
    n_holdout : int
        Number of holdout rows both models scored.
    holdout_sha256 : str
        Digest of the holdout feature matrix (float64, C order): proof both saw the same rows.
    challenger_aic, challenger_bic : float
        Information criteria of the challenger on the holdout.
    champion_aic, champion_bic : float or None
        The same for the champion.
    weights : list of float
        Challenger mixture weights, shape (n_components,), in the challenger's own order.
    feature_names : list of str
        Feature columns scored, in model order.
    false_alarm_rate : float or None
        Target rate of the challenger's anomaly threshold (None: not calibrated).
    anomaly_threshold : float or None
        The threshold calibrated on one half of the holdout (negative log-likelihood, nats).
    alarm_rate : float or None
        Share of the other half's rows the threshold flags.
    alarm_rate_band : list of float
        ``[low, high]``: where ``alarm_rate`` lies for a well-calibrated threshold
        (:func:`emflow.model.anomaly.alarm_rate_band`); empty when not calibrated.
    n_alarm_check : int
        Rows ``alarm_rate`` was measured on.
    """

    challenger_mean_loglik: float
    champion_mean_loglik: float | None
    champion_version: str | None
    n_holdout: int
    holdout_sha256: str
    challenger_aic: float
    challenger_bic: float
    champion_aic: float | None = None
    champion_bic: float | None = None
    weights: list[float] = field(default_factory=list)
    feature_names: list[str] = field(default_factory=list)
    false_alarm_rate: float | None = None
    anomaly_threshold: float | None = None
    alarm_rate: float | None = None
    alarm_rate_band: list[float] = field(default_factory=list)
    n_alarm_check: int = 0


def mean_loglik(score_samples: np.ndarray) -> float:
    """Mean of per-row log-likelihoods, shape (n_samples,) -> float (nats per row)."""
    values = np.asarray(score_samples, dtype=np.float64)
    return float(values.mean()) if values.size else float("nan")


def evaluate_models(
    challenger: Any, frame: Any, champion: Any = None, champion_version: str | None = None
) -> Evaluation:
    """Score ``challenger`` (and ``champion``, when there is one) on the holdout ``frame``.

    Parameters
    ----------
    challenger, champion : gmm_core.GaussianMixture
        Fitted models; ``champion`` None when nothing is in service yet.
    frame : pandas.DataFrame of shape (n_samples, >= n_features)
        Holdout rows; extra columns are ignored when a model knows its feature names.
    champion_version : str, optional
        Registry version of ``champion``.

    Returns
    -------
    Evaluation
        Mean holdout log-likelihoods (nats per row), AIC/BIC, weights, champion version or None.
    """
    X = feature_matrix(challenger, frame)
    champion_ll = champion_aic = champion_bic = None
    if champion is not None:
        try:
            X_champion = feature_matrix(champion, frame)
        except ValueError as error:
            raise ValueError(
                f"champion v{champion_version} cannot score this holdout ({error}); if the "
                "model family's features changed on purpose, publish under a new "
                "EMFLOW_MODEL_NAME or promote by hand with `emflow rollback --version N`"
            ) from error
        champion_ll = mean_loglik(champion.score_samples(X_champion))
        champion_aic = float(champion.aic(X_champion))
        champion_bic = float(champion.bic(X_champion))
    evaluation = Evaluation(
        challenger_mean_loglik=mean_loglik(challenger.score_samples(X)),
        champion_mean_loglik=champion_ll,
        champion_version=None if champion is None else champion_version,
        n_holdout=int(X.shape[0]),
        holdout_sha256=hashlib.sha256(np.ascontiguousarray(X).tobytes()).hexdigest(),
        challenger_aic=float(challenger.aic(X)),
        challenger_bic=float(challenger.bic(X)),
        champion_aic=champion_aic,
        champion_bic=champion_bic,
        weights=[float(w) for w in np.asarray(challenger.weights_)],
        feature_names=feature_names(challenger),
    )
    log.info(
        "holdout (%d rows): challenger mean log-likelihood %.4f, champion %s %s",
        evaluation.n_holdout,
        evaluation.challenger_mean_loglik,
        f"v{champion_version}" if champion is not None else "(none)",
        "" if champion_ll is None else f"{champion_ll:.4f}",
    )
    return evaluation
