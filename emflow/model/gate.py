"""The promotion gate: what a challenger must show to replace the champion, and why it did or not.

:func:`gate_models` aligns the challenger's components to the champion's (Hungarian assignment on
the Bhattacharyya distance), writes the reordered challenger beside the trained one and applies
:func:`decide`. A :class:`Decision` holds plain values only, so it travels between pipeline tasks
as JSON and is recorded verbatim as MLflow tags and the model card. Finding the champion in the
registry is :mod:`emflow.run.gate`'s job.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emflow.model.evaluation import Evaluation
from emflow.records import Record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision(Record):
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
    n_components, champion_n_components : int or None
        K of the challenger and of the champion (None without one).
    unmatched_champion : list of int
        Champion components left without a challenger partner (the challenger has fewer).
    alignment_gated : bool
        Whether the alignment threshold took part in the decision: False when K changed (see
        :func:`decide`); the alignment is computed and reported all the same.
    false_alarm_rate, alarm_rate : float or None
        The challenger's anomaly threshold's target rate, and the rate measured on fresh holdout
        rows (None: no threshold was calibrated).
    alarm_rate_band : list of float
        ``[low, high]`` the measured rate had to lie in (empty without a threshold).
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
    n_components: int | None = None
    champion_n_components: int | None = None
    unmatched_champion: list[int] = field(default_factory=list)
    alignment_gated: bool = True
    false_alarm_rate: float | None = None
    alarm_rate: float | None = None
    alarm_rate_band: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``"promote"`` or ``"reject"``: the value of the registry's decision tag."""
        return "promote" if self.promote else "reject"


def decide(
    evaluation: Evaluation,
    *,
    alignment_mean_cost: float | None,
    promotion_margin: float,
    alignment_threshold: float,
    k_change: tuple[int, int] | None = None,
) -> tuple[bool, str]:
    """Apply the promotion rule; return ``(promote, reason)``.

    Promote iff there is no champion, or the challenger's mean holdout log-likelihood is at most
    ``promotion_margin`` nats per row below the champion's AND the mean alignment cost is at most
    ``alignment_threshold``. A non-finite likelihood or cost never promotes, nor does a
    calibrated anomaly threshold whose alarm rate on fresh holdout rows left its band
    (:func:`alarm_rate_problem`; with or without a champion).

    A changed number of components (``k_change``, from ``n_components="auto"``) is a new model
    structure, not a drift of the same components: components split or merge, so the matched
    pairs' cost measures the change of K rather than whether ids can be kept, and ids cannot all
    be kept anyway. Then the likelihood margin alone decides, and the reason says that the
    alignment was not gated. The alignment is still applied and reported: matched challenger
    components take the champion's ids, unmatched ones follow (``Decision.unmatched``), and
    champion components without a partner are retired (``Decision.unmatched_champion``).

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
    alarm_problem = alarm_rate_problem(evaluation)
    if alarm_problem is not None:
        return False, f"rejected: {alarm_problem}"
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
    if k_change is not None:
        cost = "failed" if alignment_mean_cost is None else f"{alignment_mean_cost:.4f}"
        return True, (
            f"promoted: {ll_text}; K changed from {k_change[0]} to {k_change[1]}, so the "
            f"alignment threshold was not applied (matched-pair mean cost {cost}; matched "
            "components keep the champion's ids, unmatched ones are new or retired)"
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


def alarm_rate_problem(evaluation: Evaluation) -> str | None:
    """Why the challenger's anomaly threshold fails its check (None: it holds, or none was set).

    The threshold was calibrated on one half of the holdout; the share of the other half it
    flags must lie in ``evaluation.alarm_rate_band`` (:mod:`emflow.model.anomaly`).
    """
    rate, band = evaluation.alarm_rate, evaluation.alarm_rate_band
    if evaluation.false_alarm_rate is None or rate is None or len(band) != 2:
        return None
    low, high = band
    if math.isfinite(rate) and low <= rate <= high:
        return None
    return (
        f"the anomaly threshold flags {rate:.4f} of {evaluation.n_alarm_check} fresh holdout "
        f"rows, outside [{low:.4f}, {high:.4f}] around the target false-alarm rate "
        f"{evaluation.false_alarm_rate:g}: the model's scores do not generalise within the "
        "window (check for duplicated or constant rows and over-fitting; fewer components)"
    )


def aligned_dir_for(challenger_dir: str | Path) -> Path:
    """Where :func:`gate` writes the challenger reordered to the champion's component ids."""
    path = Path(challenger_dir)
    return path.with_name(path.name + "-aligned")


def gate_models(
    evaluation: Evaluation,
    challenger: Any,
    challenger_dir: str | Path,
    champion: Any = None,
    *,
    promotion_margin: float,
    alignment_threshold: float,
    k_selected: bool = False,
) -> Decision:
    """Align the challenger to the champion, write it reordered, and decide on promotion.

    The challenger is matched to the champion component by component (Hungarian assignment on
    the Bhattacharyya distance, ``gmm_core.align_components``) and saved reordered to
    :func:`aligned_dir_for` ``(challenger_dir)``; the trained folder is left as it was. Promote iff
    there is no champion, or the holdout mean log-likelihood is at most ``promotion_margin``
    below the champion's and the mean alignment cost is at most ``alignment_threshold``.

    Parameters
    ----------
    evaluation : Evaluation
        From :func:`emflow.model.evaluation.evaluate_models` on this challenger and champion.
    challenger : gmm_core.GaussianMixture
        The challenger, as saved in ``challenger_dir``.
    challenger_dir : str or Path
        The challenger's gmm_core model folder.
    champion : gmm_core.GaussianMixture, optional
        The model of ``evaluation.champion_version`` (None without a champion).
    promotion_margin, alignment_threshold : float
        The limits of :func:`decide`.
    k_selected : bool
        The challenger's K was chosen by model selection (``n_components="auto"``): a K unlike
        the champion's is then a new structure, gated on the likelihood alone (:func:`decide`).
        A fixed ``n_components`` unlike the champion's keeps the alignment threshold, as every
        retrain does: an operator's trial with another K would otherwise pass a regime shift the
        threshold exists to stop.

    Returns
    -------
    Decision
        ``promote``, ``reason``, alignment evidence and ``model_dir`` (the folder to publish).
    """
    import gmm_core

    n_components = int(np.asarray(challenger.weights_).shape[0])
    champion_k = None if champion is None else int(np.asarray(champion.weights_).shape[0])
    k_change: tuple[int, int] | None = None
    k_differs = champion_k is not None and champion_k != n_components
    if evaluation.champion_version is not None and champion_k is not None and k_differs:
        k_change = (champion_k, n_components) if k_selected else None
    champion_version = evaluation.champion_version
    model_dir = Path(challenger_dir)
    alignment = None
    if champion_version is not None and champion is not None:
        try:
            alignment = gmm_core.align_components(champion, challenger)
        except ValueError as error:  # e.g. a different number of features
            return Decision(
                promote=False,
                reason=f"rejected: cannot align to champion v{champion_version}: {error}",
                model_dir=str(model_dir),
                champion_version=champion_version,
                challenger_mean_loglik=evaluation.challenger_mean_loglik,
                champion_mean_loglik=evaluation.champion_mean_loglik,
                promotion_margin=float(promotion_margin),
                alignment_threshold=float(alignment_threshold),
                challenger_aic=evaluation.challenger_aic,
                challenger_bic=evaluation.challenger_bic,
                n_holdout=evaluation.n_holdout,
                **_alarm_evidence(evaluation),
            )
        order = [int(i) for i in np.asarray(alignment.permutation)]  # unmatched ones last
        model_dir = aligned_dir_for(challenger_dir)
        _save_aligned(alignment.aligned, challenger, model_dir, champion_version, order)
    mean_cost = None if alignment is None else float(alignment.mean_cost)
    promote, reason = decide(
        evaluation,
        alignment_mean_cost=mean_cost,
        promotion_margin=promotion_margin,
        alignment_threshold=alignment_threshold,
        k_change=k_change,
    )
    if k_differs and k_change is None and evaluation.champion_version is not None:
        reason += (
            f" (K {champion_k} -> {n_components} by a fixed n_components: the alignment threshold "
            "applies, as to every retrain; n_components='auto' gates a change of K on the "
            "likelihood alone)"
        )
    champion_ll = evaluation.champion_mean_loglik
    decision = Decision(
        promote=promote,
        reason=reason,
        model_dir=str(model_dir),
        champion_version=champion_version,
        challenger_mean_loglik=evaluation.challenger_mean_loglik,
        champion_mean_loglik=champion_ll,
        loglik_delta=None
        if champion_ll is None
        else evaluation.challenger_mean_loglik - champion_ll,
        alignment_mean_cost=mean_cost,
        alignment_costs=[] if alignment is None else [float(c) for c in alignment.costs],
        permutation=list(range(n_components))
        if alignment is None
        else [int(i) for i in np.asarray(alignment.permutation)],
        unmatched=[] if alignment is None else [int(i) for i in np.asarray(alignment.unmatched)],
        promotion_margin=float(promotion_margin),
        alignment_threshold=float(alignment_threshold),
        challenger_aic=evaluation.challenger_aic,
        challenger_bic=evaluation.challenger_bic,
        n_holdout=evaluation.n_holdout,
        n_components=n_components,
        champion_n_components=champion_k,
        unmatched_champion=[]
        if alignment is None
        else [int(i) for i in alignment.unmatched_reference],
        alignment_gated=k_change is None,
        **_alarm_evidence(evaluation),
    )
    log.info("gate: %s (%s)", decision.label, decision.reason)
    return decision


def _alarm_evidence(evaluation: Evaluation) -> dict[str, Any]:
    """The anomaly threshold check's numbers, as :class:`Decision` fields."""
    return {
        "false_alarm_rate": evaluation.false_alarm_rate,
        "alarm_rate": evaluation.alarm_rate,
        "alarm_rate_band": list(evaluation.alarm_rate_band),
    }


def _save_aligned(
    aligned: Any, challenger: Any, target: Path, champion_version: str, order: list[int]
) -> None:
    """Save the reordered challenger to ``target`` (replacing an earlier attempt's copy)."""
    import gmm_core
    from emflow.model.pyfunc_model import model_feature_names

    for name in ("restart_lower_bounds_", "lower_bounds_", "fit_seconds_", "backend_"):
        if hasattr(challenger, name) and not hasattr(aligned, name):
            setattr(aligned, name, getattr(challenger, name))
    metadata = dict(getattr(challenger, "metadata_", None) or {})
    metadata["aligned_to"] = {"champion_version": str(champion_version), "order": order}
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        gmm_core.save_model(
            aligned,
            staging / "model",
            feature_names=model_feature_names(challenger),
            metadata=metadata,
        )
        if target.exists():  # derived from the challenger folder, rewritten identically
            shutil.rmtree(target)
        (staging / "model").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
