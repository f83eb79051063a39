"""One ``GaussianMixture.fit``, from validation to the best restart's fitted attributes.

Validate -> place the data (engine) -> initialise every restart (:mod:`._init` on the device,
:mod:`._host_init` on the host) -> the EM loop over the batch of restarts (:mod:`._em_loop`, or
the engine's own) -> the best restart's fitted attributes.

Functions of the estimator (its settings in, its fitted attributes out), so the estimator's
module keeps its public surface and the scoring; :mod:`._chunks` fits over chunks with them.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state

from ._checks import check_magnitude
from ._dask_input import (
    checked_dask_array,
    dask_moments,
    init_rows,
    is_dask_collection,
    on_client,
)
from ._em_loop import PhaseClock, best_restart, run_em
from ._engine import EMResult, Engine, get_engine
from ._gaussian import ILL_DEFINED_COVARIANCE, Params, below_resolution
from ._host_init import host_restarts
from ._init import initial_params, with_user_init
from ._scoring import is_cupy_array
from ._weights import check_sample_weight, em_weights, engine_for_weights

if TYPE_CHECKING:
    from .mixture import GaussianMixture


def fit_model(
    self: GaussianMixture, X: Any, sample_weight: Any = None
) -> tuple[Engine, Any, Params]:
    """Fit ``self``; return the engine, its prepared data and the best restart's parameters."""
    clock = PhaseClock()
    engine = get_engine(self.backend)
    if sample_weight is not None:
        engine = engine_for_weights(engine, self.backend)
    # a dask array or DataFrame on the Dask engine stays partitioned where it lives
    dask_input = is_dask_collection(X) and engine.takes_dask_collections
    if dask_input:
        X = checked_dask_array(self, X, reset=True)
    else:
        X = self._check_X(X, reset=True, finite_here=not engine.device_init)
    n_samples, n_features = X.shape
    if sample_weight is not None:
        sample_weight = on_client(sample_weight)  # one float per row
        sample_weight = em_weights(check_sample_weight(sample_weight, n_samples, self.n_components))
    weighting = {} if sample_weight is None else {"sample_weight": sample_weight}
    if n_samples < self.n_components:
        raise ValueError(
            f"Expected n_samples >= n_components but got n_components = {self.n_components}, "
            f"n_samples = {n_samples}; lower n_components or provide more samples."
        )
    user = self._checked_initial_parameters(n_features)
    clock.engine = engine
    if is_cupy_array(X) and not engine.takes_device_arrays():
        X = X.get()  # a host engine (numpy, dask) takes host arrays
    eps = 10 * float(np.finfo(X.dtype).eps)
    clock.lap("validate")

    with engine.track_memory() as memory:
        do_init = not (self.warm_start and hasattr(self, "converged_"))
        random_state = check_random_state(self.random_state)
        params: Params | None = None
        if engine.device_init:
            # moments, centring and initialisation where the data live: no host copy of X
            data = place_on_device(engine, X, self.covariance_type, **weighting)
            shift = data.shift
            clock.lap("transfer")
            engine.compile_for_fit(
                data, self.n_init, self.n_components, self.init_params if do_init else None
            )
            clock.lap("compile")
            if do_init:
                params = draw_on_device(self, engine, data, random_state, eps, user)
        else:
            X_host = engine.to_host(X) if is_cupy_array(X) else X  # a dask array stays
            data, shift = place_with_host_moments(
                engine, X, X_host, self.covariance_type, **weighting
            )
            clock.lap("transfer")
            if do_init:
                drawn = None
                if len(user) < 3:  # the init reads the rows, or a sample of a dask array's
                    rows, row_weights = init_rows(X_host, sample_weight, random_state)
                    Xc = engine.host_centred(data, rows, shift)
                    drawn = host_restarts(self, rows, Xc, shift, random_state, eps, row_weights)
                    del Xc, rows
                params = with_user_init(
                    drawn,
                    user,
                    shift=shift,
                    covariance_type=self.covariance_type,
                    n_components=self.n_components,
                    n_init=self.n_init,
                    xp=np,
                ).map(engine.asarray)
        first_bound = -np.inf
        if params is None:  # warm start
            params = self._fitted_params(shift).map(engine.asarray)
            first_bound = float(getattr(self, "lower_bound_"))  # noqa: B009 (set by a fit)
        clock.lap("init")

        result = run_model_em(self, engine, data, params, first_bound, eps, shift)
        clock.lap("em")
        best_params = keep_best(self, result, engine, shift, X.dtype)
        clock.lap("finish")
    self.fit_timings_ = clock.seconds
    self.device_peak_bytes_ = memory.peak_bytes
    self.fit_seconds_ = clock.total()
    return engine, data, best_params


def place_on_device(engine: Engine, X: Any, covariance_type: str, **weighting: Any) -> Any:
    """``engine.prepare(X, "auto", ...)`` of a device-init engine, checked where the data live.

    Finite (NumPy input is scanned here, on the device) and of a magnitude float64 sums hold.
    """
    data = engine.prepare(X, "auto", covariance_type, **weighting)
    if not math.isfinite(data.max_abs):
        raise ValueError("Input X contains NaN or infinity; remove or impute those rows first.")
    check_magnitude(data.max_abs, X.dtype, X.shape[1])
    return data


def place_with_host_moments(
    engine: Engine, X: Any, X_host: np.ndarray, covariance_type: str, **weighting: Any
) -> tuple[Any, np.ndarray]:
    """``engine.prepare(X, shift, ...)`` of a host-init engine and its shift, the data mean.

    The magnitude check and the mean come from the host copy ``X_host`` (what
    :func:`place_on_device` reads on the device); of a dask array, by dask reductions on its
    partitions where they live.
    """
    if is_dask_collection(X):
        shift, _ = dask_moments(X)  # checks finiteness and magnitude as well
        return engine.prepare(X, shift, covariance_type, **weighting), shift
    check_magnitude(max(float(X_host.max()), -float(X_host.min())), X.dtype, X.shape[1])
    shift = X_host.mean(axis=0, dtype=np.float64)
    return engine.prepare(X, shift, covariance_type, **weighting), shift


def draw_on_device(
    self: GaussianMixture,
    engine: Engine,
    data: Any,
    random_state: np.random.RandomState,
    eps: float,
    user: dict[str, np.ndarray] | None = None,
) -> Params:
    """The estimator's initial parameters of every restart, drawn where the data live.

    Engine arrays; ``user``: its validated ``*_init`` arrays.
    """
    return initial_params(
        engine,
        data,
        init_params=self.init_params,
        n_components=self.n_components,
        n_init=self.n_init,
        covariance_type=self.covariance_type,
        reg_covar=self.reg_covar,
        eps=eps,
        random_state=random_state,
        user=user or {},
        shift=data.shift,
        variance=getattr(data, "variance", None),
    )


def keep_best(
    self: GaussianMixture, result: EMResult, engine: Engine, shift: np.ndarray, dtype: Any
) -> Params:
    """Set the fitted attributes from the best restart; return its (engine) parameters."""
    history, n_iter, converged = result.history, result.n_iter, result.converged
    lower_bounds = [history[: n_iter[r], r] for r in range(history.shape[1])]
    if self.max_iter == 0:
        best = len(lower_bounds) - 1  # as scikit-learn: the last initialisation
        best_bound = -np.inf
    else:
        best = best_restart(history, n_iter)
        best_bound = float(lower_bounds[best][-1])
    best_params = result.params.take(best)
    host = best_params.map(engine.to_host)
    if below_resolution(host.covariances, self.covariance_type, shift, dtype):
        raise ValueError(ILL_DEFINED_COVARIANCE)  # as scikit-learn's fit raises, nothing set
    self.converged_ = bool(converged[best]) if self.max_iter > 0 else False
    if not self.converged_ and self.max_iter > 0:
        warnings.warn(
            "Best performing initialization did not converge. Try different init parameters, "
            "or increase max_iter, tol, or check for degenerate data.",
            ConvergenceWarning,
            stacklevel=4,
        )
    self._set_fitted(host, shift, dtype)
    self.n_iter_ = int(n_iter[best])
    as_dtype = np.dtype(dtype).type  # scikit-learn's types: scalars of the data's dtype
    self.lower_bound_ = as_dtype(best_bound) if self.max_iter > 0 else best_bound
    self.lower_bounds_ = [as_dtype(v) for v in lower_bounds[best]]
    self.restart_lower_bounds_ = [np.asarray(b, dtype=np.float64) for b in lower_bounds]
    self.backend_ = engine.name
    self.n_steps_ = 0
    return best_params


def run_model_em(
    self: GaussianMixture,
    engine: Engine,
    data: Any,
    params: Params,
    first_bound: float,
    eps: float,
    shift: Any = None,
) -> EMResult:
    """:func:`gmm_core._em_loop.run_em` with this estimator's settings (``shift``: the data's)."""
    return run_em(
        engine,
        data,
        params,
        covariance_type=self.covariance_type,
        reg_covar=self.reg_covar,
        eps=eps,
        tol=self.tol,
        max_iter=self.max_iter,
        first_bound=first_bound,
        verbose=self.verbose,
        verbose_interval=self.verbose_interval,
        shift=shift,
    )
