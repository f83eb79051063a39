"""Input checks of the estimator: data, initial parameters, magnitudes the dtype can square.

``checked_X`` (the rows, NumPy or CuPy), ``check_n_features`` (their width against the fit),
``checked_initial_parameters`` (the user's ``*_init`` arrays), ``check_magnitude``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.utils.validation import validate_data


def checked_initial_parameters(
    weights_init: Any,
    means_init: Any,
    precisions_init: Any,
    *,
    n_components: int,
    covariance_type: str,
    n_features: int,
) -> dict[str, np.ndarray]:
    """The user's ``*_init`` arrays, validated (keys ``weights``, ``means``, ``precisions``).

    Errors name the fix, as scikit-learn's do.
    """
    k = n_components
    out: dict[str, np.ndarray] = {}
    if weights_init is not None:
        w = as_float_array(weights_init, "weights_init", (k,))
        if (w < 0).any() or (w > 1).any():
            raise ValueError(
                "The parameter 'weights' should be in the range [0, 1], but got max value "
                f"{w.max():.5f}, min value {w.min():.5f}; pass proportions that sum to 1."
            )
        if not np.allclose(
            np.abs(1.0 - w.sum()), 0.0, atol=1e-6 if w.dtype == np.float32 else 1e-8
        ):
            raise ValueError(
                f"The parameter 'weights' should be normalized, but got sum(weights) = "
                f"{w.sum():.5f}; divide weights_init by its sum."
            )
        out["weights"] = w
    if means_init is not None:
        out["means"] = as_float_array(means_init, "means", (k, n_features))
    if precisions_init is not None:
        shape = {
            "full": (k, n_features, n_features),
            "tied": (n_features, n_features),
            "diag": (k, n_features),
            "spherical": (k,),
        }[covariance_type]
        prec = as_float_array(precisions_init, f"{covariance_type} precision", shape)
        if covariance_type in ("full", "tied"):
            mats = prec.reshape(-1, n_features, n_features)
            symmetric = np.allclose(mats, np.swapaxes(mats, -1, -2))
            if not (symmetric and (np.linalg.eigvalsh(mats) > 0).all()):
                raise ValueError(
                    f"'{covariance_type} precision' should be symmetric, "
                    "positive-definite; pass inverse covariance matrices."
                )
        elif (prec <= 0).any():
            raise ValueError(f"'{covariance_type} precision' should be positive; pass 1/variance.")
        out["precisions"] = prec
    return out


def check_magnitude(largest: float, dtype: Any, n_features: int, name: str = "X") -> None:
    """Refuse data whose squares overflow their dtype (EM would give infinite covariances).

    The passes form squares and sums of ``n_features`` of them (times a few constants), so the
    largest safe magnitude is ``sqrt(finfo.max / (16 * n_features))``: about 1.2e18 for float32
    with 16 features.
    """
    dtype = np.dtype(dtype)
    limit = math.sqrt(float(np.finfo(dtype).max) / (16.0 * n_features))
    if largest > limit:
        # float32 data fit in float64; float64 data can only be rescaled
        remedy = (
            f"Convert {name} to float64 ({name}.astype(numpy.float64)) or rescale it"
            if dtype.itemsize < 8
            else f"Rescale {name}"
        )
        raise ValueError(
            f"{name} has values up to {largest:.3g}, too large for {dtype.name}: their squares "
            f"overflow (the largest safe magnitude with {n_features} features is {limit:.3g}). "
            f"{remedy} (e.g. sklearn.preprocessing.StandardScaler)."
        )


def as_float_array(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype not in (np.float32, np.float64):
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"The parameter '{name}' must be numeric, got {array.dtype}; pass a float array."
            ) from exc
    if not np.isfinite(array).all():
        raise ValueError(
            f"The parameter '{name}' contains NaN or infinity; pass finite initial values."
        )
    if array.shape != shape:
        raise ValueError(
            f"The parameter '{name}' should have the shape of {shape}, but got {array.shape}."
        )
    return array


def checked_X(
    model: Any, X: Any, *, reset: bool, finite_here: bool = True, min_samples: int | None = None
) -> Any:
    """``X`` for ``model`` (a GaussianMixture): validated 2-D float32/float64 data.

    CuPy arrays stay on their device. ``n_features_in_`` is set (``reset``) or compared.
    ``min_samples``: rows required (default 2 when fitting, 1 otherwise; a chunk of a larger
    source may be empty).

    ``finite_here=False``: the data are not scanned for NaN/inf and their magnitude here, NumPy
    on the host nor CuPy on the device: a device-init engine checks both in the pass that
    computes the data's moments (``_fit.place_on_device``), so a CuPy fit reads its data once
    for the checks, not twice.
    """
    if type(X).__module__.split(".")[0] != "cupy":
        try:
            return validate_data(
                model,
                X,
                reset=reset,
                dtype=[np.float64, np.float32],
                ensure_min_samples=(2 if reset else 1) if min_samples is None else min_samples,
                ensure_all_finite=finite_here,
            )
        except ValueError as exc:
            if "could not convert" not in str(exc):
                raise
            raise ValueError(
                f"X must be numeric ({exc}). Pass only the numeric feature columns, or "
                "encode categorical columns as numbers first."
            ) from exc
    import cupy

    if X.ndim != 2:
        raise ValueError(
            f"Expected a 2D array, got a {X.ndim}D CuPy array; reshape your data with "
            "X.reshape(-1, 1) for a single feature or X.reshape(1, -1) for a single sample."
        )
    if X.dtype not in (cupy.float32, cupy.float64):
        X = X.astype(cupy.float64)
    if reset:
        if X.shape[0] < 2:
            raise ValueError(
                f"Found array with {X.shape[0]} sample(s) while a minimum of 2 is required."
            )
        model.n_features_in_ = X.shape[1]
    else:
        check_n_features(model, X.shape[1])
    if finite_here:
        from ._cupy.checks import max_abs

        largest = max_abs(X)  # one reduction on the device: finite? how large?
        if not math.isfinite(largest):
            raise ValueError("Input X contains NaN or infinity; remove or impute those rows first.")
        check_magnitude(largest, X.dtype, X.shape[1])
    return X


def check_n_features(model: Any, n_features: int) -> None:
    """Refuse data whose width differs from what ``model`` was fitted on (scikit-learn's words)."""
    if n_features != model.n_features_in_:
        raise ValueError(
            f"X has {n_features} features, but {type(model).__name__} is expecting "
            f"{model.n_features_in_} features as input."
        )
