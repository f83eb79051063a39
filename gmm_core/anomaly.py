"""Calibrated anomaly thresholds for a fitted mixture.

The anomaly score of a row is its negative log-likelihood under the mixture (nats; higher is
more anomalous). :func:`calibrate` turns the scores of held-out rows that are known to be normal
into a threshold with a chosen false-alarm rate and into a table of the scores' quantiles, from
which :func:`p_values` gives each new row an empirical p-value: the estimated probability that
a normal row scores at least as high.

The threshold is the conformal one: with ``n`` calibration scores and target rate ``alpha``, the
``ceil((n + 1)(1 - alpha))``-th smallest score. A new row from the calibration distribution is
flagged (score strictly above the threshold) with probability at most ``alpha`` and at least
``alpha - 1 / (n + 1)`` (for continuous scores): ``n`` must be at least ``1 / alpha - 1``.

Only the quantile table is kept (about 400 order statistics: evenly spaced ranks for the bulk,
geometrically spaced ranks for the upper tail, where small p-values need resolution), never the
calibration rows, and it travels in ``model.json`` (:mod:`gmm_core.io`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

#: evenly spaced ranks over the whole calibration set (p-values to 1/200 in the bulk)
_BULK_POINTS = 201
#: geometrically spaced ranks in the upper 10 % (p-values to a few % relative in the tail)
_TAIL_POINTS = 200


@dataclass(frozen=True)
class AnomalyCalibration:
    """What a calibration keeps: the threshold and a quantile table of normal scores.

    Attributes
    ----------
    false_alarm_rate : float
        Target probability of flagging a normal row.
    threshold : float
        Negative log-likelihood above which a row is flagged.
    n_calibration : int
        Rows the calibration scored.
    ranks : ndarray of shape (m,), int
        0-based ranks (in the sorted calibration scores) of the stored order statistics,
        increasing, first 0 and last ``n_calibration - 1``.
    quantiles : ndarray of shape (m,), float64
        The calibration scores at those ranks (non-decreasing).
    """

    false_alarm_rate: float
    threshold: float
    n_calibration: int
    ranks: np.ndarray
    quantiles: np.ndarray

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (lists of numbers)."""
        return {
            "score": "negative_log_likelihood",
            "false_alarm_rate": float(self.false_alarm_rate),
            "threshold": float(self.threshold),
            "n_calibration": int(self.n_calibration),
            "ranks": [int(r) for r in self.ranks],
            "quantiles": [float(q) for q in self.quantiles],
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> AnomalyCalibration:
        """Inverse of :meth:`to_json`, checking the table's shape and order."""
        ranks = np.asarray(document["ranks"], dtype=np.int64)
        quantiles = np.asarray(document["quantiles"], dtype=np.float64)
        n = int(document["n_calibration"])
        rate = float(document["false_alarm_rate"])
        if (
            ranks.ndim != 1
            or ranks.shape != quantiles.shape
            or len(ranks) < 2
            or ranks[0] != 0
            or ranks[-1] != n - 1
            or (np.diff(ranks) <= 0).any()
            or (np.diff(quantiles) < 0).any()
            or not 0.0 < rate < 1.0
        ):
            raise ValueError("the anomaly calibration table is malformed")
        return cls(rate, float(document["threshold"]), n, ranks, quantiles)


class AnomalyScores(NamedTuple):
    """Per-row result of :meth:`gmm_core.GaussianMixture.score_anomaly`."""

    score: np.ndarray  # (n,) negative log-likelihood, nats
    p_value: np.ndarray  # (n,) in [1 / (n_calibration + 1), 1]
    is_anomaly: np.ndarray  # (n,) bool: score > threshold


def calibrate(scores: Any, false_alarm_rate: float) -> AnomalyCalibration:
    """Threshold and quantile table from the anomaly scores of normal held-out rows.

    Parameters
    ----------
    scores : array-like of shape (n,)
        Negative log-likelihoods of held-out rows.
    false_alarm_rate : float in (0, 1)
        Target probability of flagging a normal row.

    Raises
    ------
    ValueError
        When the rate is out of range, a score is not finite, or there are too few rows for
        the rate (fewer than ``1 / false_alarm_rate - 1``).
    """
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(
            f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}; e.g. 0.01 flags one "
            "normal row in a hundred."
        )
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = s.shape[0]
    if not np.isfinite(s).all():
        raise ValueError(
            "some calibration rows have a non-finite log-likelihood; drop NaN/inf rows first."
        )
    rank = math.ceil((n + 1) * (1.0 - false_alarm_rate))  # 1-based
    if rank > n or n < 2:
        raise ValueError(
            f"{n} calibration rows cannot resolve a false-alarm rate of {false_alarm_rate}: "
            f"give at least {_fewest_rows(false_alarm_rate)} held-out rows (ideally 10 "
            "times more), or raise false_alarm_rate."
        )
    bulk = np.rint(np.linspace(0, n - 1, min(n, _BULK_POINTS)))
    tail = n - np.rint(np.geomspace(1, max(1.0, 0.1 * n), _TAIL_POINTS))
    # the threshold's own rank too: a row above the threshold then reads at most its count
    ranks = np.unique(
        np.concatenate([bulk, tail, [0, rank - 1, n - 1]]).astype(np.int64).clip(0, n - 1)
    )
    return AnomalyCalibration(float(false_alarm_rate), float(s[rank - 1]), n, ranks, s[ranks])


def _fewest_rows(false_alarm_rate: float) -> int:
    """The fewest calibration rows that resolve ``false_alarm_rate`` (about ``1 / rate - 1``)."""
    n = max(2, math.floor(1.0 / false_alarm_rate - 1.0))
    while math.ceil((n + 1) * (1.0 - false_alarm_rate)) > n:
        n += 1
    return n


def p_values(calibration: AnomalyCalibration, scores: Any) -> np.ndarray:
    """Empirical p-values ``(1 + #{calibration scores >= s}) / (n + 1)`` of new ``scores``.

    The count is read from the quantile table: exact at a stored order statistic and between
    two consecutive stored ranks; between stored ranks ``a < b`` further apart, the first
    calibration score >= s lies in ``(a, b]`` and its rank is interpolated linearly from
    ``a + 1`` to ``b``. The threshold's rank is stored, so a row above the threshold (flagged)
    gets a p-value of at most ``false_alarm_rate``. A score above every calibration score gets
    ``1 / (n + 1)``, one below all of them 1.
    """
    s = np.asarray(scores, dtype=np.float64)
    n = calibration.n_calibration
    q, ranks = calibration.quantiles, calibration.ranks.astype(np.float64)
    last = len(q) - 1
    first = np.searchsorted(q, s, side="left")  # the first stored quantile >= s (ties: lowest)
    lo, hi = np.clip(first - 1, 0, last), np.clip(first, 0, last)
    span = q[hi] - q[lo]
    frac = np.where(span > 0, (s - q[lo]) / np.where(span > 0, span, 1.0), 1.0)
    between = np.minimum(ranks[lo] + 1.0 + (ranks[hi] - ranks[lo] - 1.0) * frac, ranks[hi])
    rank = np.where(q[hi] == s, ranks[hi], between)  # 0-based rank of the first score >= s
    at_least = np.where(s > q[-1], 0.0, np.where(s <= q[0], n, n - rank))
    return np.clip((1.0 + at_least) / (n + 1.0), 1.0 / (n + 1.0), 1.0)


def score(calibration: AnomalyCalibration, negative_log_likelihood: Any) -> AnomalyScores:
    """Scores, p-values and flags of rows with the given negative log-likelihoods."""
    nll = np.asarray(negative_log_likelihood, dtype=np.float64)
    return AnomalyScores(nll, p_values(calibration, nll), nll > calibration.threshold)
