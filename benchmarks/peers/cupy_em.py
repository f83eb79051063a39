"""Plain CuPy array-op EM: the obvious code a user writes, in the log domain.

Same initial parameters as every other implementation; ``n_iter`` fixed iterations; the lower
bound of each iteration stays on the device until the end (no host round trip per iteration).
"""

from __future__ import annotations

import math

import cupy as cp

LOG_2PI = math.log(2 * math.pi)


def _logsumexp(a):
    amax = a.max(axis=1, keepdims=True)
    return cp.log(cp.exp(a - amax).sum(axis=1, keepdims=True)) + amax


def em_diag(X, weights, means, variances, n_iter, reg_covar=1e-6):
    """Diagonal-covariance EM: X (N, D); weights (K,); means, variances (K, D).

    Returns the final parameters and the lower bound of every iteration.
    """
    n = X.shape[0]
    w, mu, var = (cp.asarray(a, dtype=X.dtype) for a in (weights, means, variances))
    bounds = []
    X2 = X * X
    for _ in range(n_iter):
        prec = 1.0 / var
        lp = -0.5 * (
            X.shape[1] * LOG_2PI
            + cp.log(var).sum(1)
            + X2 @ prec.T
            - 2.0 * X @ (mu * prec).T
            + (mu * mu * prec).sum(1)
        ) + cp.log(w)
        lse = _logsumexp(lp)
        bounds.append(lse.mean())
        resp = cp.exp(lp - lse)
        nk = resp.sum(0) + 10 * cp.finfo(X.dtype).eps
        mu = (resp.T @ X) / nk[:, None]
        var = (resp.T @ X2) / nk[:, None] - mu * mu + reg_covar
        w = nk / n
    return (w, mu, var), cp.stack(bounds)


def em_full(X, weights, means, covariances, n_iter, reg_covar=1e-6):
    """Full-covariance EM (Cholesky-precision form, per-component GEMMs, as scikit-learn)."""
    n, d = X.shape
    k = means.shape[0]
    w, mu, cov = (cp.asarray(a, dtype=X.dtype) for a in (weights, means, covariances))
    eye = cp.eye(d, dtype=X.dtype)
    bounds = []
    for _ in range(n_iter):
        chol = cp.linalg.cholesky(cov)
        prec_chol = cp.swapaxes(cp.linalg.solve(chol, cp.broadcast_to(eye, cov.shape)), -1, -2)
        log_det = cp.log(cp.diagonal(prec_chol, axis1=1, axis2=2)).sum(1)
        lp = cp.empty((n, k), dtype=X.dtype)
        for j in range(k):
            y = X @ prec_chol[j] - mu[j] @ prec_chol[j]
            lp[:, j] = (y * y).sum(1)
        lp = -0.5 * (d * LOG_2PI + lp) + log_det + cp.log(w)
        lse = _logsumexp(lp)
        bounds.append(lse.mean())
        resp = cp.exp(lp - lse)
        nk = resp.sum(0) + 10 * cp.finfo(X.dtype).eps
        mu = (resp.T @ X) / nk[:, None]
        for j in range(k):
            diff = X - mu[j]
            cov[j] = (resp[:, j, None] * diff).T @ diff / nk[j] + reg_covar * eye
        w = nk / n
    return (w, mu, cov), cp.stack(bounds)
