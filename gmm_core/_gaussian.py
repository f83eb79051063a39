"""Gaussian mixture mathematics shared by every backend.

Everything here takes the array module ``xp`` (NumPy or CuPy) explicitly and works on a *batch*
of ``R`` restarts at once: parameters carry a leading restart axis. The EM loop only ever sees
:class:`Params` (what the M-step produces) and :class:`Stats` (what one pass over the data
produces); the statistics add up across chunks, shards and devices, which is what makes chunked,
multi-GPU and distributed EM the same algorithm.

Shapes by covariance type (``R`` restarts, ``K`` components, ``D`` features):

============  ==================  ==================  =====================
type          covariances         precisions_chol     ``Stats.sxx``
============  ==================  ==================  =====================
full          (R, K, D, D)        (R, K, D, D)        (R, K, D, D) sum r x x^T
tied          (R, D, D)           (R, D, D)           (D, D)       X^T X
diag          (R, K, D)           (R, K, D)           (R, K, D)    sum r x^2
spherical     (R, K)              (R, K)              (R, K)       sum r |x|^2
============  ==================  ==================  =====================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

ILL_DEFINED_COVARIANCE = (
    "Fitting the mixture model failed because some components have ill-defined empirical "
    "covariance (for instance caused by singleton or collapsed samples). Try to decrease the "
    "number of components, increase reg_covar, or scale the input data."
)


@dataclass
class Params:
    """Mixture parameters of ``R`` restarts (arrays of one array module, float64)."""

    weights: Any  # (R, K)
    means: Any  # (R, K, D)
    covariances: Any  # see module docstring
    precisions_cholesky: Any  # same shape as covariances

    def map(self, fn: Any) -> Params:
        """Return ``Params`` with ``fn`` applied to every array."""
        return Params(*(fn(getattr(self, f.name)) for f in fields(self)))

    def take(self, r: int) -> Params:
        """Parameters of restart ``r`` alone, keeping a restart axis of length 1."""
        return self.map(lambda a: a[r : r + 1])


@dataclass
class Stats:
    """Sufficient statistics of one pass over the data, summed over samples (float64).

    ``loglik`` is the sum over samples of log p(x) under the parameters used in the pass, so the
    lower bound of that pass is ``loglik / weight_sum`` (as in scikit-learn, whose lower bound is
    computed in the E-step, before the M-step). With sample weights ``w``, every sum is
    weighted (``nk = sum w r``, ``loglik = sum w log p(x)``) and ``weight_sum = sum w``.
    """

    loglik: Any  # (R,)
    nk: Any  # (R, K)
    sx: Any  # (R, K, D)
    sxx: Any  # see module docstring
    n_samples: int
    #: sum of the sample weights of a weighted pass (every sum above is then weighted); None:
    #: unweighted, every row weighs 1
    total_weight: float | None = None

    @property
    def weight_sum(self) -> float:
        """What the lower bound divides ``loglik`` by: the total weight, else ``n_samples``."""
        return self.n_samples if self.total_weight is None else self.total_weight

    def map(self, fn: Any) -> Stats:
        """Return ``Stats`` with ``fn`` applied to every array (the counts kept)."""
        return Stats(
            fn(self.loglik),
            fn(self.nk),
            fn(self.sx),
            fn(self.sxx),
            self.n_samples,
            self.total_weight,
        )

    def copy(self) -> Stats:
        """The same statistics in new arrays (a loop must not see later in-place updates)."""
        return self.map(lambda a: a.copy())

    def __add__(self, other: Stats) -> Stats:
        weighted = self.total_weight is not None or other.total_weight is not None
        return Stats(
            self.loglik + other.loglik,
            self.nk + other.nk,
            self.sx + other.sx,
            self.sxx + other.sxx,
            self.n_samples + other.n_samples,
            self.weight_sum + other.weight_sum if weighted else None,
        )


# ---------------------------------------------------------------------------------------------
# Precision Cholesky factors


def cholesky_precisions(
    covariances: Any, covariance_type: str, xp: Any, *, check: bool = True
) -> Any:
    """Upper-triangular factors ``U`` with ``precision = U @ U.T`` (scikit-learn's convention).

    With ``check=False`` a covariance that is not positive definite gives non-finite factors
    instead of an error (no device-to-host sync: the CuPy EM loop checks at its sync points).

    Parameters
    ----------
    covariances : array
        Covariances of any leading batch shape (see module docstring).
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    xp : module
        NumPy or CuPy.
    check : bool, default=True
        Raise on a covariance that is not positive definite.

    Raises
    ------
    ValueError
        When a covariance is not positive definite, naming what to change.
    """
    if covariance_type in ("full", "tied"):
        try:
            cov_chol = xp.linalg.cholesky(covariances)
        except np.linalg.LinAlgError as exc:
            raise ValueError(ILL_DEFINED_COVARIANCE) from exc
        n_features = covariances.shape[-1]
        eye = xp.broadcast_to(xp.eye(n_features, dtype=covariances.dtype), covariances.shape)
        precisions_chol = xp.swapaxes(xp.linalg.solve(cov_chol, eye), -1, -2)
        if check and not bool(xp.isfinite(precisions_chol).all()):  # CuPy does not raise
            raise ValueError(ILL_DEFINED_COVARIANCE)
        return precisions_chol
    if check:
        if bool((covariances <= 0.0).any()):
            raise ValueError(ILL_DEFINED_COVARIANCE)
        return 1.0 / xp.sqrt(covariances)  # (no errstate context on this per-iteration path)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / xp.sqrt(covariances)


def below_resolution(covariances: Any, covariance_type: str, shift: Any, dtype: Any) -> bool:
    """Whether a fitted variance is below what the data's values can resolve: numerically zero.

    A feature's values near ``shift`` (the data's mean) are known to ``eps * |shift|`` (``eps``
    of the data's dtype), so a variance at most ``(eps * |shift|)^2`` is no spread at all: a
    constant feature, or a component on repeated points, whose centred variance is left at
    ~1e-34 by the M-step's ``eps`` term where scikit-learn's ``E[x^2] - mu^2`` gives 0 or less
    and raises. Only reachable with ``reg_covar`` (near) 0. Host arrays of one mixture.
    """
    floor = (float(np.finfo(dtype).eps) * np.abs(np.asarray(shift, dtype=np.float64))) ** 2
    cov = np.asarray(covariances, dtype=np.float64)
    if covariance_type in ("full", "tied"):
        variances = np.diagonal(cov, axis1=-2, axis2=-1)
    elif covariance_type == "spherical":
        variances, floor = cov[..., None], floor.mean()
    else:
        variances = cov
    return bool(np.any(variances <= floor))


def cholesky_from_precisions(precisions: Any, covariance_type: str, xp: Any) -> Any:
    """Upper-triangular factors of given precisions (the reversed-Cholesky trick of sklearn)."""
    if covariance_type in ("full", "tied"):
        flipped = xp.flip(precisions, axis=(-2, -1))
        return xp.flip(xp.linalg.cholesky(flipped), axis=(-2, -1))
    return xp.sqrt(precisions)


def precisions_from_cholesky(precisions_chol: Any, covariance_type: str, xp: Any) -> Any:
    """``U @ U.T`` for full/tied, ``U**2`` otherwise."""
    if covariance_type in ("full", "tied"):
        return precisions_chol @ xp.swapaxes(precisions_chol, -1, -2)
    return precisions_chol**2


def covariances_from_precisions(precisions: Any, covariance_type: str, xp: Any) -> Any:
    """Inverse of :func:`precisions_from_cholesky`'s output."""
    if covariance_type in ("full", "tied"):
        return xp.linalg.inv(precisions)
    return 1.0 / precisions


def log_det_cholesky(precisions_chol: Any, covariance_type: str, n_features: int, xp: Any) -> Any:
    """Log-determinant of the precision Cholesky factors, shape ``(..., K)``.

    For ``tied`` the result has shape ``(...,)`` (one matrix shared by every component).
    """
    if covariance_type in ("full", "tied"):
        return xp.sum(xp.log(xp.diagonal(precisions_chol, axis1=-2, axis2=-1)), axis=-1)
    if covariance_type == "diag":
        return xp.log(precisions_chol).sum(axis=-1)
    return n_features * xp.log(precisions_chol)


# ---------------------------------------------------------------------------------------------
# M-step from sufficient statistics


# The second moments are about the data's shift and a mean ``m`` need not be ``sx / nk`` (see
# :func:`estimate_parameters`), so a covariance is taken as sum r (x - m)(x - m)^T / nk =
# (sxx - m sx^T - sx m^T + nk_raw m m^T) / nk, ``nk`` including the M-step's eps: exactly what
# scikit-learn computes for full covariances, translation invariant (with m = sx / nk it is
# sxx / nk - m m^T (2 - nk_raw / nk); without the factor a tight component far from the data
# mean is off by mean^2 * eps / nk, 1e-8 relative of mean^2 in float32).
def _cross(stats: Stats, nk: Any, means: Any) -> Any:
    """``m (2 sx - nk_raw m) / nk`` per feature: the mean's part of a diagonal second moment."""
    return means * (2.0 * stats.sx - stats.nk[..., None] * means) / nk[..., None]


def _covariances_full(stats: Stats, nk: Any, means: Any, reg_covar: float, xp: Any) -> Any:
    m_sx = means[..., :, None] * stats.sx[..., None, :]
    outer = means[..., :, None] * means[..., None, :]
    cross = (m_sx + xp.swapaxes(m_sx, -1, -2) - stats.nk[..., None, None] * outer) / nk[
        ..., None, None
    ]
    cov = stats.sxx / nk[..., None, None] - cross
    return cov + reg_covar * xp.eye(means.shape[-1])


def _covariances_tied(stats: Stats, nk: Any, means: Any, reg_covar: float, xp: Any) -> Any:
    weighted_means2 = xp.einsum("rk,rki,rkj->rij", nk, means, means)
    cov = (stats.sxx[None] - weighted_means2) / xp.sum(nk, axis=-1)[:, None, None]
    return cov + reg_covar * xp.eye(means.shape[-1])


# diag and spherical: a variance is a mean of squares, never negative; computed from second
# moments (``E[x^2] - mu^2``) it can come out a little below 0 by rounding where the true value
# is 0 (a component on one sample, or on equal samples, away from the data mean: float32 sums
# of the large-K pass left -1e-6 there, which reg_covar=1e-6 did not lift). Such a variance is 0,
# so the component gets reg_covar, as a centred sum gives it; reg_covar=0 still leaves it ill
# defined (the precision check raises).


def _covariances_diag(stats: Stats, nk: Any, means: Any, reg_covar: float, xp: Any) -> Any:
    var = stats.sxx / nk[..., None] - _cross(stats, nk, means)
    return xp.maximum(var, 0.0) + reg_covar


def _covariances_spherical(stats: Stats, nk: Any, means: Any, reg_covar: float, xp: Any) -> Any:
    n_features = means.shape[-1]
    mean_sq = _cross(stats, nk, means).sum(axis=-1)
    return xp.maximum(stats.sxx / nk - mean_sq, 0.0) / n_features + reg_covar


_COVARIANCE_ESTIMATORS = {
    "full": _covariances_full,
    "tied": _covariances_tied,
    "diag": _covariances_diag,
    "spherical": _covariances_spherical,
}


def estimate_parameters(
    stats: Stats,
    covariance_type: str,
    reg_covar: float,
    eps: float,
    xp: Any,
    shift: Any = None,
) -> tuple[Any, Any, Any]:
    """Return ``(nk, means, covariances)`` from sufficient statistics (scikit-learn's formulas).

    ``eps`` is added to every ``nk`` (scikit-learn adds ``10 * finfo(dtype).eps``) so an empty
    component does not divide by zero. ``shift``: what the statistics' samples were centred by
    (None: nothing). scikit-learn's mean is ``sum r x / (N_k + eps)`` in the data's own
    coordinates, so centred it is ``(sum r x_c - eps shift) / (N_k + eps)``: an empty component
    sits at the data's origin, as there, not at the shift (elsewhere the term moves a mean by
    eps / N_k of the shift); every covariance is taken about its mean (``_covariances_full``).
    """
    nk = stats.nk + eps
    if shift is None:
        means = stats.sx / nk[..., None]
    else:
        means = (stats.sx - eps * xp.asarray(shift, dtype=stats.sx.dtype)) / nk[..., None]
    covariances = _COVARIANCE_ESTIMATORS[covariance_type](stats, nk, means, reg_covar, xp)
    return nk, means, covariances


def m_step(
    stats: Stats,
    covariance_type: str,
    reg_covar: float,
    eps: float,
    xp: Any,
    *,
    check: bool = True,
    shift: Any = None,
) -> Params:
    """The M-step: new parameters of every restart from one pass's statistics.

    ``check`` as in :func:`cholesky_precisions`; ``shift`` as in :func:`estimate_parameters`.
    """
    nk, means, covariances = estimate_parameters(stats, covariance_type, reg_covar, eps, xp, shift)
    weights = nk / nk.sum(axis=-1, keepdims=True)
    precisions_chol = cholesky_precisions(covariances, covariance_type, xp, check=check)
    return Params(weights, means, covariances, precisions_chol)


def select(mask: Any, new: Params, old: Params, xp: Any) -> Params:
    """Per restart, take ``new`` where ``mask`` (shape (R,)) is true, else keep ``old``."""

    def pick(a: Any, b: Any) -> Any:
        return xp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    return Params(*(pick(getattr(new, f.name), getattr(old, f.name)) for f in fields(Params)))


# ---------------------------------------------------------------------------------------------
# Log-probabilities (used by the predict paths of the NumPy backend and by tests)


def estimate_log_gaussian_prob(
    X: Any, means: Any, precisions_chol: Any, covariance_type: str, xp: Any
) -> Any:
    """Log density of every sample under every component of ONE mixture, shape (N, K).

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
    means : array of shape (n_components, n_features)
    precisions_chol : array
        One mixture's factors (no restart axis).
    """
    n_samples, n_features = X.shape
    n_components = means.shape[0]
    log_det = log_det_cholesky(precisions_chol, covariance_type, n_features, xp)
    if covariance_type == "full":
        log_prob = xp.empty((n_samples, n_components), dtype=X.dtype)
        for k in range(n_components):
            y = X @ precisions_chol[k] - means[k] @ precisions_chol[k]
            log_prob[:, k] = xp.sum(y * y, axis=1)
    elif covariance_type == "tied":
        log_prob = xp.empty((n_samples, n_components), dtype=X.dtype)
        xl = X @ precisions_chol
        for k in range(n_components):
            y = xl - means[k] @ precisions_chol
            log_prob[:, k] = xp.sum(y * y, axis=1)
    elif covariance_type == "diag":
        precisions = precisions_chol**2
        log_prob = (
            xp.sum(means**2 * precisions, axis=1)
            - 2.0 * (X @ (means * precisions).T)
            + (X * X) @ precisions.T
        )
    else:
        precisions = precisions_chol**2
        log_prob = (
            xp.sum(means**2, axis=1) * precisions
            - 2.0 * (X @ means.T) * precisions
            + xp.sum(X * X, axis=1)[:, None] * precisions[None, :]
        )
    return -0.5 * (n_features * math.log(2 * math.pi) + log_prob) + log_det


def logsumexp_rows(a: Any, xp: Any) -> Any:
    """``log(sum(exp(a), axis=1))`` computed stably, shape (N,)."""
    amax = xp.max(a, axis=1, keepdims=True)
    amax = xp.where(xp.isfinite(amax), amax, 0.0)
    return xp.log(xp.sum(xp.exp(a - amax), axis=1)) + amax[:, 0]


#: what scoring makes of each sample's weighted log-densities ``log w_k + log N(x | k)``
ROW_REDUCTIONS = ("argmax", "logsumexp", "proba", "none")


@dataclass(frozen=True)
class RowReduction:
    """A named reduction of the weighted log-densities (N, K) of one mixture, per sample.

    ``argmax`` (labels, int), ``logsumexp`` (log-likelihoods), ``proba`` (posteriors, (N, K)),
    ``none`` (the log-densities). Called as ``reduce(wlp)`` with arrays of ``xp``; an engine
    that recognises it may compute it fused with the log-densities instead
    (:meth:`gmm_core._engine.Engine.reduce_log_prob`). ``to_host``: applied to each chunk's
    result (NumPy input scored on a device: every chunk leaves the device at once).
    """

    how: str
    xp: Any
    to_host: Any = None

    def __post_init__(self) -> None:
        if self.how not in ROW_REDUCTIONS:
            raise ValueError(f"how must be one of {ROW_REDUCTIONS}, got {self.how!r}")

    def __call__(self, wlp: Any) -> Any:
        xp = self.xp
        if self.how == "argmax":
            out = xp.argmax(wlp, axis=1)
        elif self.how == "logsumexp":
            out = logsumexp_rows(wlp, xp)
        elif self.how == "proba":
            out = xp.exp(wlp - logsumexp_rows(wlp, xp)[:, None])
        else:
            out = wlp
        return out if self.to_host is None else self.to_host(out)


def n_parameters(covariance_type: str, n_components: int, n_features: int) -> int:
    """Number of free parameters of a mixture (for AIC/BIC), as scikit-learn counts them."""
    if covariance_type == "full":
        cov_params = n_components * n_features * (n_features + 1) / 2.0
    elif covariance_type == "diag":
        cov_params = n_components * n_features
    elif covariance_type == "tied":
        cov_params = n_features * (n_features + 1) / 2.0
    else:
        cov_params = n_components
    mean_params = n_features * n_components
    return int(cov_params + mean_params + n_components - 1)
