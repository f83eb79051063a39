"""The challenger's anomaly threshold: calibrated on one half of the holdout, checked on the other.

Calibrating and measuring on the same rows always hits the target (the conformal threshold is an
order statistic of those very rows), so :func:`calibrate_and_check` splits the holdout in two
seeded halves: ``GaussianMixture.calibrate_threshold`` on the first, the share of flagged rows
on the second. Under the null (both halves from one distribution, continuous scores) the number
of flagged check rows is exactly beta-binomial: the threshold is the ``r``-th smallest of ``n``
calibration scores, ``r = ceil((n + 1)(1 - alpha))`` (:mod:`gmm_core.anomaly`), so the chance
``p`` that a new normal row exceeds it is ``Beta(n + 1 - r, r)``, and ``k | p ~ Binomial(m, p)``
over ``m`` check rows. :func:`alarm_rate_band` is the central :data:`BAND_CONFIDENCE` interval
of ``k / m``: a binomial band for the number of rows that also counts the calibration's own
noise. A measured rate outside it means the threshold does not hold on fresh rows of the same
window (a degenerate or over-fitted model, heavy ties); the gate rejects such a challenger.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Two-sided coverage of :func:`alarm_rate_band` under the null: a well-calibrated challenger
#: is rejected by the band in one run out of 1 / (1 - BAND_CONFIDENCE).
BAND_CONFIDENCE = 0.999


@dataclass(frozen=True)
class AlarmCheck:
    """Evidence of one calibration and its check on fresh holdout rows.

    Attributes
    ----------
    false_alarm_rate : float
        Target probability of flagging a normal row.
    threshold : float
        Calibrated threshold on the negative log-likelihood (nats).
    n_calibration, n_check : int
        Holdout rows the threshold was calibrated on, and rows it was checked on.
    alarm_rate : float
        Share of the check rows flagged (``score > threshold``).
    band : list of float
        ``[low, high]`` of :func:`alarm_rate_band`.
    """

    false_alarm_rate: float
    threshold: float
    n_calibration: int
    n_check: int
    alarm_rate: float
    band: list[float] = field(default_factory=list)

    @property
    def within_band(self) -> bool:
        """Whether the measured rate lies in the band (inclusive)."""
        low, high = self.band
        return low <= self.alarm_rate <= high


def calibration_rows_needed(false_alarm_rate: float) -> int:
    """Fewest calibration rows for which the conformal threshold at this rate exists."""
    n = 1
    while math.ceil((n + 1) * (1.0 - false_alarm_rate)) > n:
        n += 1
    return n


def alarm_rate_band(
    n_calibration: int, n_check: int, false_alarm_rate: float, confidence: float = BAND_CONFIDENCE
) -> tuple[float, float]:
    """Central ``confidence`` interval of the alarm rate measured on ``n_check`` fresh rows.

    The count of flagged rows is ``BetaBinomial(n_check, n + 1 - r, r)`` with
    ``r = ceil((n + 1)(1 - false_alarm_rate))`` and ``n = n_calibration`` (module docstring).

    Returns
    -------
    (low, high) : tuple of float
        Bounds on the share of flagged check rows, in [0, 1].
    """
    from scipy.stats import betabinom

    rank = math.ceil((n_calibration + 1) * (1.0 - false_alarm_rate))
    if rank > n_calibration or n_check < 1:
        raise ValueError(
            f"{n_calibration} calibration rows cannot resolve a false-alarm rate of "
            f"{false_alarm_rate} (or no check rows); use a larger holdout"
        )
    tail = (1.0 - confidence) / 2.0
    flagged = betabinom(n_check, n_calibration + 1 - rank, rank)
    return float(flagged.ppf(tail)) / n_check, float(flagged.ppf(1.0 - tail)) / n_check


def holdout_halves(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint halves of ``range(n_rows)``: (calibration rows, check rows), sorted."""
    order = np.random.default_rng([int(seed), 18]).permutation(n_rows)
    half = n_rows // 2
    return np.sort(order[:half]), np.sort(order[half:])


def calibrate_and_check(model: Any, X: Any, false_alarm_rate: float, seed: int) -> AlarmCheck:
    """Calibrate ``model``'s threshold on one half of ``X``; measure its alarm rate on the other.

    Parameters
    ----------
    model : gmm_core.GaussianMixture
        Fitted; gets ``anomaly_calibration_`` (and ``threshold_``) from the calibration half.
    X : ndarray of shape (n_samples, n_features)
        Holdout rows, not used for fitting.
    false_alarm_rate : float in (0, 1)
        Target probability of flagging a normal row.
    seed : int
        Seeds the split into halves.

    Raises
    ------
    ValueError
        The calibration half is too small for the rate (the message names the fix).
    """
    calibration_rows, check_rows = holdout_halves(X.shape[0], seed)
    needed = calibration_rows_needed(false_alarm_rate)
    if calibration_rows.size < needed:
        raise ValueError(
            f"half of the holdout ({calibration_rows.size} rows) cannot calibrate a false-alarm "
            f"rate of {false_alarm_rate}: it takes {needed} rows (ten times more for a stable "
            "threshold); use a longer window, a larger holdout_fraction, a higher "
            "false_alarm_rate, or leave false_alarm_rate empty to skip the threshold"
        )
    model.calibrate_threshold(X[calibration_rows], false_alarm_rate=false_alarm_rate)
    flagged = model.score_anomaly(X[check_rows]).is_anomaly
    low, high = alarm_rate_band(calibration_rows.size, check_rows.size, false_alarm_rate)
    check = AlarmCheck(
        false_alarm_rate=float(false_alarm_rate),
        threshold=float(model.threshold_),
        n_calibration=int(calibration_rows.size),
        n_check=int(check_rows.size),
        alarm_rate=float(np.mean(flagged)),
        band=[low, high],
    )
    log.info(
        "anomaly threshold %.4f (false-alarm rate %g, %d calibration rows): %.4f of %d fresh "
        "holdout rows flagged, band [%.4f, %.4f]",
        check.threshold,
        check.false_alarm_rate,
        check.n_calibration,
        check.alarm_rate,
        check.n_check,
        low,
        high,
    )
    return check
