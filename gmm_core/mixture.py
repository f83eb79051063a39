"""``GaussianMixture``: scikit-learn's estimator over pluggable engines.

The estimator's surface: parameters and their validation, ``fit`` (the steps themselves are
:func:`gmm_core._fit.fit_model`: validate -> place the data -> initialise -> EM -> the best
restart), ``partial_fit`` (:mod:`._online`), and what uses the fitted parameters: scoring
(where it runs, NumPy, the GPU or the dask workers: :mod:`._scoring`), sampling, the anomaly
calibration (:mod:`.anomaly`). The data's checks are :func:`gmm_core._checks.checked_X`.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin, _fit_context
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._checks import checked_initial_parameters, checked_X
from ._dask_input import is_dask_collection
from ._em_loop import em_progress
from ._engine import BACKENDS
from ._fit import fit_model
from ._gaussian import (
    COVARIANCE_TYPES,
    Params,
    RowReduction,
    n_parameters,
    precisions_from_cholesky,
)
from ._scoring import is_cupy_array as _is_cupy_array
from ._scoring import score_on_gpu, scored
from ._scoring import to_numpy as _to_numpy

__all__ = ["GaussianMixture", "em_progress"]


def _refuse_chunks(X: Any, method: str, instead: str) -> None:
    """A source of row chunks given to a method that takes one array: say what to do."""
    from ._chunks import is_chunk_source

    if is_chunk_source(X):
        raise TypeError(
            f"{method} takes one array of rows; a source of chunks is taken by fit only: {instead}."
        )


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture model fitted by EM: a drop-in for :class:`sklearn.mixture.GaussianMixture`.

    Same parameters, defaults, methods and fitted attributes as scikit-learn's estimator, and the
    same result at the same initialisation; the EM passes run on the chosen ``backend``.

    Parameters
    ----------
    n_components : int, default=1
        Number of mixture components.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
        Form of the component covariances.
    tol : float, default=1e-3
        Convergence threshold on the change of the lower bound (mean log-likelihood).
    reg_covar : float, default=1e-6
        Non-negative regularisation added to the covariance diagonals.
    max_iter : int, default=100
        EM iterations per restart (0: initialise only).
    n_init : int, default=1
        Number of restarts, drawn from one seeded generator; the best lower bound is kept.
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}, default='kmeans'
        How initial responsibilities are drawn.
    weights_init : array-like of shape (n_components,), default=None
    means_init : array-like of shape (n_components, n_features), default=None
    precisions_init : array-like, default=None
        User initial parameters (shapes as scikit-learn's).
    random_state : int, RandomState instance or None, default=None
    warm_start : bool, default=False
        Start from the last fitted parameters (one restart).
    verbose : int, default=0
    verbose_interval : int, default=10
    backend : {'auto', 'numpy', 'cupy', 'dask', 'multigpu'}, default='auto'
        Where EM runs. ``'auto'`` uses the CuPy engine when a GPU is usable, else NumPy (and logs
        why); ``'cupy'`` the fused CUDA kernels on one GPU; ``'multigpu'`` shards the data over
        every visible GPU; ``'dask'`` runs the passes on a ``distributed`` cluster (the active
        client, else ``EMFLOW_DASK_SCHEDULER``).
    learning_decay : float in (0.5, 1], default=0.6
        Step-size decay of :meth:`partial_fit`: update ``t`` (from 0) moves the running
        sufficient statistics ``(t + 2) ** -learning_decay`` of the way to the new batch's.
        Smaller values follow a drifting stream faster; 1 averages all batches equally.

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    means_ : ndarray of shape (n_components, n_features)
    covariances_, precisions_, precisions_cholesky_ : ndarray
        Shapes as scikit-learn's for each ``covariance_type``.
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
    lower_bounds_ : list of float
        Lower bound of every iteration of the best restart.
    restart_lower_bounds_ : list of ndarray
        Lower-bound history of every restart, in restart order.
    n_features_in_ : int
    backend_ : str
        The engine that ran the fit (``'numpy'``, ``'cupy'``, ``'dask'`` or ``'multigpu'``).
    fit_seconds_ : float
        Wall time of the last fit (initialisation included).
    n_steps_ : int
        :meth:`partial_fit` updates since the model was last fitted (0 after ``fit``).

    Examples
    --------
    >>> import numpy as np
    >>> from gmm_core import GaussianMixture
    >>> X = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]], dtype=float)
    >>> gm = GaussianMixture(n_components=2, random_state=0, backend="numpy").fit(X)
    >>> np.sort(gm.means_[:, 0])
    array([ 1., 10.])
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "covariance_type": [StrOptions(set(COVARIANCE_TYPES))],
        "tol": [Interval(Real, 0.0, None, closed="left")],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init_params": [StrOptions({"kmeans", "random", "random_from_data", "k-means++"})],
        "weights_init": ["array-like", None],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(Integral, 1, None, closed="left")],
        "backend": [StrOptions(set(BACKENDS))],
        "learning_decay": [Interval(Real, 0.5, 1.0, closed="right")],
    }

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init: Any = None,
        means_init: Any = None,
        precisions_init: Any = None,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        backend: str = "auto",
        learning_decay: float = 0.6,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.backend = backend
        self.learning_decay = learning_decay

    # ------------------------------------------------------------------------------------------
    # Input checks

    def _check_X(
        self, X: Any, *, reset: bool, finite_here: bool = True, min_samples: int | None = None
    ) -> Any:
        """Validated 2-D float32/float64 data; CuPy arrays stay on their device.

        :func:`gmm_core._checks.checked_X` (``min_samples``, ``finite_here`` there).
        """
        return checked_X(self, X, reset=reset, finite_here=finite_here, min_samples=min_samples)

    def _checked_initial_parameters(self, n_features: int) -> dict[str, np.ndarray]:
        """User ``*_init`` arrays, validated (the estimator's parameters are left untouched)."""
        return checked_initial_parameters(
            self.weights_init,
            self.means_init,
            self.precisions_init,
            n_components=self.n_components,
            covariance_type=self.covariance_type,
            n_features=n_features,
        )

    # ------------------------------------------------------------------------------------------
    # Initialisation

    def _fitted_params(self, shift: np.ndarray) -> Params:
        """The current fitted parameters as a one-restart batch (warm start)."""
        return Params(
            np.asarray(self.weights_, np.float64)[None],
            (np.asarray(self.means_, np.float64) - shift)[None],
            np.asarray(self.covariances_, np.float64)[None],
            np.asarray(self.precisions_cholesky_, np.float64)[None],
        )

    # ------------------------------------------------------------------------------------------
    # Fitting

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> GaussianMixture:
        """Estimate model parameters with the EM algorithm.

        The model is fitted ``n_init`` times (all restarts in one batch) and the parameters with
        the largest lower bound are kept.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or chunks
            NumPy (or CuPy) data; float32 stays float32. A CuPy array stays on its device.
            Data that do not fit in memory can come as chunks of rows: a list (or tuple) of 2-D
            arrays, or a function returning a new iterator of them on every call (EM reads
            the data once per iteration, so a one-shot generator is refused). A chunk may be a
            pair ``(X_chunk, sample_weight_chunk)``. EM over chunks is exact; the
            initialisation is drawn from the first chunk (give ``means_init``,
            ``weights_init`` and ``precisions_init`` to start elsewhere).
        y : Ignored
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weight of each row (None: all 1). A weight multiplies the row's
            responsibilities in the M-step and its log-density in the lower bound, so an
            integer weight is the same as repeating the row; k-means initialisation weighs
            rows as :class:`sklearn.cluster.KMeans` does. Weights whose mean is below 1
            (frequencies, weights summing to 1) are scaled to mean 1 first, so the fit does
            not depend on their scale (the M-step's ``10 * eps`` added to every ``N_k`` is a
            count of rows). Every engine.

        Returns
        -------
        self : GaussianMixture
        """
        from ._chunks import is_chunk_source

        if is_chunk_source(X):
            from ._chunks import fit_chunks

            if sample_weight is not None:
                raise ValueError(
                    "sample_weight cannot be given beside chunks of X; pass each chunk as a "
                    "pair (X_chunk, sample_weight_chunk) instead."
                )
            fit_chunks(self, X)
            return self
        engine, data, _ = fit_model(self, X, sample_weight)
        release = type(engine).release_memory
        del engine, data
        release()
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> GaussianMixture:
        """Update the model with one mini-batch by stepwise EM (Cappe & Moulines, 2009).

        The first call on an unfitted model fits it to the batch (as :meth:`fit`, which also
        fixes ``n_features_in_``); later calls, and calls on a fitted or loaded model, move the
        running sufficient statistics ``(n_steps_ + 2) ** -learning_decay`` of the way towards
        the batch's statistics under the current parameters and take the M-step. Each call is
        one pass over the batch on the model's ``backend``.

        Parameters
        ----------
        X : array-like of shape (n_batch, n_features)
        y : Ignored
        sample_weight : array-like of shape (n_batch,), default=None
            Weights of the batch's rows (see :meth:`fit`).

        Returns
        -------
        self : GaussianMixture
            ``lower_bound_`` is the batch's mean log-likelihood under the parameters before
            the update.
        """
        _refuse_chunks(X, "partial_fit", "call partial_fit once per chunk")
        if not hasattr(self, "weights_"):
            engine, data, _ = fit_model(self, X, sample_weight)
            release = type(engine).release_memory
            del engine, data
            release()
            return self
        from ._online import partial_fit_step

        partial_fit_step(self, X, sample_weight)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_predict(self, X: Any, y: Any = None) -> Any:
        """Fit the model ``n_init`` times, keep the best, and return the labels of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : Ignored

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            A CuPy array for CuPy input; a lazy dask array for dask input (as :meth:`predict`).
        """
        _refuse_chunks(X, "fit_predict", "call fit(chunks), then predict on each chunk")
        engine, data, best_params = fit_model(self, X)
        if is_dask_collection(X):  # scored block by block on the workers when computed
            del engine, data
            return self.predict(X)
        # a final E-step so that fit_predict(X) agrees with fit(X).predict(X)
        labels = engine.reduce_log_prob(data, best_params, RowReduction("argmax", engine.xp))
        labels = labels if _is_cupy_array(X) else engine.to_host(labels)
        release = type(engine).release_memory
        del engine, data
        release()
        return labels

    def _set_fitted(self, params: Params, shift: np.ndarray, dtype: Any) -> None:
        """Fitted attributes (C-ordered NumPy, in the data's dtype) from one restart's params.

        An anomaly calibration of earlier parameters no longer holds: it is dropped
        (:meth:`calibrate_threshold` again).
        """
        for stale in ("anomaly_calibration_", "threshold_", "false_alarm_rate_"):
            self.__dict__.pop(stale, None)

        def host(a: Any) -> np.ndarray:
            return np.ascontiguousarray(a, dtype=dtype)

        self.weights_ = host(params.weights[0])
        self.means_ = host(params.means[0] + shift)
        self.covariances_ = host(params.covariances[0])
        self.precisions_cholesky_ = host(params.precisions_cholesky[0])
        self.precisions_ = host(
            precisions_from_cholesky(params.precisions_cholesky[0], self.covariance_type, np)
        )

    # ------------------------------------------------------------------------------------------
    # Scoring

    def _scored(self, X: Any, how: str) -> Any:
        """``RowReduction(how)`` of the weighted log-densities, in the input's array library.

        :func:`gmm_core._scoring.scored`: NumPy, the GPU, or lazily on the dask workers.
        """
        check_is_fitted(self)
        return scored(self, X, how)

    def _score_on_gpu(self, X: np.ndarray) -> bool:
        """Whether NumPy input is large enough to be scored on a usable GPU."""
        return score_on_gpu(self, X)

    def score_samples(self, X: Any) -> Any:
        """Log-likelihood of each sample, shape (n_samples,).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            A dask array or DataFrame gives a lazy dask array (scored on the workers, block by
            block); a CuPy array a CuPy array.
        """
        return self._scored(X, "logsumexp")

    def score(self, X: Any, y: Any = None) -> float:
        """Mean per-sample log-likelihood of ``X``."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X: Any) -> Any:
        """Posterior probability of each component, shape (n_samples, n_components).

        Dask input gives a lazy dask array, CuPy input a CuPy array (as :meth:`score_samples`).
        """
        return self._scored(X, "proba")

    def predict(self, X: Any) -> Any:
        """Most probable component of each sample, shape (n_samples,).

        Dask input gives a lazy dask array, CuPy input a CuPy array (as :meth:`score_samples`).
        """
        return self._scored(X, "argmax")

    # ------------------------------------------------------------------------------------------
    # Anomaly scoring (gmm_core.anomaly)

    def calibrate_threshold(self, X: Any, false_alarm_rate: float = 0.01) -> GaussianMixture:
        """Calibrate the anomaly threshold on held-out normal rows at a false-alarm rate.

        Sets ``anomaly_calibration_`` (the threshold and a table of about 400 quantiles of the
        rows' negative log-likelihoods; the rows themselves are not kept), ``threshold_`` and
        ``false_alarm_rate_``. Saved with the model by :func:`gmm_core.save_model`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows not used for fitting, from the distribution to call normal; at least
            ``1 / false_alarm_rate - 1`` of them (ten times ``1 / false_alarm_rate`` for a
            stable threshold).
        false_alarm_rate : float in (0, 1), default=0.01
            Target probability that a normal row is flagged.

        Returns
        -------
        self : GaussianMixture
        """
        from .anomaly import calibrate

        nll = -np.asarray(_to_numpy(self.score_samples(X)), dtype=np.float64)
        self.anomaly_calibration_ = calibrate(nll, false_alarm_rate)
        self.threshold_ = self.anomaly_calibration_.threshold
        self.false_alarm_rate_ = self.anomaly_calibration_.false_alarm_rate
        return self

    def score_anomaly(self, X: Any) -> Any:
        """Anomaly score, empirical p-value and flag of each row (needs a calibrated threshold).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        gmm_core.anomaly.AnomalyScores
            ``score`` (negative log-likelihood, nats), ``p_value`` (estimated probability that
            a normal row scores at least as high) and ``is_anomaly`` (``score > threshold_``),
            NumPy arrays of shape (n_samples,).
        """
        from .anomaly import score

        check_is_fitted(self)
        if not hasattr(self, "anomaly_calibration_"):
            raise NotFittedError(
                "This GaussianMixture has no anomaly threshold yet; call "
                "calibrate_threshold(X_holdout, false_alarm_rate=...) first."
            )
        nll = -np.asarray(_to_numpy(self.score_samples(X)), dtype=np.float64)
        return score(self.anomaly_calibration_, nll)

    def _n_parameters(self) -> int:
        return n_parameters(self.covariance_type, self.n_components, self.means_.shape[1])

    def bic(self, X: Any) -> float:
        """Bayesian information criterion of the model on ``X`` (lower is better)."""
        n = X.shape[0]
        return -2 * self.score(X) * n + self._n_parameters() * np.log(n)

    def aic(self, X: Any) -> float:
        """Akaike information criterion of the model on ``X`` (lower is better)."""
        return -2 * self.score(X) * X.shape[0] + 2 * self._n_parameters()

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw samples from the fitted mixture (scikit-learn's generator and order).

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
            Component of each sample.
        """
        check_is_fitted(self)
        if n_samples < 1:
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples}. The sampling requires at least one "
                "sample."
            )
        _, n_features = self.means_.shape
        rng = check_random_state(self.random_state)
        n_samples_comp = rng.multinomial(n_samples, self.weights_)
        if self.covariance_type == "full":
            X = np.vstack(
                [
                    rng.multivariate_normal(mean, covariance, int(n))
                    for mean, covariance, n in zip(
                        self.means_, self.covariances_, n_samples_comp, strict=True
                    )
                ]
            )
        elif self.covariance_type == "tied":
            X = np.vstack(
                [
                    rng.multivariate_normal(mean, self.covariances_, int(n))
                    for mean, n in zip(self.means_, n_samples_comp, strict=True)
                ]
            )
        else:
            X = np.vstack(
                [
                    mean + rng.standard_normal(size=(n, n_features)) * np.sqrt(covariance)
                    for mean, covariance, n in zip(
                        self.means_, self.covariances_, n_samples_comp, strict=True
                    )
                ]
            )
        y = np.concatenate([np.full(n, j, dtype=int) for j, n in enumerate(n_samples_comp)])
        return X, y
