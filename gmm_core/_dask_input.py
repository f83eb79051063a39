"""``GaussianMixture(backend="dask").fit`` of a dask array or DataFrame, its rows never gathered.

Validation, the magnitude check and the data mean are dask reductions (one small result on the
client); the partitions go to :meth:`gmm_core._dask_engine.DaskEngine.prepare` as they are and
are centred where they live. A host initialisation (k-means, random responsibilities) reads at
most :data:`INIT_SAMPLE_ROWS` rows: all of them for smaller data (the fit then equals the NumPy
fit of the same rows), else a uniform sample drawn with the fit's ``random_state``, as a chunked
fit draws its start from one chunk. Sample weights stay one float64 per row on the client.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._checks import check_magnitude, check_n_features

#: rows a host initialisation reads from a dask array at most
INIT_SAMPLE_ROWS = 200_000


def is_dask_collection(X: Any) -> bool:
    """Whether ``X`` is a dask array or DataFrame (without importing dask)."""
    return type(X).__module__.split(".")[0] == "dask"


def checked_dask_array(model: Any, X: Any, *, reset: bool) -> Any:
    """``X`` as a 2-D float32/float64 dask array with known row chunks; features checked.

    Nothing is computed but a DataFrame's partition lengths; ``n_features_in_`` is set (reset)
    or compared, and a DataFrame's column names are recorded (``feature_names_in_``) or
    checked as scikit-learn does a pandas DataFrame's (QA probe: a dask DataFrame's columns
    were dropped, so a holdout with its columns reordered was scored by position, silently).

    Raises
    ------
    ValueError
        Naming what to pass instead.
    """
    import pandas as pd
    from sklearn.utils.validation import _check_feature_names

    frame = hasattr(X, "to_dask_array")
    # the columns as an empty pandas frame's; a dask array has none (names dropped on reset,
    # a warning where the model was fitted with names, as for a NumPy array)
    _check_feature_names(model, pd.DataFrame(columns=X.columns) if frame else X, reset=reset)
    if frame:  # a dask DataFrame: its partitions' lengths are counted
        X = X.to_dask_array(lengths=True)
    if X.ndim != 2:
        raise ValueError(
            f"Expected a 2D dask array, got {X.ndim}D; reshape it with X.reshape(-1, 1) for a "
            "single feature."
        )
    if any(math.isnan(c) for c in X.chunks[0]):
        X = X.compute_chunk_sizes()
    if X.dtype not in (np.float32, np.float64):
        if not np.issubdtype(X.dtype, np.number) and X.dtype != np.bool_:
            raise ValueError(
                f"X must be numeric, got dtype {X.dtype}. Pass only the numeric feature columns."
            )
        X = X.astype(np.float64)
    n_samples, n_features = int(X.shape[0]), int(X.shape[1])
    if reset:
        if n_samples < 2:
            raise ValueError(
                f"Found array with {n_samples} sample(s) while a minimum of 2 is required."
            )
        model.n_features_in_ = n_features
    else:
        check_n_features(model, n_features)
    return X


def dask_moments(X: Any) -> tuple[np.ndarray, float]:
    """The column means (float64) and the largest magnitude of a dask array, in one pass.

    Raises
    ------
    ValueError
        When ``X`` holds NaN or infinity, or values whose squares overflow its dtype.
    """
    import dask
    import dask.array as da

    finite, largest, mean = dask.compute(
        da.isfinite(X).all(), abs(X).max(), X.mean(axis=0, dtype=np.float64)
    )
    if not bool(finite):
        raise ValueError("Input X contains NaN or infinity; remove or impute those rows first.")
    check_magnitude(float(largest), X.dtype, X.shape[1])
    return np.asarray(mean, dtype=np.float64), float(largest)


def init_rows(
    X: Any, sample_weight: np.ndarray | None, random_state: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows (and their weights) a host initialisation reads.

    Host rows (NumPy) as they are; of a dask array all of them up to :data:`INIT_SAMPLE_ROWS`
    (``random_state`` untouched), else a uniform sample drawn from it (rows of positive weight
    only, when weights are given).
    """
    if not is_dask_collection(X):
        return X, sample_weight
    n_samples = int(X.shape[0])
    if n_samples <= INIT_SAMPLE_ROWS:
        return np.asarray(X.compute()), sample_weight
    candidates = np.arange(n_samples) if sample_weight is None else np.flatnonzero(sample_weight)
    if len(candidates) > INIT_SAMPLE_ROWS:
        candidates = np.sort(random_state.choice(candidates, INIT_SAMPLE_ROWS, replace=False))
    rows = np.asarray(X[candidates].compute())
    return rows, None if sample_weight is None else sample_weight[candidates]


def on_client(values: Any) -> Any:
    """Per-row values (sample weights) of a dask collection computed here; others as they are."""
    return np.asarray(values.compute()) if is_dask_collection(values) else values
