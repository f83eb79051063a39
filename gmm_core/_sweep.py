"""How ``GaussianMixtureSelect`` fits its candidates: side by side in shared passes, or a loop.

The candidates of one covariance type run as batches of restarts: a batch holds the candidates of
``ceil(K / 16)`` equal (K = 1..16 in one, 17..32 in the next: the GPU passes work in tiles of 16
components) and a candidate with ``K`` below its batch's ``K_max`` carries ``K_max - K`` padding
components of weight exactly 0 (log-weight -inf), which take no responsibility, so every E-step
pass advances all candidates of a batch at once and each candidate follows exactly the iterations
a fit with ``K`` components would (the M-step, on the host, keeps the padding at weight 0; the
NumPy engine skips trailing zero-weight components, so a pass costs what the separate fits'
passes cost together). Converged candidates drop out through the engines' ``active`` mask; a
candidate whose covariance becomes ill-defined is recorded as failed, with the reason, and the
others go on. On a device-init engine every candidate's initialisation shares its passes too
(:func:`gmm_core._init.candidate_params`). Engines outside :data:`BATCHED_BACKENDS` get one
:class:`GaussianMixture` fit per candidate (:func:`fit_loop`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state

from ._dask_input import init_rows
from ._em_loop import PhaseClock, best_restart
from ._engine import Engine
from ._fit import place_on_device, place_with_host_moments
from ._gaussian import ILL_DEFINED_COVARIANCE, Params, below_resolution
from ._host_init import host_restarts
from ._init import candidate_params, draw, with_user_init
from ._padded_em import accumulate, buckets, concat, pad, run_em_padded, trim
from ._scoring import to_numpy as _to_numpy

if TYPE_CHECKING:
    from .mixture import GaussianMixture
    from .selection import GaussianMixtureSelect

#: Engines whose passes take candidates of every K side by side (a loop of fits elsewhere).
BATCHED_BACKENDS = ("numpy", "dask", "cupy")


@dataclass
class Candidate:
    """One ``(n_components, covariance_type)`` of the grid and how its fit went."""

    n_components: int
    covariance_type: str
    lower_bound: float = math.nan
    train_score: float = math.nan
    bic: float = math.nan
    aic: float = math.nan
    holdout_score: float = math.nan
    holdout_se: float = math.nan
    n_iter: int = 0
    converged: bool = False
    reason: str = ""
    estimator: GaussianMixture | None = None

    @property
    def failed(self) -> bool:
        return bool(self.reason)


def fit_loop(
    selector: GaussianMixtureSelect,
    X: Any,
    group: list[Candidate],
    sample_weight: np.ndarray | None = None,
) -> None:
    """One :class:`GaussianMixture` fit per candidate (``'multigpu'``)."""
    for cand in group:
        model = selector._candidate_estimator(cand.n_components, cand.covariance_type)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(X, sample_weight=sample_weight)
        except ValueError as error:
            cand.reason = str(error)
            continue
        cand.estimator = model
        cand.lower_bound = float(model.lower_bound_)
        scores = _to_numpy(model.score_samples(X))  # CuPy for CuPy input on device engines
        cand.train_score = float(np.average(scores, weights=sample_weight))
        cand.n_iter = int(model.n_iter_)
        cand.converged = bool(model.converged_)


def fit_batched(
    selector: GaussianMixtureSelect,
    engine: Engine,
    X: Any,
    group: list[Candidate],
    clock: PhaseClock,
    sample_weight: np.ndarray | None = None,
) -> None:
    """Every candidate of ``group`` (one covariance type) in batches of restarts."""
    covariance_type = group[0].covariance_type
    n_samples = X.shape[0]
    eps = 10 * float(np.finfo(X.dtype).eps)
    weighting = {} if sample_weight is None else {"sample_weight": sample_weight}
    if engine.device_init:  # moments, centring and initialisation where the data live
        data = place_on_device(engine, X, covariance_type, **weighting)
        shift = np.asarray(data.shift, dtype=np.float64)
    else:  # a dask array's partitions stay on the workers, as in GaussianMixture.fit
        data, shift = place_with_host_moments(engine, X, X, covariance_type, **weighting)
        # the rows a host initialisation reads: all, or a sample of a dask array's
        rows, row_weights = init_rows(X, sample_weight, check_random_state(selector.random_state))
        Xc = engine.host_centred(data, rows, shift)
    clock.lap("transfer")

    eligible = []
    n_rows = n_samples if sample_weight is None else int(np.count_nonzero(sample_weight))
    for cand in group:
        if cand.n_components > n_samples:
            cand.reason = (
                f"too few samples: n_components={cand.n_components} > n_samples={n_samples}"
            )
        elif cand.n_components > n_rows:
            cand.reason = (
                f"too few rows of positive sample_weight: n_components={cand.n_components} > "
                f"{n_rows}"
            )
        else:
            eligible.append(cand)
    if engine.device_init:  # every candidate's k-means in shared passes
        inits = _initial_params_device(selector, engine, data, eligible, shift, eps)
    else:
        inits = [
            _initial_params(selector, rows, Xc, shift, cand, eps, row_weights) for cand in eligible
        ]
    drawn: list[tuple[Candidate, Params]] = []
    for cand, params in zip(eligible, inits, strict=True):
        if isinstance(params, ValueError):  # an ill-defined covariance at the initialisation
            cand.reason = f"initialisation: {params}"
        else:
            drawn.append((cand, params))
    clock.lap("init")
    for bucket in buckets([cand.n_components for cand, _ in drawn]):
        _fit_bucket(selector, engine, data, [drawn[i] for i in bucket], shift, X.dtype, eps, clock)


def _fit_bucket(
    selector: GaussianMixtureSelect,
    engine: Engine,
    data: Any,
    drawn: list[tuple[Candidate, Params]],
    shift: np.ndarray,
    dtype: Any,
    eps: float,
    clock: PhaseClock,
) -> None:
    """EM of the candidates ``drawn`` side by side, padded to their largest K."""
    covariance_type = drawn[0][0].covariance_type
    n_init = selector.n_init
    k_max = max(cand.n_components for cand, _ in drawn)
    params = concat([pad(p, k_max, covariance_type) for _, p in drawn])
    owner = np.repeat(np.arange(len(drawn)), n_init)  # restart -> candidate
    live = (
        np.arange(k_max)[None, :]
        < np.repeat([cand.n_components for cand, _ in drawn], n_init)[:, None]
    )

    result = run_em_padded(
        engine,
        data,
        params,
        live,
        owner,
        covariance_type=covariance_type,
        reg_covar=selector.reg_covar,
        eps=eps,
        tol=selector.tol,
        max_iter=selector.max_iter,
        shift=shift,
    )
    clock.lap("em")
    best_rows = []
    for c, (cand, _) in enumerate(drawn):
        if result.failed[c]:
            cand.reason = result.failed[c]
            continue
        rows = np.flatnonzero(owner == c)
        best = int(rows[best_restart(result.history[:, rows], result.n_iter[rows])])
        fitted = trim(result.params.take(best), cand.n_components, covariance_type)
        if below_resolution(fitted.covariances, covariance_type, shift, dtype):
            cand.reason = ILL_DEFINED_COVARIANCE  # as that candidate's own fit raises
            continue
        best_rows.append((cand, best, rows))
    if not best_rows:
        return
    # the fitted parameters' mean log-likelihood (what bic(X) uses): one more pass, batched
    chosen = np.array([r for _, r, _ in best_rows])
    final = Params(*(np.ascontiguousarray(a[chosen]) for a in vars(result.params).values()))
    stats = accumulate(engine, data, final, np.ones(len(chosen), dtype=bool))
    scores = np.asarray(stats.loglik, np.float64) / stats.weight_sum
    as_dtype = np.dtype(dtype).type  # scikit-learn's types, as GaussianMixture.fit
    for i, (cand, r, rows) in enumerate(best_rows):
        k = cand.n_components
        model = selector._candidate_estimator(k, covariance_type)
        model._set_fitted(trim(result.params.take(r), k, covariance_type), shift, dtype)
        curves = [result.history[: result.n_iter[q], q] for q in rows]
        bound = float(result.history[result.n_iter[r] - 1, r])
        model.converged_ = bool(result.converged[r])
        model.n_iter_ = int(result.n_iter[r])
        model.lower_bound_ = as_dtype(bound)
        model.lower_bounds_ = [as_dtype(v) for v in curves[int(np.flatnonzero(rows == r)[0])]]
        model.restart_lower_bounds_ = [np.asarray(c, np.float64) for c in curves]
        model.n_features_in_ = shift.shape[0]
        model.backend_ = engine.name
        model.n_steps_ = 0
        model.fit_seconds_ = math.nan  # candidates share their passes
        cand.estimator = model
        cand.lower_bound = bound
        cand.train_score = float(scores[i])
        cand.n_iter = model.n_iter_
        cand.converged = model.converged_
    clock.lap("score")


def _restarts(
    selector: GaussianMixtureSelect,
    drawn: tuple[Any, Any, Any],
    n_components: int,
    covariance_type: str,
    shift: np.ndarray,
) -> Params | ValueError:
    """The drawn restarts as the EM starts from them, or the error of an ill-defined one.

    The ``ValueError`` of an ill-defined initial covariance: the candidate fails, the others go on.
    """
    try:
        return with_user_init(
            drawn,
            {},
            shift=shift,
            covariance_type=covariance_type,
            n_components=n_components,
            n_init=selector.n_init,
            xp=np,
        )
    except ValueError as error:
        return error


def _initial_params_device(
    selector: GaussianMixtureSelect,
    engine: Engine,
    data: Any,
    group: list[Candidate],
    shift: np.ndarray,
    eps: float,
) -> list[Params | ValueError]:
    """``n_init`` restarts of each candidate as ``GaussianMixture(K, ...)`` draws them.

    On a device-init engine, every candidate's initialisation in shared passes
    (:func:`gmm_core._init.candidate_params`); host arrays, since the sweep's M-step runs on
    the host.
    """
    if not group:
        return []
    covariance_type = group[0].covariance_type
    sizes = [cand.n_components for cand in group]
    init, n_init = selector.init_params, selector.n_init
    draws = [draw(check_random_state(selector.random_state), init, n_init, data, k) for k in sizes]
    for bucket in buckets(sizes):
        width = max(sizes[c] for c in bucket)
        engine.compile_for_fit(data, n_init * len(bucket), width, init)
    drawn = candidate_params(
        engine,
        data,
        init_params=init,
        sizes=sizes,
        draws=draws,
        covariance_type=covariance_type,
        reg_covar=selector.reg_covar,
        eps=eps,
        shift=shift,
        variance=getattr(data, "variance", None),
    )
    return [
        _restarts(selector, one, k, covariance_type, shift)
        for k, one in zip(sizes, drawn, strict=True)
    ]


def _initial_params(
    selector: GaussianMixtureSelect,
    X: np.ndarray,
    Xc: np.ndarray,
    shift: np.ndarray,
    cand: Candidate,
    eps: float,
    sample_weight: np.ndarray | None = None,
) -> Params | ValueError:
    """``n_init`` restarts drawn as ``GaussianMixture(cand.n_components, ...)`` draws them."""
    model = selector._candidate_estimator(cand.n_components, cand.covariance_type)
    try:
        rs = check_random_state(selector.random_state)
        drawn = host_restarts(model, X, Xc, shift, rs, eps, sample_weight)
    except ValueError as error:
        return error
    return _restarts(selector, drawn, cand.n_components, cand.covariance_type, shift)
