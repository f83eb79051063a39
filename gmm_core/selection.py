"""``GaussianMixtureSelect``: a sweep over ``n_components`` x ``covariance_type``, best kept.

Choosing K by hand means a loop of fits, each reading the data every iteration, and a loop that
stops at the first candidate whose covariance collapses. Here the candidates of one covariance
type advance side by side in shared passes over the data, each following exactly the iterations
its own fit would, and a candidate whose covariance becomes ill-defined is recorded as failed,
with the reason, while the others go on (how: :mod:`gmm_core._sweep`). This module is the
estimator: its parameters, the results table and the choice by ``criterion``.

Candidates are initialised as separate scikit-learn fits would be: a candidate draws its
``n_init`` restarts from ``check_random_state(random_state)``, so an int seed gives every
candidate the draws of ``GaussianMixture(K, random_state=seed)``, and a ``RandomState`` instance
is shared in grid order (covariance types outer, ``n_components`` inner), as in such a loop
(also past a candidate whose initialisation fails: its later restarts are not drawn). One
difference remains with a shared instance and ``n_init > 1``: a candidate whose covariance
becomes ill-defined during EM has drawn all its restarts, where the loop's fit stops drawing
at the failing one; an int seed gives the loop's table exactly.

With ``reg_covar=0`` a variance below what the data's values resolve (``(eps * |mean|)^2``:
a constant feature, a component on exactly repeated points) is ill-defined and its candidate
fails, as ``GaussianMixture.fit`` raises there (:func:`gmm_core._gaussian.below_resolution`);
scikit-learn's uncentred ``E[x^2] - mu^2`` gives 0 or less there and raises too, or leaves
~1e-15 and fits.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._checks import check_magnitude
from ._dask_input import checked_dask_array, dask_moments, is_dask_collection, on_client
from ._em_loop import PhaseClock
from ._engine import BACKENDS, get_engine
from ._gaussian import COVARIANCE_TYPES, n_parameters
from ._scoring import is_cupy_array as _is_cupy_array
from ._sweep import BATCHED_BACKENDS, Candidate, fit_batched, fit_loop
from ._weights import (
    check_enough_weighted_rows,
    check_sample_weight,
    em_weights,
    engine_for_weights,
)
from .mixture import GaussianMixture

__all__ = ["CRITERIA", "GaussianMixtureSelect"]

#: Selection criteria: the lowest BIC or AIC on the training data, or the highest mean
#: log-likelihood of held-out rows.
CRITERIA = ("bic", "aic", "holdout")
#: Columns of ``results_``, in order.
RESULT_COLUMNS = (
    "n_components",
    "covariance_type",
    "n_parameters",
    "lower_bound",
    "train_score",
    "bic",
    "aic",
    "holdout_score",
    "holdout_se",
    "n_iter",
    "converged",
    "failed",
    "reason",
)


class GaussianMixtureSelect(DensityMixin, BaseEstimator):
    """Gaussian mixtures over a grid of ``n_components`` and ``covariance_type``; keeps the best.

    Every candidate is the fit :class:`gmm_core.GaussianMixture` (and scikit-learn's) would make
    with the same parameters and seed; on the NumPy, Dask and CuPy backends the candidates of
    one covariance type advance in shared passes over the data (see the module docstring; on
    CuPy every candidate is initialised on the device as its own fit would be, and CuPy input
    stays there). On ``'multigpu'`` the sweep is a loop of :class:`gmm_core.GaussianMixture`
    fits, one per candidate.

    Parameters
    ----------
    n_components : int or iterable of int, default=(1, 2, ..., 10)
        Numbers of components to try.
    covariance_type : str or sequence of str, default='full'
        Covariance type(s) to try, each of ``'full'``, ``'tied'``, ``'diag'``, ``'spherical'``.
    criterion : {'bic', 'aic', 'holdout'}, default='bic'
        How the best candidate is chosen: the lowest BIC or AIC on the training data (ties go
        to the candidate listed first), or by the mean log-likelihood of ``X_holdout`` (given
        to :meth:`fit`) with the one-standard-error rule: the candidate with the fewest free
        parameters whose holdout score is within one standard error (of the best candidate's
        per-row log-likelihoods) of the best score. Extra components past the true K raise
        the holdout likelihood by noise-sized amounts; the rule does not chase them.
    tol, reg_covar, max_iter, n_init, init_params, random_state, backend
        As :class:`gmm_core.GaussianMixture`'s, for every candidate (``max_iter >= 1``).

    Attributes
    ----------
    results_ : dict of str to ndarray
        One row per candidate, in grid order (covariance types outer, ``n_components`` inner),
        ready for ``pandas.DataFrame(results_)``: ``n_components``, ``covariance_type``,
        ``n_parameters``, ``lower_bound`` (of the best restart, as ``lower_bound_``),
        ``train_score`` (mean log-likelihood of ``X`` under the fitted parameters), ``bic``,
        ``aic``, ``holdout_score`` and its standard error ``holdout_se`` (NaN without
        ``X_holdout``), ``n_iter``, ``converged``,
        ``failed`` and ``reason`` (why a candidate failed; empty otherwise). Numbers of a failed
        candidate are NaN.
    best_index_ : int
        Row of ``results_`` chosen by ``criterion``.
    best_params_ : dict
        ``{"n_components": ..., "covariance_type": ...}`` of the chosen candidate.
    best_estimator_ : GaussianMixture
        The chosen candidate as a plain fitted :class:`gmm_core.GaussianMixture`.
    n_features_in_ : int
    backend_ : str
        The engine that ran the sweep.
    batched_ : bool
        Whether candidates shared passes over the data (False: a loop of fits).
    fit_seconds_ : float
        Wall time of :meth:`fit`.
    fit_timings_ : dict of str to float
        Where that time went, in seconds: ``validate``, ``transfer`` (placing the data),
        ``init`` (every candidate's initialisation), ``em`` (the shared EM passes), ``score``
        (one more pass for every candidate's train score), ``holdout``; ``fits`` where the
        sweep is a loop of fits.

    Examples
    --------
    >>> import numpy as np
    >>> from gmm_core import GaussianMixtureSelect
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(c, 0.5, size=(100, 2)) for c in (-5.0, 0.0, 5.0)])
    >>> sel = GaussianMixtureSelect(range(1, 6), random_state=0, backend="numpy").fit(X)
    >>> sel.best_params_["n_components"]
    3
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left"), "array-like", Iterable],
        "covariance_type": [StrOptions(set(COVARIANCE_TYPES)), "array-like"],
        "criterion": [StrOptions(set(CRITERIA))],
        "tol": [Interval(Real, 0.0, None, closed="left")],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init_params": [StrOptions({"kmeans", "random", "random_from_data", "k-means++"})],
        "random_state": ["random_state"],
        "backend": [StrOptions(set(BACKENDS))],
    }

    def __init__(
        self,
        n_components: Any = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
        *,
        covariance_type: Any = "full",
        criterion: str = "bic",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        random_state: Any = None,
        backend: str = "auto",
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.criterion = criterion
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.random_state = random_state
        self.backend = backend

    # ------------------------------------------------------------------------------------------
    # The grid

    def _grid(self) -> tuple[list[int], list[str]]:
        """The checked lists of ``n_components`` and covariance types."""
        given = self.n_components
        if isinstance(given, Iterator):  # read once, it would leave the next fit and clone none
            raise ValueError(
                f"n_components is a one-shot iterator ({type(given).__name__}): pass a list, "
                "tuple or range (e.g. list(...) of it), which every fit and clone can read."
            )
        if isinstance(given, np.ndarray) and given.ndim != 1:
            if given.ndim:
                raise ValueError(
                    "n_components must be an int or a 1-D sequence of ints (e.g. range(1, 33)), "
                    f"got an array of shape {given.shape}"
                )
            given = given.item()  # a 0-d array: its one value
        raw = (
            [given]
            if isinstance(given, Integral) or not isinstance(given, Iterable)
            else list(given)
        )
        if (
            not raw
            # integers only, as GaussianMixture(n_components=2.0) is refused; True is no count
            or any(not isinstance(k, Integral) or isinstance(k, bool | np.bool_) for k in raw)
            or any(k < 1 for k in raw)
        ):
            raise ValueError(
                f"n_components must be positive integers (e.g. range(1, 33)), got {raw!r}"
            )
        ks = [int(k) for k in raw]
        if len(set(ks)) != len(ks):
            raise ValueError(f"n_components lists a value twice: {ks}")
        types = (
            [self.covariance_type]
            if isinstance(self.covariance_type, str)
            else [str(t) if isinstance(t, str) else t for t in np.ravel(self.covariance_type)]
        )
        bad = [t for t in types if t not in COVARIANCE_TYPES]
        if not types or bad or len(set(types)) != len(types):
            raise ValueError(
                f"covariance_type must be one or more distinct of {COVARIANCE_TYPES}, "
                f"got {self.covariance_type!r}"
            )
        return ks, types

    def _candidate_estimator(self, n_components: int, covariance_type: str) -> GaussianMixture:
        return GaussianMixture(
            n_components=n_components,
            covariance_type=covariance_type,
            tol=self.tol,
            reg_covar=self.reg_covar,
            max_iter=self.max_iter,
            n_init=self.n_init,
            init_params=self.init_params,
            random_state=self.random_state,
            backend=self.backend,
        )

    # ------------------------------------------------------------------------------------------
    # Fitting

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(
        self, X: Any, y: Any = None, X_holdout: Any = None, sample_weight: Any = None
    ) -> GaussianMixtureSelect:
        """Fit every candidate of the grid and choose the best by ``criterion``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data (NumPy; CuPy arrays stay on the device on the GPU backends; a
            dask array or DataFrame stays partitioned on the workers with ``backend='dask'``,
            the initialisations reading at most ``INIT_SAMPLE_ROWS`` rows of it).
        y : Ignored
        X_holdout : array-like of shape (n_holdout, n_features), default=None
            Held-out rows: every candidate's mean log-likelihood on them fills
            ``results_["holdout_score"]``. Required by ``criterion='holdout'``.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative row weights, as ``GaussianMixture.fit`` takes them (an integer weight
            is the row repeated): every candidate is ``GaussianMixture(K).fit(X,
            sample_weight=...)``, the train score is the weighted mean log-likelihood, and
            BIC/AIC count ``sum(sample_weight)`` samples where the weights are counts (mean 1
            or more); weights of mean below 1 count as the rows, as the EM scales them to mean
            1 (their scale changes neither the fits nor the table). A K above the rows of
            positive weight fails that candidate. Holdout rows are unweighted.

        Returns
        -------
        self : GaussianMixtureSelect

        Raises
        ------
        ValueError
            Bad parameters or data, or when every candidate failed (the reasons listed).
        """
        clock = PhaseClock()
        ks, types = self._grid()
        if getattr(y, "ndim", None) == 2:  # rows meant as a holdout, passed by position
            warnings.warn(
                "GaussianMixtureSelect.fit ignores y; pass held-out rows as fit(X, X_holdout=...)",
                UserWarning,
                stacklevel=2,
            )
        if self.criterion == "holdout" and X_holdout is None:
            raise ValueError(
                "criterion='holdout' needs held-out rows: call fit(X, X_holdout=...) or choose "
                "criterion='bic'."
            )
        engine = get_engine(self.backend)
        if sample_weight is not None:
            engine = engine_for_weights(engine, self.backend)
        clock.engine = engine
        batched = engine.name in BATCHED_BACKENDS
        # a dask array or DataFrame on the Dask engine stays partitioned where it lives
        dask_input = is_dask_collection(X) and engine.takes_dask_collections
        if dask_input:
            X = checked_dask_array(self, X, reset=True)
        elif _is_cupy_array(X):
            if engine.takes_device_arrays():  # NaN/inf and magnitude: the engine's moments
                # pass (place_on_device) or each candidate's fit checks them, as a fit does
                X = self._candidate_estimator(1, "diag")._check_X(X, reset=True, finite_here=False)
                self.n_features_in_ = int(X.shape[1])
            else:
                X = X.get()
        if not (dask_input or _is_cupy_array(X)):
            X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        if X_holdout is not None and _is_cupy_array(X_holdout):
            X_holdout = X_holdout.get()
        if is_dask_collection(X_holdout):  # scored on the workers: only the scores gathered
            X_holdout = checked_dask_array(self, X_holdout, reset=False)
            fewest = 2 if self.criterion == "holdout" else 1  # as validate_data's below
            if X_holdout.shape[0] < fewest:
                raise ValueError(
                    f"X_holdout has {X_holdout.shape[0]} row(s); criterion={self.criterion!r} "
                    f"needs {fewest} at least: pass more held-out rows or leave X_holdout out."
                )
            dask_moments(X_holdout)  # finite, and of a magnitude its log-densities hold
        elif X_holdout is not None:
            # criterion='holdout' needs two rows at least: the one-standard-error rule needs a
            # spread of the scores (a single row's standard error would be 0)
            X_holdout = validate_data(
                self,
                X_holdout,
                reset=False,
                dtype=[np.float64, np.float32],
                ensure_min_samples=2 if self.criterion == "holdout" else 1,
            )
            if X_holdout.size:  # its log-densities would be -inf: every candidate "failed"
                largest = float(np.abs(X_holdout).max())
                check_magnitude(largest, X_holdout.dtype, X_holdout.shape[1], "X_holdout")

        n_samples = float(X.shape[0])  # what BIC/AIC count: the rows, or the total weight
        if sample_weight is not None:
            sample_weight = check_sample_weight(on_client(sample_weight), X.shape[0], None)
            check_enough_weighted_rows(int(np.count_nonzero(sample_weight)), 1)
            # BIC/AIC count the weights as the EM takes them: weights of mean below 1
            # (frequencies, normalised or decay weights) are scaled to mean 1 there, so they
            # count as the rows; their scale must not move the penalty (QA probe: weights
            # summing to 1 made log(n) = 0, and below that negative: the largest K always won)
            sample_weight = em_weights(sample_weight)
            n_samples = float(sample_weight.sum())
        candidates: list[Candidate] = []
        for covariance_type in types:
            group = [Candidate(k, covariance_type) for k in ks]
            clock.lap("validate")
            if batched:
                fit_batched(self, engine, X, group, clock, sample_weight)
            else:
                fit_loop(self, X, group, sample_weight)
                clock.lap("fits")
            candidates.extend(group)
        for cand in candidates:
            if cand.estimator is None:
                continue
            p = n_parameters(cand.covariance_type, cand.n_components, X.shape[1])
            cand.bic = -2.0 * cand.train_score * n_samples + p * math.log(n_samples)
            cand.aic = -2.0 * cand.train_score * n_samples + 2.0 * p
            if X_holdout is not None:
                scores = np.asarray(cand.estimator.score_samples(X_holdout), np.float64)
                cand.holdout_score = float(scores.mean())
                if len(scores) > 1:  # else NaN: no spread to measure
                    cand.holdout_se = float(scores.std(ddof=1) / math.sqrt(len(scores)))
        clock.lap("holdout")
        self.results_ = _results_table(candidates, X.shape[1])
        self.best_index_ = _choose(candidates, self.criterion)
        best = candidates[self.best_index_]
        self.best_params_ = {
            "n_components": best.n_components,
            "covariance_type": best.covariance_type,
        }
        assert best.estimator is not None
        self.best_estimator_ = best.estimator
        if hasattr(self, "feature_names_in_"):  # fitted on a DataFrame: predict checks names
            self.best_estimator_.feature_names_in_ = self.feature_names_in_
        self.backend_ = engine.name
        self.batched_ = batched
        self.fit_timings_ = clock.seconds
        self.fit_seconds_ = clock.total()
        if not best.converged:
            warnings.warn(
                f"The chosen candidate (n_components={best.n_components}, "
                f"covariance_type={best.covariance_type!r}) did not converge. Increase max_iter "
                "or tol.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    # ------------------------------------------------------------------------------------------
    # Delegation to the chosen model

    def predict(self, X: Any) -> Any:
        """Most probable component of each sample under ``best_estimator_``, shape (n_samples,)."""
        check_is_fitted(self)
        return self.best_estimator_.predict(X)

    def predict_proba(self, X: Any) -> Any:
        """Component posteriors under ``best_estimator_``, shape (n_samples, n_components)."""
        check_is_fitted(self)
        return self.best_estimator_.predict_proba(X)

    def score_samples(self, X: Any) -> Any:
        """Log-likelihood of each sample under ``best_estimator_``, shape (n_samples,)."""
        check_is_fitted(self)
        return self.best_estimator_.score_samples(X)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean per-sample log-likelihood of ``X`` under ``best_estimator_``."""
        check_is_fitted(self)
        return self.best_estimator_.score(X)


# ---------------------------------------------------------------------------------------------
# The table and the choice


def _results_table(candidates: list[Candidate], n_features: int) -> dict[str, np.ndarray]:
    table = {
        "n_components": np.array([c.n_components for c in candidates], dtype=np.int64),
        "covariance_type": np.array([c.covariance_type for c in candidates], dtype=object),
        "n_parameters": np.array(
            [n_parameters(c.covariance_type, c.n_components, n_features) for c in candidates],
            dtype=np.int64,
        ),
        "lower_bound": np.array([c.lower_bound for c in candidates]),
        "train_score": np.array([c.train_score for c in candidates]),
        "bic": np.array([c.bic for c in candidates]),
        "aic": np.array([c.aic for c in candidates]),
        "holdout_score": np.array([c.holdout_score for c in candidates]),
        "holdout_se": np.array([c.holdout_se for c in candidates]),
        "n_iter": np.array([c.n_iter for c in candidates], dtype=np.int64),
        "converged": np.array([c.converged for c in candidates], dtype=bool),
        "failed": np.array([c.failed for c in candidates], dtype=bool),
        "reason": np.array([c.reason for c in candidates], dtype=object),
    }
    return {name: table[name] for name in RESULT_COLUMNS}


def _choose(candidates: list[Candidate], criterion: str) -> int:
    """Index of the best candidate that did not fail; ValueError when all failed."""
    ok = [i for i, c in enumerate(candidates) if not c.failed and math.isfinite(c.bic)]
    if criterion == "holdout":
        ok = [i for i in ok if math.isfinite(candidates[i].holdout_score)]
    if not ok:
        reasons = "; ".join(
            f"K={c.n_components} {c.covariance_type}: {c.reason or 'non-finite ' + criterion}"
            for c in candidates
        )
        raise ValueError(
            f"every candidate failed ({reasons}). Increase reg_covar, lower n_components or "
            "scale the input data."
        )
    if criterion != "holdout":
        return min(ok, key=lambda i: getattr(candidates[i], criterion))
    # the one-standard-error rule: the simplest candidate not measurably worse than the best
    best = max(ok, key=lambda i: candidates[i].holdout_score)
    floor = candidates[best].holdout_score - candidates[best].holdout_se
    near = [i for i in ok if candidates[i].holdout_score >= floor]
    return min(near, key=lambda i: _n_free(candidates[i]))


def _n_free(candidate: Candidate) -> int:
    n_features = candidate.estimator.means_.shape[1] if candidate.estimator is not None else 1
    return n_parameters(candidate.covariance_type, candidate.n_components, n_features)
