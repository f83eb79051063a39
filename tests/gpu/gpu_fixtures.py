"""Data and parameters shared by the GPU engine tests (one GPU and several)."""

from __future__ import annotations

import numpy as np

from gmm_core._gaussian import Params, cholesky_precisions


def make_data(n: int, d: int, k: int, dtype, seed: int = 0, spread: float = 6.0) -> np.ndarray:
    """``k`` Gaussian blobs (centres ~ N(0, spread^2)) in ``d`` dimensions, offset by +20."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(k, d))
    labels = rng.integers(0, k, n)
    X = centers[labels] + rng.normal(scale=rng.uniform(0.5, 2.0, size=d), size=(n, d))
    return (X + 20.0).astype(dtype)


def random_params(X: np.ndarray, cov: str, k: int, n_restarts: int, seed: int = 1) -> Params:
    """Plausible parameters of ``n_restarts`` restarts in centred coordinates (float64)."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    Xc = X.astype(np.float64) - X.mean(0)
    weights = rng.dirichlet(np.ones(k) * 5, size=n_restarts)
    means = Xc[rng.integers(0, n, size=(n_restarts, k))]
    var = Xc.var(0)
    if cov == "full":
        a = rng.normal(size=(n_restarts, k, d, d)) * 0.3
        covs = a @ np.swapaxes(a, -1, -2) + np.diag(var)
    elif cov == "tied":
        a = rng.normal(size=(n_restarts, d, d)) * 0.3
        covs = a @ np.swapaxes(a, -1, -2) + np.diag(var)
    elif cov == "diag":
        covs = var * rng.uniform(0.3, 2.0, size=(n_restarts, k, d))
    else:
        covs = var.mean() * rng.uniform(0.3, 2.0, size=(n_restarts, k))
    return Params(weights, means, covs, cholesky_precisions(covs, cov, np))


def init_kwargs(params: Params, r: int, shift: np.ndarray) -> dict:
    """``GaussianMixture`` initial-parameter keywords of restart ``r`` of centred diag,
    spherical or full ``params`` (means moved back by ``shift``)."""
    one = params.take(r)
    pc = one.precisions_cholesky[0]
    full = pc.ndim == 3  # (K, D, D): precision = U U^T
    return dict(
        weights_init=one.weights[0],
        means_init=one.means[0] + shift,
        precisions_init=pc @ np.swapaxes(pc, -1, -2) if full else pc**2,
    )


def collapsing_fit() -> tuple[np.ndarray, dict]:
    """Three point masses at -1, 0, 1 and an initialisation on them: with ``reg_covar=0`` the
    middle component (at the data mean) gets variance 0, an ill-defined covariance."""
    X = np.repeat(np.array([[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0]]), 1000, axis=0)
    kw = dict(
        n_components=3,
        covariance_type="diag",
        means_init=[[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0]],
        precisions_init=np.full((3, 2), 1e6),
        max_iter=50,
    )
    return X, kw


def scikit_learn_start(X: np.ndarray, k: int, cov: str) -> dict:
    """``*_init`` keywords of scikit-learn's k-means initialisation of ``X`` (a ``max_iter=0``
    fit of the NumPy backend): the GPU engines draw their own, so fits compared across engines
    start from these."""
    import warnings

    from gmm_core import GaussianMixture

    start = GaussianMixture(k, covariance_type=cov, random_state=0, max_iter=0, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start.fit(X)
    return dict(
        weights_init=start.weights_, means_init=start.means_, precisions_init=start.precisions_
    )


# relative tolerance of float64 statistics per data dtype (float32 work accumulated in float64)
RTOL = {np.float32: 2e-5, np.float64: 1e-10}


def numpy_stats(X, shift, cov, params):
    """Sufficient statistics of one pass from the NumPy engine (float64): the reference."""
    from gmm_core._numpy_engine import NumpyEngine

    np_engine = NumpyEngine()
    n_restarts = params.weights.shape[0]
    return np_engine.accumulate(np_engine.prepare(X, shift, cov), params, np.ones(n_restarts, bool))


def assert_stats_close(got, want, rtol, scales=None):
    """Every statistic within ``rtol`` of the reference, relative to its largest entry (or to
    ``scales[name]`` where given: a sum that cancels to ~0 is compared with its terms' size)."""
    import cupy

    for name in ("loglik", "nk", "sx", "sxx"):
        g = cupy.asnumpy(getattr(got, name))
        w = cupy.asnumpy(getattr(want, name))
        assert g.shape == w.shape, name
        scale = (scales or {}).get(name, np.abs(w).max() + 1e-300)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale, err_msg=name)
    assert got.n_samples == want.n_samples
