"""Initialisation on the host, exactly as scikit-learn draws it (the NumPy and Dask backends).

The GPU engines draw theirs on the device (:mod:`gmm_core._init`); both end in
:func:`gmm_core._init.with_user_init`, which puts the user's ``*_init`` arrays in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse

from ._gaussian import Stats, cholesky_precisions, estimate_parameters


def initial_resp(
    X: np.ndarray,
    random_state: np.random.RandomState,
    n_components: int,
    init_params: str,
    sample_weight: np.ndarray | None = None,
) -> Any:
    """Initial responsibilities: a dense (N, K) array, or labels (N,) for one-hot inits.

    With ``sample_weight``, k-means and k-means++ weigh the rows as scikit-learn's ``KMeans``
    does, and ``random_from_data`` draws rows with probability proportional to their weight.
    """
    n_samples = X.shape[0]
    k = n_components
    if init_params == "kmeans":
        from sklearn.cluster import KMeans

        kmeans = KMeans(n_clusters=k, n_init=1, random_state=random_state)
        return kmeans.fit(X, sample_weight=sample_weight).labels_
    if init_params == "random":
        resp = random_state.uniform(size=(n_samples, k)).astype(X.dtype)
        resp /= resp.sum(axis=1)[:, np.newaxis]
        return resp
    if init_params == "random_from_data":
        # equal weights draw as no weights do (choice with p= takes another path of the stream)
        p = None
        if sample_weight is not None and not (sample_weight == sample_weight[0]).all():
            p = sample_weight / sample_weight.sum()
        indices = random_state.choice(n_samples, size=k, replace=False, p=p)
    else:  # k-means++
        from sklearn.cluster import kmeans_plusplus

        _, indices = kmeans_plusplus(X, k, random_state=random_state, sample_weight=sample_weight)
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
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One restart's drawn ``(weights, means, covariances)``, centred, float64, restart axis 1.

    ``X`` as given (what scikit-learn's draws see), ``Xc`` centred by ``shift``;
    ``sample_weight`` (N,) float64 or None.
    """
    resp = initial_resp(X, random_state, n_components, init_params, sample_weight)
    stats = stats_from_resp(Xc, resp, n_components, covariance_type, shift, eps, sample_weight)
    nk, means, covariances = estimate_parameters(stats, covariance_type, reg_covar, eps, np, shift)
    return nk / stats.weight_sum, means, covariances


def host_restarts(
    model: Any,
    X: np.ndarray,
    Xc: np.ndarray,
    shift: np.ndarray,
    random_state: np.random.RandomState,
    eps: float,
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``model.n_init`` restarts of :func:`host_initial_parameters`, on the restart axis.

    Drawn one after the other from ``random_state``; ``model`` gives the estimator's
    ``n_components``, ``covariance_type``, ``init_params`` and ``reg_covar`` (and
    ``precisions_init``, if it has one).

    Raises
    ------
    ValueError
        At the first restart whose drawn covariances are ill-defined (unless precisions are
        given), before the next is drawn: scikit-learn's fit raises there, so a
        ``RandomState`` shared with later fits (``GaussianMixtureSelect``'s grid) is left
        where a loop of fits leaves it.
    """
    restarts = []
    for _ in range(model.n_init):
        drawn = host_initial_parameters(
            X,
            Xc,
            shift,
            random_state,
            n_components=model.n_components,
            covariance_type=model.covariance_type,
            init_params=model.init_params,
            reg_covar=model.reg_covar,
            eps=eps,
            sample_weight=sample_weight,
        )
        if getattr(model, "precisions_init", None) is None:
            cholesky_precisions(drawn[2], model.covariance_type, np)
        restarts.append(drawn)
    weights, means, covariances = (np.concatenate(a) for a in zip(*restarts, strict=True))
    return weights, means, covariances


def stats_from_resp(
    X: np.ndarray,
    resp: np.ndarray,
    n_components: int,
    cov_type: str,
    shift: Any,
    eps: float,
    sample_weight: np.ndarray | None = None,
) -> Stats:
    """Sufficient statistics (float64, one restart) of given responsibilities.

    ``resp`` is dense (N, K), or labels (N,) of a one-hot assignment with -1 for "no component".
    ``X`` is centred by ``shift``; ``eps`` is the M-step's regulariser of ``nk``;
    ``sample_weight`` (N,) multiplies each row's responsibilities (None: ones), except for
    labels that leave rows out (k-means++, random_from_data: one chosen row per component),
    where a chosen row counts once, as one copy of it among the repeated rows would (and as
    the device path counts it).
    """
    n_samples, n_features = X.shape
    if resp.ndim == 1:
        rows = np.flatnonzero(resp >= 0)
        chosen = len(rows) < n_samples  # one row per component, not a labelling of every row
        values = (
            np.ones(len(rows), X.dtype) if sample_weight is None or chosen else sample_weight[rows]
        ).astype(X.dtype)
        R = sparse.csr_matrix((values, (resp[rows], rows)), shape=(n_components, n_samples))
    else:
        R = resp.T if sample_weight is None else resp.T * sample_weight.astype(resp.dtype)
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
        # translation invariant; this is it, written in the centred coordinates used here:
        # with x = x_c + s, raw means m = m_c + s and m_c = (sx - eps s) / nk (the M-step's),
        # X^T W X - sum nk m m^T = X_c^T W X_c - sum nk m_c m_c^T + d s^T + s d^T + c s s^T,
        # d = sum w x_c - sum sx (sum w x_c is 0 only where the shift is the weighted mean),
        # c = sum w - sum nk_raw + eps K.
        shift = np.asarray(shift, dtype=np.float64)
        weight_sum = n_samples if sample_weight is None else float(sample_weight.sum())
        outside = weight_sum - nk.sum() + eps * n_components
        Xw = X if sample_weight is None else X * sample_weight[:, None]
        d = Xw.sum(axis=0) - sx.sum(axis=0)
        sxx = (
            (X.T @ Xw).astype(np.float64)
            + outside * np.outer(shift, shift)
            + np.outer(d, shift)
            + np.outer(shift, d)
        )
    elif cov_type == "diag":
        sxx = np.asarray(R @ (X * X), dtype=np.float64)
    else:
        sxx = np.asarray(R @ np.einsum("ij,ij->i", X, X), dtype=np.float64).reshape(n_components)
    expand = (lambda a: a) if cov_type == "tied" else (lambda a: a[None])
    total_weight = None if sample_weight is None else float(sample_weight.sum())
    return Stats(np.zeros(1), nk[None], sx[None], expand(sxx), n_samples, total_weight)
