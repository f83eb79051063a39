"""Initialisation on the host, exactly as scikit-learn draws it (the NumPy and Dask backends).

The GPU engines draw theirs on the device (:mod:`gmm_core._init`); both end in
:func:`gmm_core._init.with_user_init`, which puts the user's ``*_init`` arrays in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse

from ._gaussian import Stats, estimate_parameters


def initial_resp(
    X: np.ndarray, random_state: np.random.RandomState, n_components: int, init_params: str
) -> Any:
    """Initial responsibilities: a dense (N, K) array, or labels (N,) for one-hot inits."""
    n_samples = X.shape[0]
    k = n_components
    if init_params == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=k, n_init=1, random_state=random_state).fit(X).labels_
    if init_params == "random":
        resp = random_state.uniform(size=(n_samples, k)).astype(X.dtype)
        resp /= resp.sum(axis=1)[:, np.newaxis]
        return resp
    if init_params == "random_from_data":
        indices = random_state.choice(n_samples, size=k, replace=False)
    else:  # k-means++
        from sklearn.cluster import kmeans_plusplus

        _, indices = kmeans_plusplus(X, k, random_state=random_state)
    labels = np.full(n_samples, -1)
    labels[indices] = np.arange(k)
    return labels


def host_initial_parameters(
    X: np.ndarray,
    Xc: np.ndarray,
    shift: np.ndarray,
    random_state: np.random.RandomState,
    *,
    n_components: int,
    covariance_type: str,
    init_params: str,
    reg_covar: float,
    eps: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One restart's drawn ``(weights, means, covariances)``, centred, float64, restart axis 1.

    ``X`` as given (what scikit-learn's draws see), ``Xc`` centred by ``shift``.
    """
    resp = initial_resp(X, random_state, n_components, init_params)
    stats = stats_from_resp(Xc, resp, n_components, covariance_type, shift, eps)
    nk, means, covariances = estimate_parameters(stats, covariance_type, reg_covar, eps, np)
    return nk / X.shape[0], means, covariances


def stats_from_resp(
    X: np.ndarray, resp: np.ndarray, n_components: int, cov_type: str, shift: Any, eps: float
) -> Stats:
    """Sufficient statistics (float64, one restart) of given responsibilities.

    ``resp`` is dense (N, K), or labels (N,) of a one-hot assignment with -1 for "no component".
    ``X`` is centred by ``shift``; ``eps`` is the M-step's regulariser of ``nk``.
    """
    n_samples, n_features = X.shape
    if resp.ndim == 1:
        rows = np.flatnonzero(resp >= 0)
        R = sparse.csr_matrix(
            (np.ones(len(rows), X.dtype), (resp[rows], rows)), shape=(n_components, n_samples)
        )
    else:
        R = resp.T
    nk = np.asarray(R.sum(axis=1), dtype=np.float64).reshape(n_components)
    # scikit-learn computes these products in the data's dtype, then adds eps in that dtype
    nk = nk.astype(X.dtype).astype(np.float64)
    # moments in float64: sxx / nk - mean^2 cancels (scikit-learn subtracts each component's
    # mean first, so its float32 products do not lose a tight cluster far from the data mean)
    X = X.astype(np.float64, copy=False)
    if sparse.issparse(R):
        R = R.astype(np.float64)
    sx = np.asarray(R @ X, dtype=np.float64)
    if cov_type == "full":
        dense = R.toarray() if sparse.issparse(R) else R
        sxx = np.stack([(X * dense[k][:, None]).T @ X for k in range(n_components)]).astype(
            np.float64
        )
    elif cov_type == "tied":
        # scikit-learn's tied estimate uses X^T X over *all* samples, also when the initial
        # responsibilities leave rows empty (k-means++, random_from_data). That estimate is not
        # translation invariant; this is it, written in the centred coordinates used here.
        shift = np.asarray(shift, dtype=np.float64)
        outside = n_samples - (nk.sum() + eps * n_components)
        total = sx.sum(axis=0)
        sxx = (
            (X.T @ X).astype(np.float64)
            + outside * np.outer(shift, shift)
            - np.outer(total, shift)
            - np.outer(shift, total)
        )
    elif cov_type == "diag":
        sxx = np.asarray(R @ (X * X), dtype=np.float64)
    else:
        sxx = np.asarray(R @ np.einsum("ij,ij->i", X, X), dtype=np.float64).reshape(n_components)
    expand = (lambda a: a) if cov_type == "tied" else (lambda a: a[None])
    return Stats(np.zeros(1), nk[None], sx[None], expand(sxx), n_samples)
