"""The NumPy engine: chunked, BLAS-shaped passes over the data.

Each pass walks the data in row chunks small enough to stay in cache and, per chunk, does one
GEMM for the log-densities, one in-place log-sum-exp, one ``exp`` and one GEMM for the sufficient
statistics. Compared with scikit-learn's E-step/M-step pair this never materialises the N x K
log-responsibilities, computes ``exp`` once instead of twice, and precomputes ``x**2`` once per
fit instead of once per iteration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._engine import Engine
from ._gaussian import Params, Stats, estimate_log_gaussian_prob, log_det_cholesky

_LOG_2PI = math.log(2 * math.pi)
# elements of the widest per-chunk temporary; ~2-4 MiB keeps a chunk in L2/L3 cache
_CHUNK_ELEMENTS = 1 << 18


@dataclass
class NumpyData:
    """Centred data and what every pass reuses."""

    X: np.ndarray  # (N, D) centred, in the fit dtype
    features: np.ndarray  # diag: [X, X**2]; spherical: [X, |x|^2] (float64); full/tied: X
    xtx: np.ndarray | None  # tied only: X^T X in float64
    covariance_type: str
    #: what ``prepare(X, "auto", ...)`` measured: the column means (the shift) and variances
    shift: np.ndarray | None = None
    variance: np.ndarray | None = None
    max_abs: float = 0.0
    #: sample weights (N,) float64, or None: every row weighs 1 (the name and meaning of
    #: :class:`~gmm_core._cupy.data.CupyData`'s, whose ``host_weights`` are these here)
    weights: np.ndarray | None = None

    @property
    def total_weight(self) -> float | None:
        """Sum of the sample weights (None when unweighted)."""
        return None if self.weights is None else float(self.weights.sum())

    @property
    def host_weights(self) -> np.ndarray | None:
        """The sample weights on the host: :attr:`weights` themselves."""
        return self.weights

    @property
    def n_features(self) -> int:
        return self.X.shape[1]

    @property
    def dtype(self) -> np.dtype:
        return self.X.dtype

    @property
    def n_samples(self) -> int:
        return self.X.shape[0]


class NumpyEngine(Engine):
    """CPU engine; see :class:`gmm_core._engine.Engine` for the contract."""

    name = "numpy"
    xp = np
    supports_sample_weight = True

    def __init__(self) -> None:
        self._last: Stats | None = None  # statistics of restarts that stopped iterating
        self._last_key: tuple[Any, ...] = ()

    # -- data -----------------------------------------------------------------------------------
    def prepare(
        self, X: Any, shift: Any, covariance_type: str, *, sample_weight: Any = None
    ) -> NumpyData:
        X = np.asarray(X)
        weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        variance, max_abs = None, 0.0
        if isinstance(shift, str):  # "auto": the column moments and the largest magnitude, here
            shift, variance = X.mean(axis=0, dtype=np.float64), X.var(axis=0, dtype=np.float64)
            max_abs = max(float(X.max()), -float(X.min())) if X.size else 0.0
        if shift is not None:
            X = X - np.asarray(shift, dtype=X.dtype)
        # second moments in float64 whatever the data dtype: the M-step's sxx/nk - mean^2
        # cancels, and float32 squares would lose a tight cluster far from the data mean
        X64 = X.astype(np.float64, copy=False)
        if covariance_type == "diag":
            features = np.concatenate([X64, X64 * X64], axis=1)
        elif covariance_type == "spherical":
            features = np.concatenate([X64, np.einsum("ij,ij->i", X64, X64)[:, None]], axis=1)
        else:
            features = X
        xtx = None
        if covariance_type == "tied":
            X64 = X.astype(np.float64)
            xtx = X.T.astype(np.float64) @ (X64 if weight is None else X64 * weight[:, None])
        return NumpyData(X, features, xtx, covariance_type, shift, variance, max_abs, weight)

    def retype(self, data: NumpyData, covariance_type: str) -> NumpyData:
        """The same (already centred) data laid out for another covariance type."""
        if covariance_type == data.covariance_type:
            return data
        return self.prepare(data.X, None, covariance_type, sample_weight=data.weights)

    def subsample(self, data: NumpyData, step: int) -> NumpyData:
        """Every ``step``-th row, laid out alike."""
        weight = None if data.weights is None else data.weights[::step]
        return self.prepare(
            np.ascontiguousarray(data.X[::step]), None, data.covariance_type, sample_weight=weight
        )

    def host_centred(self, data: NumpyData, X: np.ndarray, shift: np.ndarray) -> np.ndarray:
        return data.X

    def device_chunks(self, data: NumpyData) -> Any:
        """The centred data as one block of rows."""
        yield data.X

    def asarray(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    def to_host(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    # -- passes ---------------------------------------------------------------------------------
    def accumulate(self, data: NumpyData, params: Params, active: Any) -> Stats:
        n_restarts, n_components, n_features = params.means.shape
        if n_restarts == 1 and bool(active[0]):
            return _accumulate_live(data, params)  # fresh arrays, nothing to keep
        # per data set (a coarse subsample's passes of the same shape come first in k-means):
        # the counts and the tied X^T X are always the data's own, never a former data set's
        key = (id(data), data.covariance_type, n_restarts, n_components, n_features)
        if self._last is None or self._last_key != key:
            self._last = _empty_stats(data, n_restarts, n_components, n_features)
            self._last_key = key
        stats = self._last
        for r in np.flatnonzero(np.asarray(active)):
            one = _accumulate_live(data, params.take(int(r)))
            stats.loglik[r] = one.loglik[0]
            stats.nk[r] = one.nk[0]
            stats.sx[r] = one.sx[0]
            if data.covariance_type != "tied":
                stats.sxx[r] = one.sxx[0]
        stats.n_samples, stats.total_weight = data.n_samples, data.total_weight
        if data.xtx is not None:
            stats.sxx = data.xtx.copy()
        return stats.copy()  # the loop must not see later in-place updates

    def weighted_log_prob(self, data: NumpyData, params: Params) -> np.ndarray:
        dtype = data.X.dtype
        log_prob = estimate_log_gaussian_prob(
            data.X,
            params.means[0].astype(dtype),
            params.precisions_cholesky[0].astype(dtype),
            data.covariance_type,
            np,
        )
        return log_prob + np.log(params.weights[0]).astype(dtype)


def _accumulate_live(data: NumpyData, params: Params) -> Stats:
    """:func:`_accumulate_one`, skipping trailing components of weight exactly 0.

    Their responsibilities are exactly 0 (``exp(-inf)``), so their statistics are zeros and the
    others' are unchanged: the same result, at the cost of the live components only. Model
    selection (:mod:`gmm_core.selection`) pads candidates of fewer components this way.
    """
    weights = np.asarray(params.weights[0])
    nonzero = np.flatnonzero(weights)
    n_live = int(nonzero[-1]) + 1 if nonzero.size else weights.shape[0]
    n_components = weights.shape[0]
    if n_live == n_components:
        return _accumulate_one(data, params)
    tied = data.covariance_type == "tied"
    live = Params(
        params.weights[:, :n_live],
        params.means[:, :n_live],
        params.covariances if tied else params.covariances[:, :n_live],
        params.precisions_cholesky if tied else params.precisions_cholesky[:, :n_live],
    )
    one = _accumulate_one(data, live)

    def widen(a: np.ndarray) -> np.ndarray:
        out = np.zeros((1, n_components, *a.shape[2:]))
        out[:, :n_live] = a
        return out

    return Stats(
        one.loglik,
        widen(one.nk),
        widen(one.sx),
        one.sxx if tied else widen(one.sxx),
        one.n_samples,
        one.total_weight,
    )


def _empty_stats(data: NumpyData, n_restarts: int, n_components: int, n_features: int) -> Stats:
    sxx_shape = {
        "full": (n_restarts, n_components, n_features, n_features),
        "tied": (n_features, n_features),
        "diag": (n_restarts, n_components, n_features),
        "spherical": (n_restarts, n_components),
    }[data.covariance_type]
    sxx = data.xtx.copy() if data.xtx is not None else np.zeros(sxx_shape)
    return Stats(
        np.zeros(n_restarts),
        np.zeros((n_restarts, n_components)),
        np.zeros((n_restarts, n_components, n_features)),
        sxx,
        data.n_samples,
        data.total_weight,
    )


def _linear_terms(
    params: Params, covariance_type: str, dtype: Any
) -> tuple[np.ndarray, np.ndarray]:
    """diag/spherical: ``log w + log N = features @ W.T + c``; return ``(W, c)``, W (K, width).

    Called once per restart and iteration: written for few NumPy calls (small data sets are
    dominated by this per-iteration overhead).
    """
    means = params.means[0]
    n_components, n_features = means.shape
    pc = params.precisions_cholesky[0]
    prec = pc * pc
    if covariance_type == "diag":
        W = np.empty((n_components, 2 * n_features), dtype=dtype)
        mp = means * prec
        W[:, :n_features] = mp
        W[:, n_features:] = -0.5 * prec
        quad = (mp * means).sum(axis=1)
        log_det = np.log(pc).sum(axis=1)
    else:
        W = np.empty((n_components, n_features + 1), dtype=dtype)
        W[:, :n_features] = means * prec[:, None]
        W[:, n_features] = -0.5 * prec
        quad = (means * means).sum(axis=1) * prec
        log_det = n_features * np.log(pc)
    const = -0.5 * (n_features * _LOG_2PI + quad) + log_det + np.log(params.weights[0])
    return W, const.astype(dtype)


def _resp_inplace(log_prob_t: np.ndarray) -> np.ndarray:
    """Weighted log-densities (K, n) -> responsibilities, in place; return log p(x) (n,) float64.

    Components run along the first axis so every reduction is an element-wise pass over
    contiguous rows (NumPy reduces a short trailing axis slowly).
    """
    amax = log_prob_t.max(axis=0)
    np.subtract(log_prob_t, amax, out=log_prob_t)
    np.exp(log_prob_t, out=log_prob_t)
    norm = log_prob_t.sum(axis=0)
    np.divide(log_prob_t, norm, out=log_prob_t)
    return np.log(norm, dtype=np.float64) + amax


def _accumulate_one(data: NumpyData, params: Params) -> Stats:
    """One restart's pass over the data, chunk by chunk."""
    cov_type = data.covariance_type
    dtype = data.X.dtype
    weight = data.weights
    n_samples, n_features = data.X.shape
    n_components = params.means.shape[1]
    loglik = 0.0
    nk = np.zeros(n_components)
    s_feat = np.zeros((n_components, data.features.shape[1]))
    sxx_full = np.zeros((n_components, n_features, n_features)) if cov_type == "full" else None

    if cov_type in ("diag", "spherical"):
        Wt, const = _linear_terms(params, cov_type, data.features.dtype)
        width = max(n_components, data.features.shape[1])
    else:
        pc = params.precisions_cholesky[0].astype(dtype)
        means = params.means[0].astype(dtype)
        if cov_type == "full":
            U = pc.transpose(1, 0, 2).reshape(n_features, n_components * n_features)
            mu_u = np.einsum("kd,kde->ke", means, pc)
        else:
            U = pc
            mu_u = means @ pc
        log_det = log_det_cholesky(params.precisions_cholesky[0], cov_type, n_features, np)
        const = (-0.5 * n_features * _LOG_2PI + log_det + np.log(params.weights[0])).astype(dtype)
        width = n_components * n_features
    const_col = const[:, None]
    chunk = int(min(n_samples, max(256, _CHUNK_ELEMENTS // max(width, 1))))

    for start in range(0, n_samples, chunk):
        feats = data.features[start : start + chunk]
        if cov_type in ("diag", "spherical"):
            log_prob_t = Wt @ feats.T  # (K, n)
            log_prob_t += const_col
        else:
            y = feats @ U
            if cov_type == "full":
                y = y.reshape(len(feats), n_components, n_features) - mu_u
            else:
                y = y[:, None, :] - mu_u
            log_prob_t = np.einsum("nkd,nkd->kn", y, y)
            log_prob_t *= -0.5
            log_prob_t += const_col
        log_px = _resp_inplace(log_prob_t)
        resp_t = log_prob_t
        if weight is None:
            loglik += float(log_px.sum())
            nk += resp_t.sum(axis=1, dtype=np.float64)
            resp64 = resp_t.astype(np.float64, copy=False)
        else:  # each row's responsibilities and log-density times its weight, in float64
            w = weight[start : start + chunk]
            loglik += float((log_px * w).sum())
            resp64 = resp_t.astype(np.float64, copy=False) * w
            nk += resp64.sum(axis=1)
        # moments in float64 (diag/spherical features already are): the M-step's
        # sxx / nk - mean^2 cancels, and float32 sums lose a tight cluster far from the data mean
        feats64 = feats.astype(np.float64, copy=False)
        s_feat += resp64 @ feats64
        if sxx_full is not None:
            for k in range(n_components):
                sxx_full[k] += (feats64.T * resp64[k]) @ feats64

    sx = s_feat[:, :n_features]
    sxx: Any
    if cov_type == "diag":
        sxx = s_feat[:, n_features:]
    elif cov_type == "spherical":
        sxx = s_feat[:, n_features]
    elif cov_type == "full":
        sxx = sxx_full
    else:
        sxx = data.xtx
    return Stats(
        np.array([loglik]),
        nk[None],
        sx[None],
        sxx[None] if cov_type != "tied" else sxx,
        n_samples,
        data.total_weight,
    )
