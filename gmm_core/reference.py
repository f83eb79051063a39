"""The sequential reference EM: the seed paper's single-threaded baseline, kept obvious.

Plain Python loops over samples and components, no vectorisation, float64 throughout. It is
slow by design and exists as a test oracle: :class:`~gmm_core.GaussianMixture` must reach the
same parameters from the same starting point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class ReferenceResult:
    """Parameters after ``n_iter`` iterations and the lower bound of every iteration."""

    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, D)
    covariances: np.ndarray  # full (K, D, D) matrices, whatever the covariance type
    lower_bounds: list[float]


def _log_gaussian(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    d = len(x)
    diff = x - mean
    sign, logdet = np.linalg.slogdet(cov)
    maha = float(diff @ np.linalg.solve(cov, diff))
    return -0.5 * (d * math.log(2 * math.pi) + logdet + maha)


def sequential_em(
    X: np.ndarray,
    weights: np.ndarray,
    means: np.ndarray,
    covariances: np.ndarray,
    *,
    covariance_type: str = "full",
    n_iter: int = 10,
    reg_covar: float = 1e-6,
) -> ReferenceResult:
    """Run ``n_iter`` EM iterations from the given parameters, one sample at a time.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    weights : ndarray of shape (n_components,)
    means : ndarray of shape (n_components, n_features)
    covariances : ndarray of shape (n_components, n_features, n_features)
        Full matrices (diagonal, shared or isotropic ones written out in full).
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
        Which constraint the M-step imposes.
    n_iter : int
    reg_covar : float

    Returns
    -------
    ReferenceResult
    """
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    k = len(weights)
    w = np.array(weights, dtype=np.float64)
    mu = np.array(means, dtype=np.float64)
    cov = np.array(covariances, dtype=np.float64)
    bounds: list[float] = []
    for _ in range(n_iter):
        # E-step: responsibilities of every sample, and the mean log-likelihood
        resp = np.zeros((n, k))
        total = 0.0
        for i in range(n):
            logp = [math.log(w[j]) + _log_gaussian(X[i], mu[j], cov[j]) for j in range(k)]
            top = max(logp)
            norm = top + math.log(sum(math.exp(v - top) for v in logp))
            total += norm
            for j in range(k):
                resp[i, j] = math.exp(logp[j] - norm)
        bounds.append(total / n)
        # M-step, one component at a time
        nk = [sum(resp[i, j] for i in range(n)) + 10 * np.finfo(np.float64).eps for j in range(k)]
        for j in range(k):
            w[j] = nk[j] / sum(nk)
            mu[j] = sum(resp[i, j] * X[i] for i in range(n)) / nk[j]
        scatter = np.zeros((k, d, d))
        for j in range(k):
            for i in range(n):
                diff = X[i] - mu[j]
                scatter[j] += resp[i, j] * np.outer(diff, diff)
        for j in range(k):
            if covariance_type == "full":
                cov[j] = scatter[j] / nk[j]
            elif covariance_type == "tied":
                cov[j] = scatter.sum(axis=0) / sum(nk)
            elif covariance_type == "diag":
                cov[j] = np.diag(np.diag(scatter[j]) / nk[j])
            else:
                cov[j] = np.eye(d) * np.trace(scatter[j]) / (d * nk[j])
            cov[j] += reg_covar * np.eye(d)
    return ReferenceResult(w, mu, cov, bounds)
