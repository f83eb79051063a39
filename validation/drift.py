"""Drift between a new telemetry batch and the champion's reference window.

The reference window (the champion's training data) is kept as a small JSON summary beside the
model (:func:`summarize_reference`): per feature, the mean and standard deviation, the edges of
``n_bins`` reference-quantile bins with the reference fraction in each, and 200 quantiles that
stand in for the reference sample; optionally the same for the model's log-likelihood scores.
:func:`write_reference` / :func:`read_reference` keep it as ``reference_summary.json`` in the
model's folder.

:func:`drift_report` compares a batch with it:

* **PSI** per feature over the reference-quantile bins,
  ``sum_b (q_b - p_b) * ln(q_b / p_b)`` (p reference, q batch fractions; floored at 1e-4);
* **Wasserstein-1** per feature between the batch and the reference quantiles
  (``scipy.stats.wasserstein_distance``), also divided by the reference standard deviation so a
  single threshold fits every feature;
* **score distribution drift** under a model with ``score_samples``: Jensen-Shannon divergence
  (nats) between the histograms of per-sample log-likelihoods of the reference and of the batch
  over reference-score-quantile bins, plus the shift of the mean score.

Thresholds come from the contract's ``drift:`` section
(:class:`validation.contract.DriftThresholds`).

Examples
--------
>>> from validation.synthetic import make_telemetry, FEATURE_COLUMNS
>>> reference_rows = make_telemetry(4000, "2026-11-01", "2026-11-02")
>>> reference = summarize_reference(reference_rows, FEATURE_COLUMNS)
>>> same = make_telemetry(2000, "2026-11-02", "2026-11-03", seed=7)
>>> drift_report(reference, same).drifted
False
>>> moved = make_telemetry(2000, "2026-11-02", "2026-11-03", seed=7, shift=1.5)
>>> drift_report(reference, moved).drifted
True
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from validation.contract import DriftThresholds

SUMMARY_VERSION = 1
N_QUANTILES = 200
PROBABILITY_FLOOR = 1e-4


# ---------------------------------------------------------------------------------------------
# Histogram helpers
# ---------------------------------------------------------------------------------------------
def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def _describe(values: np.ndarray, n_bins: int) -> dict[str, Any]:
    """Summary of one 1-D sample: moments, quantile-bin edges and fractions, quantiles."""
    values = _finite(values)
    if values.size == 0:
        raise ValueError("no finite values to summarise: validate the batch first")
    probabilities = np.arange(1, n_bins) / n_bins
    inner_edges = np.unique(np.quantile(values, probabilities))
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "bin_edges": inner_edges.tolist(),  # bins: (-inf, e0], (e0, e1], ..., (e_last, inf)
        "bin_fractions": _fractions(values, inner_edges).tolist(),
        "quantiles": np.quantile(values, (np.arange(N_QUANTILES) + 0.5) / N_QUANTILES).tolist(),
    }


def _fractions(values: np.ndarray, inner_edges: np.ndarray) -> np.ndarray:
    """Fraction of ``values`` in each bin ``(-inf, e0], (e0, e1], ..., (e_last, inf)``."""
    counts = np.bincount(
        np.searchsorted(inner_edges, values, side="left"), minlength=len(inner_edges) + 1
    )
    return counts / max(values.size, 1)


def psi(
    reference_fractions: Sequence[float] | np.ndarray, batch_fractions: Sequence[float] | np.ndarray
) -> float:
    """Population Stability Index of two bin-fraction vectors (fractions floored at 1e-4)."""
    p = np.maximum(np.asarray(reference_fractions, dtype=np.float64), PROBABILITY_FLOOR)
    q = np.maximum(np.asarray(batch_fractions, dtype=np.float64), PROBABILITY_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def jensen_shannon(
    reference_fractions: Sequence[float] | np.ndarray, batch_fractions: Sequence[float] | np.ndarray
) -> float:
    """Jensen-Shannon divergence (nats, in ``[0, ln 2]``) of two bin-fraction vectors."""
    p = np.asarray(reference_fractions, dtype=np.float64)
    q = np.asarray(batch_fractions, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log(a[mask] / m[mask])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def _matrix(data: Any, feature_columns: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    """``data`` as a float64 array of shape (n_samples, n_features) in ``feature_columns`` order."""
    if hasattr(data, "columns"):  # a DataFrame
        columns = list(feature_columns) if feature_columns is not None else list(data.columns)
        missing = [c for c in columns if c not in data.columns]
        if missing:
            raise ValueError(
                f"batch lacks feature column(s) {missing}: validate it against the contract "
                "first, or summarise the reference with the same feature_columns"
            )
        return data[columns].to_numpy(dtype=np.float64), columns
    array = np.asarray(data, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D array (n_samples, n_features), got shape {array.shape}")
    columns = (
        list(feature_columns)
        if feature_columns is not None
        else [f"x{j}" for j in range(array.shape[1])]
    )
    if len(columns) != array.shape[1]:
        raise ValueError(f"{len(columns)} feature names for {array.shape[1]} columns")
    return array, columns


# ---------------------------------------------------------------------------------------------
# Reference summary
# ---------------------------------------------------------------------------------------------
def summarize_reference(
    data: Any,
    feature_columns: Sequence[str] | None,
    *,
    n_bins: int | None = None,
    model: Any = None,
) -> dict[str, Any]:
    """JSON-able summary of the reference window, to store beside the champion.

    Parameters
    ----------
    data : pandas.DataFrame or array-like of shape (n_samples, n_features)
        The champion's training rows.
    feature_columns : sequence of str
        Features to summarise (DataFrame columns, or names of the array's columns in order).
    n_bins : int, optional
        PSI bins (reference quantiles); default the contract's ``drift.n_bins``.
    model : object with ``score_samples``, optional
        Also summarise the log-likelihood scores of the reference rows under this model, so later
        reports need neither the reference rows nor their scores.

    Returns
    -------
    dict
        ``{"version", "n_rows", "n_bins", "feature_columns", "features": {name: {...}},
        "scores": {...} or None}``.
    """
    n_bins = n_bins or _default_thresholds().n_bins
    matrix, columns = _matrix(data, feature_columns)
    summary: dict[str, Any] = {
        "version": SUMMARY_VERSION,
        "n_rows": int(matrix.shape[0]),
        "n_bins": int(n_bins),
        "feature_columns": columns,
        "features": {name: _describe(matrix[:, j], n_bins) for j, name in enumerate(columns)},
        "scores": None,
    }
    if model is not None:
        summary["scores"] = _describe(_scores(model, matrix), n_bins)
    return summary


REFERENCE_FILE = "reference_summary.json"


def write_reference(summary: Mapping[str, Any], directory: str | os.PathLike[str]) -> Path:
    """Write ``summary`` as ``directory/reference_summary.json`` (beside the model files)."""
    path = Path(directory) / REFERENCE_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def read_reference(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The reference summary stored in ``directory``, or None when there is none."""
    path = Path(directory) / REFERENCE_FILE
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    if summary.get("version") != SUMMARY_VERSION:
        raise ValueError(
            f"{path} has summary version {summary.get('version')}, expected {SUMMARY_VERSION}: "
            "re-create it with summarize_reference()"
        )
    return summary


def _scores(model: Any, matrix: np.ndarray) -> np.ndarray:
    rows = matrix[np.isfinite(matrix).all(axis=1)]
    return np.asarray(model.score_samples(rows), dtype=np.float64)


def _default_thresholds() -> DriftThresholds:
    from validation.contract import load_contract

    return load_contract().drift


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
@dataclass
class FeatureDrift:
    """Drift of one feature: PSI, Wasserstein-1 (raw units and in reference std) and means."""

    psi: float
    wasserstein: float
    wasserstein_std: float
    mean_reference: float
    mean_batch: float
    drifted: bool


@dataclass
class ScoreDrift:
    """Drift of the per-sample log-likelihood distribution under the model.

    ``js_divergence`` is in nats; ``mean_shift`` is ``mean_batch - mean_reference`` (nats per
    sample, negative when the batch fits the model worse).
    """

    js_divergence: float
    psi: float
    mean_reference: float
    mean_batch: float
    mean_shift: float
    drifted: bool


@dataclass
class DriftReport:
    """Result of :func:`drift_report`; ``to_dict()`` feeds metrics and the retrain decision."""

    drifted: bool
    n_rows: int
    features: dict[str, FeatureDrift]
    score: ScoreDrift | None
    thresholds: DriftThresholds
    reasons: list[str] = field(default_factory=list)

    @property
    def drifted_features(self) -> list[str]:
        """Features over a threshold."""
        return [name for name, f in self.features.items() if f.drifted]

    @property
    def max_psi(self) -> float:
        """Largest per-feature PSI."""
        return max((f.psi for f in self.features.values()), default=0.0)

    @property
    def max_wasserstein_std(self) -> float:
        """Largest per-feature Wasserstein-1 distance in reference standard deviations."""
        return max((f.wasserstein_std for f in self.features.values()), default=0.0)

    @property
    def summary(self) -> str:
        """One line for logs."""
        verdict = "DRIFTED" if self.drifted else "no drift"
        score = f", score JS {self.score.js_divergence:.3f} nats" if self.score is not None else ""
        return (
            f"{verdict}: max PSI {self.max_psi:.3f}, max W1 {self.max_wasserstein_std:.3f} std"
            f"{score} over {self.n_rows} rows"
            + (f" ({'; '.join(self.reasons)})" if self.reasons else "")
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        data = asdict(self)
        data.update(
            drifted_features=self.drifted_features,
            max_psi=self.max_psi,
            max_wasserstein_std=self.max_wasserstein_std,
            summary=self.summary,
        )
        return data


def drift_report(
    reference_summary: Mapping[str, Any],
    batch: Any,
    *,
    model: Any = None,
    reference_scores: Any = None,
    thresholds: DriftThresholds | Mapping[str, float] | None = None,
) -> DriftReport:
    """Compare ``batch`` with the reference window summarised in ``reference_summary``.

    Parameters
    ----------
    reference_summary : dict
        From :func:`summarize_reference` (possibly read back from JSON).
    batch : pandas.DataFrame or array-like of shape (n_samples, n_features)
        The new rows; a DataFrame needs the summary's feature columns, an array has them in order.
    model : object with ``score_samples``, optional
        Model under which to compare log-likelihood score distributions (the champion).
    reference_scores : array-like of shape (n_reference,), optional
        Reference rows' scores under ``model``; default the summary's ``scores``.
    thresholds : DriftThresholds or dict, optional
        Default the contract's ``drift:`` section; a dict overrides single values.

    Returns
    -------
    DriftReport
        ``drifted`` is True when any feature's PSI or scaled Wasserstein distance, or the score
        divergence, is above its threshold; ``reasons`` says which.
    """
    from scipy.stats import wasserstein_distance

    if isinstance(thresholds, DriftThresholds):
        limits = thresholds
    elif thresholds is None:
        limits = _default_thresholds()
    else:
        limits = DriftThresholds(**{**asdict(_default_thresholds()), **thresholds})
    columns = list(reference_summary["feature_columns"])
    matrix, _ = _matrix(batch, columns)
    if matrix.shape[0] == 0:
        raise ValueError("empty batch: nothing to compare with the reference")

    features: dict[str, FeatureDrift] = {}
    reasons: list[str] = []
    for j, name in enumerate(columns):
        ref = reference_summary["features"][name]
        values = _finite(matrix[:, j])
        batch_psi = psi(ref["bin_fractions"], _fractions(values, np.asarray(ref["bin_edges"])))
        w1 = float(wasserstein_distance(values, np.asarray(ref["quantiles"])))
        w1_std = w1 / ref["std"] if ref["std"] > 0 else (0.0 if w1 == 0 else float("inf"))
        over = batch_psi > limits.psi or w1_std > limits.wasserstein
        features[name] = FeatureDrift(
            psi=batch_psi,
            wasserstein=w1,
            wasserstein_std=w1_std,
            mean_reference=float(ref["mean"]),
            mean_batch=float(values.mean()) if values.size else float("nan"),
            drifted=bool(over),
        )
        if batch_psi > limits.psi:
            reasons.append(f"{name}: PSI {batch_psi:.3f} > {limits.psi}")
        if w1_std > limits.wasserstein:
            reasons.append(f"{name}: W1 {w1_std:.3f} std > {limits.wasserstein}")

    score: ScoreDrift | None = None
    if model is not None:
        if reference_scores is not None:
            ref_scores = _describe(np.asarray(reference_scores), int(reference_summary["n_bins"]))
        elif reference_summary.get("scores"):
            ref_scores = reference_summary["scores"]
        else:
            raise ValueError(
                "score drift needs the reference rows' scores: pass reference_scores=, or build "
                "the summary with summarize_reference(..., model=champion)"
            )
        batch_scores = _finite(_scores(model, matrix))
        batch_fractions = _fractions(batch_scores, np.asarray(ref_scores["bin_edges"]))
        js = jensen_shannon(ref_scores["bin_fractions"], batch_fractions)
        score = ScoreDrift(
            js_divergence=js,
            psi=psi(ref_scores["bin_fractions"], batch_fractions),
            mean_reference=float(ref_scores["mean"]),
            mean_batch=float(batch_scores.mean()),
            mean_shift=float(batch_scores.mean() - ref_scores["mean"]),
            drifted=bool(js > limits.score_divergence),
        )
        if score.drifted:
            reasons.append(f"log-likelihood scores: JS {js:.3f} nats > {limits.score_divergence}")

    return DriftReport(
        drifted=bool(reasons),
        n_rows=int(matrix.shape[0]),
        features=features,
        score=score,
        thresholds=limits,
        reasons=reasons,
    )
