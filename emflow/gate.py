"""The promotion gate: what a challenger must show to replace the champion, and why it did or not.

Plain values only (numbers, strings, lists), so that an :class:`Evaluation` and a :class:`Decision`
travel between pipeline tasks as JSON (``to_dict`` / ``from_dict``) and are recorded verbatim as
MLflow tags and the model card. The I/O around them (loading models, reading the holdout, the
registry) lives in :mod:`emflow.lifecycle`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Evaluation:
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | Evaluation) -> Evaluation:
        """Rebuild from :meth:`to_dict` output (an Evaluation passes through)."""
        if isinstance(values, Evaluation):
            return values
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on one challenger, with its evidence.

    Attributes
    ----------
    promote : bool
        Whether the challenger should become champion.
    reason : str
        One sentence a reader of the registry understands without the code.
    model_dir : str
        Directory of the model to publish: the challenger reordered to the champion's component
        ids (or the challenger as trained when there is no champion).
    champion_version : str or None
        Champion the challenger was compared with; publishing promotes only while it is still
        the champion (compare-and-set).
    challenger_mean_loglik, champion_mean_loglik : float or None
        From the evaluation, nats per holdout row.
    loglik_delta : float or None
        ``challenger_mean_loglik - champion_mean_loglik``; negative means the challenger is worse.
    alignment_mean_cost : float or None
        Mean Bhattacharyya distance between matched components (None without a champion).
    alignment_costs : list of float
        Per matched pair, in champion component order.
    permutation : list of int
        ``permutation[i]`` is the challenger component that became component ``i``.
    unmatched : list of int
        Challenger components left without a champion partner (when K differs).
    promotion_margin, alignment_threshold : float
        The limits the decision was made with.
    challenger_aic, challenger_bic : float or None
        Information criteria of the challenger on the holdout (from the evaluation).
    n_holdout : int
        Holdout rows both models scored.
    """

    promote: bool
    reason: str
    model_dir: str
    champion_version: str | None
    challenger_mean_loglik: float | None = None
    champion_mean_loglik: float | None = None
    loglik_delta: float | None = None
    alignment_mean_cost: float | None = None
    alignment_costs: list[float] = field(default_factory=list)
    permutation: list[int] = field(default_factory=list)
    unmatched: list[int] = field(default_factory=list)
    promotion_margin: float = 0.0
    alignment_threshold: float = 0.0
    challenger_aic: float | None = None
    challenger_bic: float | None = None
    n_holdout: int = 0

    @property
    def label(self) -> str:
        """``"promote"`` or ``"reject"``: the value of the registry's decision tag."""
        return "promote" if self.promote else "reject"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | Decision) -> Decision:
        """Rebuild from :meth:`to_dict` output (a Decision passes through)."""
        if isinstance(values, Decision):
            return values
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def decide(
    evaluation: Evaluation,
    *,
    alignment_mean_cost: float | None,
    promotion_margin: float,
    alignment_threshold: float,
) -> tuple[bool, str]:
    """Apply the promotion rule; return ``(promote, reason)``.

    Promote iff there is no champion, or the challenger's mean holdout log-likelihood is at most
    ``promotion_margin`` nats per row below the champion's AND the mean alignment cost is at most
    ``alignment_threshold``. A non-finite likelihood or cost never promotes.

    Parameters
    ----------
    evaluation : Evaluation
        Both models scored on the same holdout.
    alignment_mean_cost : float or None
        Mean matched-pair cost from aligning the challenger to the champion (None without one).
    promotion_margin : float
        Allowed drop in mean holdout log-likelihood, nats per row (>= 0).
    alignment_threshold : float
        Largest accepted mean alignment cost.
    """
    challenger_ll = evaluation.challenger_mean_loglik
    if not math.isfinite(challenger_ll):
        return False, (
            f"challenger holdout mean log-likelihood is {challenger_ll}: the model is degenerate "
            "on the holdout (check the training data and reg_covar)"
        )
    if evaluation.champion_version is None or evaluation.champion_mean_loglik is None:
        return True, (
            f"no champion yet: first model becomes champion "
            f"(holdout mean log-likelihood {challenger_ll:.4f} over {evaluation.n_holdout} rows)"
        )
    champion = f"champion v{evaluation.champion_version}"
    champion_ll = evaluation.champion_mean_loglik
    delta = challenger_ll - champion_ll
    ll_text = (
        f"holdout mean log-likelihood {challenger_ll:.4f} vs {champion}'s {champion_ll:.4f} "
        f"(delta {delta:+.4f} nats/row, margin {promotion_margin:g})"
    )
    if delta < -promotion_margin:
        return False, (
            f"rejected: {ll_text}: the challenger is worse than the champion by more than "
            "the margin"
        )
    if alignment_mean_cost is None or not math.isfinite(alignment_mean_cost):
        return False, (
            f"rejected: alignment to {champion} failed (cost {alignment_mean_cost}); {ll_text}"
        )
    align_text = (
        f"alignment mean cost {alignment_mean_cost:.4f} "
        f"{'<=' if alignment_mean_cost <= alignment_threshold else '>'} "
        f"threshold {alignment_threshold:g}"
    )
    if alignment_mean_cost > alignment_threshold:
        return False, (
            f"rejected: {align_text}: the components moved too far from {champion}'s to keep their "
            f"ids; {ll_text}"
        )
    return True, f"promoted: {ll_text}; {align_text}"


def mean_loglik(score_samples: np.ndarray) -> float:
    """Mean of per-row log-likelihoods, shape (n_samples,) -> float (nats per row)."""
    values = np.asarray(score_samples, dtype=np.float64)
    return float(values.mean()) if values.size else float("nan")
