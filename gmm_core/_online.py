"""Stepwise (online) EM for ``GaussianMixture.partial_fit``: Cappe & Moulines (2009).

Each mini-batch moves the running sufficient statistics (normalised per unit of sample weight)
a step ``gamma_t = (t + 2) ** -learning_decay`` towards the batch's own statistics under the
current parameters, and the parameters are the M-step of the running statistics::

    s_{t+1} = (1 - gamma_t) s_t + gamma_t s_batch(theta_t),    theta_{t+1} = M(s_{t+1})

``learning_decay`` in (0.5, 1] makes ``sum gamma = inf`` and ``sum gamma**2 < inf``, the
stochastic-approximation conditions under which the iterates converge to a stationary point of
the expected log-likelihood (1: the running average of all batches).

The running statistics are not stored: the M-step is invertible, so ``s_t`` is recomputed from
the fitted parameters (:func:`model_statistics`). A loaded model therefore continues online
exactly as the process that saved it would have; only the step counter ``n_steps_`` is kept.
The batch pass is the engine's :meth:`~gmm_core._engine.Engine.accumulate`, so every engine that
runs ``fit`` runs ``partial_fit``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ._checks import check_magnitude
from ._engine import get_engine
from ._gaussian import Params, Stats, m_step
from ._weights import (
    check_enough_weighted_rows,
    check_sample_weight,
    em_weights,
    engine_for_weights,
)

if TYPE_CHECKING:
    from .mixture import GaussianMixture


def step_size(t: int, learning_decay: float) -> float:
    """``(t + 2) ** -learning_decay``: the weight of the ``t``-th update's batch (t from 0)."""
    return float((t + 2) ** -learning_decay)


def model_statistics(params: Params, covariance_type: str, reg_covar: float, xp: Any) -> Stats:
    """Sufficient statistics per unit weight whose M-step gives ``params`` back (one restart).

    ``nk = w``, ``sx = w mu``, ``sxx = w (Sigma - reg_covar I + mu mu^T)`` (tied: summed over
    components, diag/spherical: the diagonal / its trace), in the frame of ``params.means``.
    """
    w, mu, cov = params.weights[0], params.means[0], params.covariances[0]
    n_features = mu.shape[-1]
    if covariance_type == "full":
        eye = xp.eye(n_features)
        sxx = w[:, None, None] * (cov - reg_covar * eye + mu[:, :, None] * mu[:, None, :])
    elif covariance_type == "tied":
        sxx = cov - reg_covar * xp.eye(n_features) + xp.einsum("k,ki,kj->ij", w, mu, mu)
    elif covariance_type == "diag":
        sxx = w[:, None] * (cov - reg_covar + mu * mu)
    else:
        sxx = w * (n_features * (cov - reg_covar) + (mu * mu).sum(axis=-1))
    expand = (lambda a: a) if covariance_type == "tied" else (lambda a: a[None])
    return Stats(xp.zeros(1), w[None], (w[:, None] * mu)[None], expand(sxx), 1, 1.0)


def _blend(old: Stats, new: Stats, gamma: float, scale: float) -> Stats:
    """``scale * ((1 - gamma) old + gamma new)`` field by field (both per unit weight)."""

    def mix(a: Any, b: Any) -> Any:
        return scale * ((1.0 - gamma) * a + gamma * b)

    return Stats(
        mix(old.loglik, new.loglik),
        mix(old.nk, new.nk),
        mix(old.sx, new.sx),
        mix(old.sxx, new.sxx),
        new.n_samples,
        scale,
    )


def partial_fit_step(model: GaussianMixture, X: Any, sample_weight: Any) -> None:
    """One stepwise-EM update of a fitted ``model`` on the batch ``X`` (see the module doc).

    Sets the fitted parameters, ``n_steps_``, and the fit record of the step: ``lower_bound_``
    (the batch's mean log-likelihood under the previous parameters), ``lower_bounds_``,
    ``restart_lower_bounds_``, ``n_iter_`` (1), ``backend_``, ``fit_seconds_``; an anomaly
    calibration of the previous parameters is dropped.
    """
    started = time.perf_counter()
    engine = get_engine(model.backend)
    if sample_weight is not None:
        engine = engine_for_weights(engine, model.backend)
    X = model._check_X(X, reset=False)  # a CuPy batch's magnitude is checked there
    if not _is_cupy(X) and X.size:
        check_magnitude(float(np.abs(X).max()), X.dtype, X.shape[1])
    if _is_cupy(X) and not engine.takes_device_arrays():
        X = X.get()
    weighting: dict[str, Any] = {}
    if sample_weight is not None:
        weights = check_sample_weight(sample_weight, X.shape[0], None)
        check_enough_weighted_rows(int(np.count_nonzero(weights)), 1)
        weighting["sample_weight"] = em_weights(weights)
    cov_type, reg_covar = model.covariance_type, model.reg_covar
    dtype = model.means_.dtype
    eps = 10 * float(np.finfo(dtype).eps)
    # the mixture's mean as the origin of the statistics (as scoring centres the data)
    shift = np.asarray(model.weights_, np.float64) @ np.asarray(model.means_, np.float64)
    params = model._fitted_params(shift)
    xp = engine.xp
    data = engine.prepare(X, shift, cov_type, **weighting)
    batch = engine.accumulate(data, params.map(engine.asarray), xp.ones(1, dtype=bool))
    batch_weight = float(batch.weight_sum)
    per_unit = Stats(
        batch.loglik / batch_weight,
        batch.nk / batch_weight,
        batch.sx / batch_weight,
        batch.sxx / batch_weight,
        batch.n_samples,
        1.0,
    )
    t = int(getattr(model, "n_steps_", 0))
    running = model_statistics(params.map(engine.asarray), cov_type, reg_covar, xp)
    # scaled to the batch's weight: the M-step's eps then weighs as it does in a batch fit
    stats = _blend(running, per_unit, step_size(t, model.learning_decay), batch_weight)
    new = engine.m_step(stats, cov_type, reg_covar, eps)
    if new is None:
        new = m_step(stats, cov_type, reg_covar, eps, xp, check=True)
    elif not bool(xp.isfinite(new.precisions_cholesky).all()):
        from ._gaussian import ILL_DEFINED_COVARIANCE

        raise ValueError(ILL_DEFINED_COVARIANCE)
    model._set_fitted(new.map(engine.to_host), shift, dtype)
    bound = float(engine.to_host(per_unit.loglik)[0])  # the batch under the previous parameters
    model.n_steps_ = t + 1
    # what a fit's record says of this update: one step, the batch's bound, the engine, the time
    model.lower_bound_ = np.dtype(dtype).type(bound)  # scikit-learn's type
    model.lower_bounds_ = [model.lower_bound_]
    model.restart_lower_bounds_ = [np.array([bound])]
    model.n_iter_ = 1
    model.backend_ = engine.name
    model.fit_seconds_ = time.perf_counter() - started
    del data
    type(engine).release_memory()


def _is_cupy(X: Any) -> bool:
    return type(X).__module__.split(".")[0] == "cupy"
