"""Guards around a fit: a dtype whose squares cannot overflow, and no non-finite model saved."""

from __future__ import annotations

from typing import Any

import numpy as np

#: Largest magnitude fitted in float32: its square (a second moment) stays 256x below
#: float32's largest value, so covariances cannot overflow to inf.
FLOAT32_SAFE_MAX = float(np.sqrt(np.finfo(np.float32).max) / 16)

FITTED = ("weights_", "means_", "covariances_", "precisions_cholesky_")


def fit_dtype(X: np.ndarray) -> type[np.floating[Any]]:
    """float32 for ``X`` of shape (n_samples, n_features), float64 when float32 would overflow.

    Telemetry near 1e19 squares to ~1e38, float32's limit: such data is fitted in float64.
    """
    finite = np.asarray(X, dtype=np.float64)
    largest = float(np.max(np.abs(finite))) if finite.size else 0.0
    return np.float64 if largest > FLOAT32_SAFE_MAX else np.float32


def check_fitted(model: Any) -> None:
    """Raise ValueError naming the fix when a fitted parameter holds NaN or inf.

    A model with infinite covariances scores nothing sensibly; it must not be saved or
    published as if the fit had succeeded.
    """
    bad = [
        name
        for name in FITTED
        if getattr(model, name, None) is not None
        and not np.isfinite(np.asarray(getattr(model, name), dtype=np.float64)).all()
    ]
    if bad:
        raise ValueError(
            f"the fit produced non-finite {', '.join(bad)} (values overflowed): nothing was "
            "saved. Scale the features (e.g. to units where they stay below 1e15) or fit in "
            "float64, and check the data with `emflow validate`"
        )
