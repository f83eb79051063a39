"""EM over model-selection candidates of different K side by side (``GaussianMixtureSelect``).

A candidate with ``K < K_max`` components runs as a restart of ``K_max`` components whose extra
``K_max - K`` carry weight exactly 0 (log-weight -inf) and a unit covariance: they take no
responsibility, so one engine pass advances every candidate of one covariance type, and the
M-step here keeps the padding at weight 0 and the live weights normalised over the live
components alone, as a fit with ``K`` components computes them. A restart whose live covariances
become ill-defined fails its whole candidate (as that candidate's ``fit`` would raise) and the
other candidates go on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._engine import Engine
from ._gaussian import (
    ILL_DEFINED_COVARIANCE,
    Params,
    Stats,
    cholesky_precisions,
    estimate_parameters,
    select,
)

__all__ = [
    "PaddedResult",
    "accumulate",
    "buckets",
    "concat",
    "pad",
    "run_em_padded",
    "trim",
]


@dataclass
class PaddedResult:
    params: Params  # (R, K_max, ...) final parameters, padding included
    history: np.ndarray  # (n_iterations, R) lower bounds, NaN once a restart stopped
    n_iter: np.ndarray  # (R,)
    converged: np.ndarray  # (R,)
    failed: list[str]  # per candidate: why it failed ("" when it did not)


def pad(params: Params, k_max: int, covariance_type: str) -> Params:
    """Restarts of K components as restarts of ``k_max``: padding of weight 0, unit covariance."""
    n_restarts, k, n_features = params.means.shape
    extra = k_max - k
    if extra == 0:
        return params
    weights = np.concatenate([params.weights, np.zeros((n_restarts, extra))], axis=1)
    means = np.concatenate([params.means, np.zeros((n_restarts, extra, n_features))], axis=1)
    if covariance_type == "tied":
        return Params(weights, means, params.covariances, params.precisions_cholesky)
    unit = unit_covariances(n_restarts, extra, n_features, covariance_type)
    return Params(
        weights,
        means,
        np.concatenate([params.covariances, unit], axis=1),
        np.concatenate([params.precisions_cholesky, unit], axis=1),
    )


def unit_covariances(
    n_restarts: int, n_components: int, n_features: int, covariance_type: str
) -> np.ndarray:
    if covariance_type == "full":
        return np.broadcast_to(
            np.eye(n_features), (n_restarts, n_components, n_features, n_features)
        ).copy()
    if covariance_type == "diag":
        return np.ones((n_restarts, n_components, n_features))
    return np.ones((n_restarts, n_components))


def trim(params: Params, n_components: int, covariance_type: str) -> Params:
    """The first ``n_components`` components (drop the padding)."""
    k = n_components
    if covariance_type == "tied":
        return Params(
            params.weights[:, :k],
            params.means[:, :k],
            params.covariances,
            params.precisions_cholesky,
        )
    return params.map(lambda a: a[:, :k])


def concat(batches: Sequence[Params]) -> Params:
    return Params(
        *(np.concatenate([getattr(p, name) for p in batches]) for name in vars(batches[0]))
    )


def run_em_padded(
    engine: Engine,
    data: Any,
    params: Params,
    live: np.ndarray,
    owner: np.ndarray,
    *,
    covariance_type: str,
    reg_covar: float,
    eps: float,
    tol: float,
    max_iter: int,
    shift: Any = None,
) -> PaddedResult:
    """EM over restarts of different K padded to one width (the estimator's loop semantics).

    ``live`` (R, K_max) marks the real components of every restart, ``owner`` (R,) the
    candidate a restart belongs to. A restart whose live covariances become ill-defined fails
    its candidate (as that candidate's ``fit`` would raise) and stops every restart of it.
    ``shift``: what the data were centred by (:func:`gmm_core._gaussian.estimate_parameters`).
    """
    n_restarts = live.shape[0]
    n_candidates = int(owner.max()) + 1
    tied = covariance_type == "tied"
    n_features = params.means.shape[2]
    unit = (
        None if tied else unit_covariances(n_restarts, live.shape[1], n_features, covariance_type)
    )
    active = np.ones(n_restarts, dtype=bool)
    converged = np.zeros(n_restarts, dtype=bool)
    bound = np.full(n_restarts, -np.inf)
    n_iter = np.zeros(n_restarts, dtype=np.int64)
    failed = [""] * n_candidates
    history: list[np.ndarray] = []
    for it in range(1, max_iter + 1):
        stats = accumulate(engine, data, params, active)
        new_bound = np.asarray(stats.loglik, np.float64) / stats.weight_sum
        _, means, covariances = estimate_parameters(
            stats, covariance_type, reg_covar, eps, np, shift
        )
        # the live components' weights are (nk + eps) / sum(nk + eps) over the live ones alone,
        # as a fit with only those components computes them; the padding stays at weight 0 with
        # a unit covariance (a well-defined factor whatever reg_covar is)
        nk = np.where(live, np.asarray(stats.nk) + eps, 0.0)
        weights = nk / nk.sum(axis=1, keepdims=True)
        if not tied:
            pad = ~live.reshape(live.shape + (1,) * (covariances.ndim - 2))
            covariances = np.where(pad, unit, covariances)
        # a stopped restart keeps its parameters (select below): its zero statistics give a
        # zero covariance where reg_covar is 0, which would send every later factorisation
        # down the per-restart fallback; factor its kept covariances instead
        stopped = ~active.reshape((-1,) + (1,) * (covariances.ndim - 1))
        covariances = np.where(stopped, params.covariances, covariances)
        prec_chol = precisions_cholesky(covariances, covariance_type)
        new = Params(weights, np.where(live[..., None], means, 0.0), covariances, prec_chol)
        finite = np.isfinite(prec_chol.reshape(n_restarts, -1)).all(axis=1)
        broken = active & ~finite
        for c in np.unique(owner[broken]):
            failed[int(c)] = f"iteration {it}: {ILL_DEFINED_COVARIANCE}"
            active &= owner != c
        change = new_bound - bound
        params = select(active, new, params, np)
        bound = np.where(active, new_bound, bound)
        history.append(np.where(active, new_bound, np.nan))
        n_iter = np.where(active, it, n_iter)
        just_converged = active & (np.abs(change) < tol)
        converged |= just_converged
        active &= ~just_converged
        if not active.any():
            break
    hist = np.stack(history) if history else np.empty((0, n_restarts))
    return PaddedResult(params, hist, n_iter, converged, failed)


def accumulate(engine: Engine, data: Any, params: Params, active: np.ndarray) -> Stats:
    """``engine.accumulate`` of host parameters, its statistics on the host.

    A few KB: the M-step here runs there. The padding's log-weights are -inf.
    """
    with np.errstate(divide="ignore"):  # log of the padding's zero weights
        stats = engine.accumulate(data, params.map(engine.asarray), engine.asarray(active))
    return stats.map(engine.to_host)


def buckets(n_components: Sequence[int], width: int = 16) -> list[np.ndarray]:
    """Candidates grouped by ``ceil(K / width)``: each group is padded to its own largest K.

    A pass costs what its widest restart costs on the fused GPU kernels (components come in
    tiles of 16), so candidates of K = 1..32 run as two batches (K <= 16 padded to at most 16,
    the rest to 32) rather than one batch padded to 32. Indices into ``n_components``, groups in
    order of width.
    """
    tiles = np.asarray([-(-k // width) for k in n_components])
    return [np.flatnonzero(tiles == t) for t in np.unique(tiles)]


def precisions_cholesky(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """Precision factors of every restart; non-finite where a covariance is ill-defined.

    NumPy's batched Cholesky raises for the whole batch when one matrix is not positive
    definite: then each restart is factored alone, so one candidate's collapse spares the rest.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        try:
            return cholesky_precisions(covariances, covariance_type, np, check=False)
        except ValueError:
            out = np.full_like(covariances, np.nan)
            for r in range(covariances.shape[0]):
                with contextlib.suppress(ValueError):
                    out[r] = cholesky_precisions(covariances[r], covariance_type, np, check=False)
            return out
