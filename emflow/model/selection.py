"""``n_components="auto"``: choose K by one sweep of ``gmm_core.GaussianMixtureSelect``.

The sweep fits every K of ``k_min..k_max`` (the run's covariance type, restarts and seed) and
keeps the candidate the criterion prefers. Which rows judge it:

- ``bic`` / ``aic``: the train rows (the criteria penalise the extra parameters themselves);
  the run's holdout is scored for the table only (``holdout_score``), never to choose.
- ``holdout``: a seeded fifth of the train rows, held out of the sweep; the chosen model is
  fitted on the other four fifths. The run's own holdout stays unseen until the gate compares
  challenger and champion on it, so the comparison is not biased towards the chosen K.

The table (one row per K) is written beside the model as ``selection.json`` and
``selection.csv`` and logged to MLflow with the plot of :func:`emflow.model.plots.selection_curves`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Fraction of the train rows that judges ``criterion="holdout"``.
VALIDATION_FRACTION = 0.2
SELECTION_JSON = "selection.json"
SELECTION_CSV = "selection.csv"


def validation_split(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded ``(fit_rows, validation_rows)`` indices of ``n_rows`` train rows (sorted)."""
    n_validation = max(1, int(round(VALIDATION_FRACTION * n_rows)))
    if n_rows - n_validation < 2:
        raise ValueError(
            f"criterion='holdout' needs at least 3 train rows to hold some out, got {n_rows}; "
            "use criterion='bic' or a longer window"
        )
    order = np.random.default_rng(seed).permutation(n_rows)
    return np.sort(order[n_validation:]), np.sort(order[:n_validation])


def select_model(
    X: np.ndarray,
    *,
    k_min: int,
    k_max: int,
    covariance_type: str,
    criterion: str,
    n_init: int,
    max_iter: int,
    seed: int,
    backend: str,
    X_report: np.ndarray | None = None,
    sample_weight: np.ndarray | None = None,
) -> Any:
    """Fit the sweep over ``k_min..k_max`` and return the fitted ``GaussianMixtureSelect``.

    Parameters
    ----------
    X : ndarray of shape (n_train, n_features)
        The run's train rows.
    k_min, k_max : int
        Inclusive range of K; a K above the number of rows is recorded as failed.
    covariance_type, n_init, max_iter, seed, backend
        As the run's fixed-K fit uses them.
    criterion : {'bic', 'aic', 'holdout'}
        See the module docstring for the rows each one is judged on.
    X_report : ndarray of shape (n_holdout, n_features), optional
        Rows scored for the table only (``bic``/``aic``); ignored by ``holdout``.
    sample_weight : ndarray of shape (n_train,), optional
        The train rows' weights (time decay); with ``holdout`` the fitted part's, the
        validation rows are scored unweighted.
    """
    from gmm_core import GaussianMixtureSelect

    selector = GaussianMixtureSelect(
        range(int(k_min), int(k_max) + 1),
        covariance_type=covariance_type,
        criterion=criterion,
        n_init=int(n_init),
        max_iter=int(max_iter),
        random_state=int(seed),
        backend=backend,
    )
    if criterion == "holdout":
        fit_rows, validation_rows = validation_split(len(X), int(seed))
        weights = None if sample_weight is None else sample_weight[fit_rows]
        selector.fit(X[fit_rows], X_holdout=X[validation_rows], sample_weight=weights)
    else:
        selector.fit(X, X_holdout=X_report, sample_weight=sample_weight)
    # candidates share their passes: the chosen model's fit time is the sweep's
    selector.best_estimator_.fit_seconds_ = selector.fit_seconds_
    selector.best_estimator_.fit_timings_ = {"selection": float(selector.fit_seconds_)}
    chosen = selector.best_params_["n_components"]
    failed = int(np.sum(selector.results_["failed"]))
    log.info(
        "model selection: K=%d of %d..%d by %s (%d candidate(s) failed) in %.2f s on %s",
        chosen,
        k_min,
        k_max,
        criterion,
        failed,
        selector.fit_seconds_,
        selector.backend_,
    )
    return selector


def selection_rows(selector: Any) -> list[dict[str, Any]]:
    """``results_`` as JSON-ready rows (NaN as None), with ``chosen`` marking the best row."""
    table = selector.results_
    rows = []
    for i in range(len(table["n_components"])):
        row: dict[str, Any] = {}
        for name, column in table.items():
            value = column[i]
            value = value.item() if isinstance(value, np.generic) else value
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            row[name] = value
        row["chosen"] = i == selector.best_index_
        rows.append(row)
    return rows


def write_selection(selector: Any, folder: str | Path) -> Path:
    """Write ``selection.json`` (criterion, choice, rows) and ``selection.csv``; return the JSON."""
    folder = Path(folder)
    rows = selection_rows(selector)
    payload = {
        "criterion": selector.criterion,
        "chosen": dict(selector.best_params_),
        "backend": selector.backend_,
        "batched": bool(selector.batched_),
        "fit_seconds": float(selector.fit_seconds_),
        "rows": rows,
    }
    path = folder / SELECTION_JSON
    path.write_text(json.dumps(payload, indent=2))
    with (folder / SELECTION_CSV).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_selection(path: str | Path) -> dict[str, Any]:
    """The payload :func:`write_selection` wrote."""
    return json.loads(Path(path).read_text())
