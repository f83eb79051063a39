"""Input checks of the estimator: user initial parameters, and magnitudes the dtype can square."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


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
