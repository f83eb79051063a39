"""``GaussianMixtureSelect`` on the CuPy backend: candidates side by side, as separate fits.

Every candidate of a batched sweep must follow the iterations of ``GaussianMixture(K, ...)``
with the same seed on the same backend (the same device initialisation, the same passes: the
padding components of weight 0 take no responsibility in any kernel), for every covariance
type and both kernel widths (K <= 16 and 17..32 batches); a collapsing candidate fails alone;
CuPy input is not copied to the host.
"""

from __future__ import annotations

import tracemalloc
import warnings
from typing import Any

import numpy as np
import pytest
from gpu_fixtures import make_data
from sklearn.exceptions import ConvergenceWarning

from gmm_core import GaussianMixture, GaussianMixtureSelect
from gmm_core._engine import cupy_unavailable_reason

_REASON = cupy_unavailable_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_REASON is not None, reason=f"needs a usable CUDA GPU: {_REASON}"),
]

KW: dict[str, Any] = {"tol": 0.0, "max_iter": 8, "n_init": 2, "random_state": 0}


def _separate(X, k: int, cov: str) -> GaussianMixture:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianMixture(k, covariance_type=cov, backend="cupy", **KW).fit(X)


@pytest.mark.parametrize(
    ("cov", "ks", "d"),
    [
        ("diag", (1, 3, 16, 17, 30), 8),  # two batches: K <= 16 and 17..32 (tensor-core pass)
        ("spherical", (2, 5, 9), 6),
        ("full", (1, 4, 7), 5),
        ("tied", (2, 6), 4),
        # over 32 features: the GEMM path (K = 2 padded to 5; K = 20), and K = 40 with its 2
        # restarts (80 components) the large-K pass, also for its k-means init's Lloyd passes
        # (on the H200, 2026-12-04, those broke the K = 40 fit and the sweep's candidate:
        # tests/gpu/test_gpu_large_k.py, test_a_lloyd_pass_through_the_large_k_pass_...)
        ("diag", (2, 5, 20, 40), 40),
    ],
)
def test_batched_candidates_follow_their_separate_fits(cov, ks, d):
    import cupy

    X = cupy.asarray(make_data(60_000, d, 12, np.float32, seed=3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sel = GaussianMixtureSelect(ks, covariance_type=cov, backend="cupy", **KW).fit(X)
    assert sel.batched_ and sel.backend_ == "cupy"
    table = sel.results_
    for k in ks:
        alone = _separate(X, k, cov)
        row = int(np.flatnonzero(table["n_components"] == k)[0])
        assert not table["failed"][row], table["reason"][row]
        assert int(table["n_iter"][row]) == alone.n_iter_
        for column, want in (("lower_bound", alone.lower_bound_), ("train_score", alone.score(X))):
            got = float(table[column][row])
            assert abs(got - want) <= 2e-5 * (1 + abs(want)), (k, column, got, want)
        if row == sel.best_index_:
            best = sel.best_estimator_
            np.testing.assert_allclose(best.weights_, alone.weights_, rtol=1e-3, atol=1e-5)
            np.testing.assert_allclose(best.means_, alone.means_, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("cov", ["diag", "full"])
def test_weighted_candidates_follow_their_separate_weighted_fits(cov):
    """sample_weight through the sweep on the device: every candidate is its own weighted
    GaussianMixture fit (weighted device init and passes), BIC counting sum(w)."""
    import cupy

    X = cupy.asarray(make_data(30_000, 5, 6, np.float32, seed=4))
    w = np.random.default_rng(0).integers(0, 4, X.shape[0]).astype(np.float64)
    ks = (1, 4, 17)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sel = GaussianMixtureSelect(ks, covariance_type=cov, backend="cupy", **KW)
        sel.fit(X, sample_weight=w)
    assert sel.batched_ and sel.backend_ == "cupy"
    for row, k in enumerate(ks):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            alone = GaussianMixture(k, covariance_type=cov, backend="cupy", **KW)
            alone.fit(X, sample_weight=w)
        want = float(alone.lower_bound_)
        got = float(sel.results_["lower_bound"][row])
        assert abs(got - want) <= 2e-5 * (1 + abs(want)), (k, got, want)
        score = float(np.average(cupy.asnumpy(alone.score_samples(X)), weights=w))
        bic = -2 * score * w.sum() + alone._n_parameters() * np.log(w.sum())
        assert sel.results_["bic"][row] == pytest.approx(bic, rel=1e-5)


def test_a_collapsing_candidate_fails_alone():
    import cupy

    rng = np.random.default_rng(0)
    # three tight clusters of 400 distinct points each: K = 2, 3 fit, K = 8 ... collapses
    centres = np.array([[-5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])
    X = np.repeat(centres, 400, axis=0) + rng.normal(scale=0.5, size=(1200, 2))
    X[:3] = X[3]  # duplicated rows: a component can sit on them alone
    X[600:640] = X[640]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sel = GaussianMixtureSelect(
            (2, 3, 40),
            covariance_type="full",
            backend="cupy",
            reg_covar=0.0,
            random_state=0,
            max_iter=50,
        ).fit(cupy.asarray(X.astype(np.float32)))
    table = sel.results_
    ok = ~table["failed"]
    assert ok[:2].all(), table["reason"]
    assert table["failed"][2] and "covariance" in table["reason"][2]
    assert sel.best_params_["n_components"] == 3


def test_selection_recovers_the_true_k_on_the_device():
    import cupy

    X = cupy.asarray(make_data(40_000, 4, 5, np.float32, seed=5, spread=10.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sel = GaussianMixtureSelect(
            range(1, 9), covariance_type="diag", backend="cupy", random_state=0, n_init=3
        ).fit(X)
    assert sel.best_params_["n_components"] == 5, sel.results_["bic"]


def test_selection_does_not_copy_a_cupy_array_to_the_host():
    import cupy

    X = cupy.asarray(make_data(1_000_000, 8, 6, np.float32, seed=7))  # 32 MB
    kw = {"covariance_type": "diag", "backend": "cupy", "random_state": 0, "max_iter": 5}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        GaussianMixtureSelect((2, 6), **kw).fit(X)  # compiles
        tracemalloc.start(16)
        try:
            GaussianMixtureSelect((2, 6), **kw).fit(X)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < X.nbytes / 16, f"{peak} bytes on the host for {X.nbytes} bytes of data"
