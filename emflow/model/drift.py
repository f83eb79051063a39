"""Drift of a run's holdout rows from the champion's training window (reported, not gating)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emflow.records import Record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Drift(Record):
    """Drift of one window against a champion's reference summary.

    Attributes
    ----------
    drifted : bool
        Whether any measure crossed its threshold.
    summary : str
        One line for logs and the demo.
    psi : dict of str to float
        Population stability index per feature.
    score_divergence : float or None
        Jensen-Shannon divergence (nats) of the champion's log-likelihood scores.
    reasons : list of str
        The measures that crossed their thresholds.
    """

    drifted: bool
    summary: str
    psi: dict[str, float] = field(default_factory=dict)
    score_divergence: float | None = None
    reasons: list[str] = field(default_factory=list)


def measure_drift(champion_dir: str | Path, frame: Any, champion_version: str) -> Drift | None:
    """Drift of ``frame`` (the run's holdout rows) from the champion's training window.

    Uses the reference summary stored beside the champion's model files
    (:func:`validation.drift.write_reference`, written by the train step) and the champion
    itself for the log-likelihood score distribution. None without a stored reference (a
    champion registered before references were kept).
    """
    import gmm_core
    from validation.drift import drift_report, read_reference

    reference = read_reference(champion_dir)
    if reference is None:
        log.info("champion v%s has no reference summary: drift not measured", champion_version)
        return None
    report = drift_report(reference, frame, model=gmm_core.load_model(champion_dir))
    log.info("drift vs champion v%s: %s", champion_version, report.summary)
    return Drift(
        drifted=bool(report.drifted),
        summary=report.summary,
        psi={name: float(f.psi) for name, f in report.features.items()},
        score_divergence=None if report.score is None else float(report.score.js_divergence),
        reasons=list(report.reasons),
    )
