"""Sample weights: validation, and which engines take them.

A weight multiplies a row's responsibilities in every sufficient statistic and its log-density
in the lower bound, so an integer weight ``w`` is the same fit as the row repeated ``w`` times.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def check_sample_weight(sample_weight: Any, n_samples: int, n_components: int | None) -> np.ndarray:
    """Validated sample weights as a float64 array of shape (n_samples,).

    Parameters
    ----------
    sample_weight : array-like of shape (n_samples,) or float
        One non-negative, finite weight per row of ``X``; a scalar weighs every row alike.
        A CuPy array is copied to the host.
    n_samples : int
        Rows of ``X``.
    n_components : int or None
        Components to fit: at least this many rows need a positive weight (None: no such
        check, for one chunk of a larger data set).

    Raises
    ------
    ValueError
        Naming what is wrong and what to pass instead.
    """
    if type(sample_weight).__module__.split(".")[0] == "cupy":
        sample_weight = sample_weight.get()
    try:
        weights = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"sample_weight must be numeric ({exc}); pass one non-negative number per row of X."
        ) from exc
    if weights.ndim == 0:
        weights = np.full(n_samples, float(weights), dtype=np.float64)
    if weights.ndim != 1:
        raise ValueError(
            f"sample_weight must be 1-D with one weight per row of X, got shape "
            f"{weights.shape}; pass an array of shape ({n_samples},) (e.g. w.ravel())."
        )
    if weights.shape[0] != n_samples:
        raise ValueError(
            f"sample_weight has {weights.shape[0]} entries but X has {n_samples} rows; pass "
            "one weight per row of X."
        )
    if not np.isfinite(weights).all():
        bad = int((~np.isfinite(weights)).sum())
        raise ValueError(
            f"sample_weight holds {bad} NaN or infinite value(s); give those rows a finite "
            "weight (0 leaves a row out)."
        )
    if (weights < 0).any():
        row = int(np.argmin(weights))
        raise ValueError(
            f"sample_weight must be non-negative, found {float(weights[row])} at row {row}; "
            "use 0 to leave a row out (a negative weight is not a probability mass)."
        )
    if n_components is not None:
        check_enough_weighted_rows(int(np.count_nonzero(weights)), n_components)
    return weights


def em_scale(weight_total: float, n_rows: int) -> float:
    """The factor the EM multiplies sample weights by: ``1 / mean`` where their mean is below 1.

    The M-step adds ``10 * eps`` to every ``N_k`` as scikit-learn does: a count of rows. Weights
    of mean below one (frequencies, weights normalised to sum to 1) would make that term weigh
    like many rows (with 20 of 40,000 rows at weight 1/40,000 in float32 it moved a component's
    mean by a standard deviation), so they are scaled to mean 1 first: the fit is then the same
    for any common factor of such weights. Weights of mean one or more are counts and are taken
    as they are (an integer weight stays the row repeated).
    """
    mean = weight_total / n_rows
    return 1.0 / mean if 0.0 < mean < 1.0 else 1.0


def em_weights(weights: np.ndarray) -> np.ndarray:
    """Validated weights as the EM takes them (:func:`em_scale`)."""
    scale = em_scale(float(weights.sum()), weights.shape[0])
    return weights if scale == 1.0 else weights * scale


def check_enough_weighted_rows(n_positive: int, n_components: int) -> None:
    """Refuse weights that leave fewer than ``n_components`` rows (or none) with a positive one."""
    if n_positive == 0:
        raise ValueError(
            "sample_weight is zero for every row; give at least n_components rows a positive "
            "weight."
        )
    if n_positive < n_components:
        raise ValueError(
            f"only {n_positive} row(s) have a positive sample_weight but n_components = "
            f"{n_components}; lower n_components or give more rows a positive weight."
        )


def unsupported_sample_weight(engine_name: str) -> NotImplementedError:
    """The error for an engine that cannot weight its passes yet, naming the workarounds."""
    return NotImplementedError(
        f"sample_weight is not supported by the {engine_name!r} engine yet; fit with "
        "backend='numpy' (or backend='dask'), or use integer weights by repeating rows "
        "(np.repeat(X, w, axis=0))."
    )


def engine_for_weights(engine: Any, backend: str) -> Any:
    """``engine`` if it weights its passes; for ``backend='auto'`` the NumPy engine instead.

    Raises
    ------
    NotImplementedError
        For an explicitly chosen engine without weights (see :func:`unsupported_sample_weight`).
    """
    if engine.supports_sample_weight:
        return engine
    if backend != "auto":
        raise unsupported_sample_weight(engine.name)
    import logging

    from ._numpy_engine import NumpyEngine

    logging.getLogger("gmm_core").info(
        "backend='auto' fits with sample_weight on NumPy: the %s engine does not take weights yet",
        engine.name,
    )
    return NumpyEngine()
