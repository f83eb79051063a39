"""Where a fitted ``GaussianMixture`` scores rows: NumPy, the GPU, or the dask workers.

:func:`scored` is ``predict`` / ``score_samples`` / ``predict_proba`` behind the estimator's
methods: a :class:`~gmm_core._gaussian.RowReduction` of the weighted log-densities
``log w_k + log N(x | k)``, computed in the input's array library:

- CuPy input, and large NumPy input when the estimator's backend may use a GPU and one is
  usable (:func:`score_on_gpu`): on the device, row chunk by row chunk, so no (N, K) array
  exists unless the result is one;
- a dask array or DataFrame: a lazy dask array, each row block scored where it lives;
- otherwise NumPy, as scikit-learn computes it.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ._dask_input import checked_dask_array, is_dask_collection
from ._engine import cupy_unavailable_reason, get_engine
from ._gaussian import Params, RowReduction, estimate_log_gaussian_prob

if TYPE_CHECKING:
    from .mixture import GaussianMixture

#: NumPy input with at least this many sample-component cells is scored on a usable GPU.
GPU_SCORING_MIN_CELLS = 1 << 22


def is_cupy_array(X: Any) -> bool:
    """Whether ``X`` is a CuPy array (without importing CuPy)."""
    return type(X).__module__.split(".")[0] == "cupy"


def to_numpy(a: Any) -> np.ndarray:
    """A CuPy or NumPy array (or array-like) as a NumPy array."""
    return a.get() if is_cupy_array(a) else np.asarray(a)


def score_on_gpu(model: GaussianMixture, X: np.ndarray) -> bool:
    """Whether NumPy input is large enough to be scored on a usable GPU."""
    if model.backend not in ("auto", "cupy", "multigpu"):
        return False
    if X.shape[0] * model.n_components < GPU_SCORING_MIN_CELLS:
        return False
    return cupy_unavailable_reason() is None


def scored(model: GaussianMixture, X: Any, how: str) -> Any:
    """``RowReduction(how)`` (``argmax``, ``logsumexp``, ``proba``) of a fitted model on ``X``."""
    if is_dask_collection(X):
        return _scored_dask(model, X, how)
    X = model._check_X(X, reset=False)
    if is_cupy_array(X) or score_on_gpu(model, X):
        engine = get_engine("cupy")
        # data far from the origin are scored centred, as fit works: the expanded quadratic
        # forms then lose no precision
        data = engine.prepare(X, "auto", model.covariance_type)
        params = Params(
            model.weights_[None],
            model.means_[None] - data.shift,
            model.covariances_[None],
            model.precisions_cholesky_[None],
        ).map(lambda a: engine.asarray(np.asarray(a, np.float64)))
        # NumPy input: each chunk's result to the host at once
        to_host = None if is_cupy_array(X) else engine.to_host
        out = engine.reduce_log_prob(data, params, RowReduction(how, engine.xp, to_host))
        release = type(engine).release_memory
        del engine, data
        release()
        return out
    shift = np.asarray(model.weights_, np.float64) @ np.asarray(model.means_, np.float64)
    # as scikit-learn: float32 data under a float64 model give float64 results
    dtype = np.result_type(X.dtype, model.means_.dtype)
    log_prob = estimate_log_gaussian_prob(
        X.astype(dtype, copy=False) - shift.astype(dtype),
        (model.means_ - shift).astype(dtype),
        model.precisions_cholesky_.astype(dtype),
        model.covariance_type,
        np,
    )
    return RowReduction(how, np)(log_prob + np.log(model.weights_).astype(dtype))


def _scored_dask(model: GaussianMixture, X: Any, how: str) -> Any:
    """:func:`scored` of a dask array or DataFrame: a lazy dask array, block by block.

    Each row block is scored where it lives (a worker's NumPy block, on its GPU where it has
    one and the block is large, as NumPy input is); nothing comes to the client until the
    result is computed.
    """
    X = checked_dask_array(model, X, reset=False).rechunk({1: -1})
    dtype = np.result_type(X.dtype, model.means_.dtype)

    def block(b: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # the frame's names were checked above, on the client
            warnings.filterwarnings("ignore", "X does not have valid feature names")
            return to_numpy(scored(model, b, how))

    if how == "proba":
        return X.map_blocks(block, dtype=dtype, chunks=(X.chunks[0], (model.n_components,)))
    out = np.dtype(np.intp) if how == "argmax" else dtype
    return X.map_blocks(block, dtype=out, drop_axis=1)
