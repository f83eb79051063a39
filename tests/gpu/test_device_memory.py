"""Device memory of fit/predict/score_samples: the budget holds, the footprint stays near the
data's size, the pool is given back, streaming equals in memory (needs a usable CUDA GPU).

Every allocation from CuPy's memory pool is counted by a memory hook (``PeakMemoryHook``), so
the peaks below are what the calls allocate, whatever the process held before.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from gmm_core import GaussianMixture
from gmm_core._device import cupy_unavailable_reason

_REASON = cupy_unavailable_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_REASON is not None, reason=f"needs a usable CUDA GPU: {_REASON}"),
]

BUDGET = 4 << 20  # the data below are 12.8 MB: about three budgets


def _data(n=400_000, d=8, k=6, offset=0.0):
    X, _ = make_blobs(n, n_features=d, centers=k, random_state=0)
    return (X + offset).astype(np.float32)


def _peak(fn):
    from gmm_core._cupy.memory import PeakMemoryHook

    hook = PeakMemoryHook()
    with hook:
        out = fn()
    return hook.peak, out


def _inits(gm):
    return dict(weights_init=gm.weights_, means_init=gm.means_, precisions_init=gm.precisions_)


@pytest.mark.parametrize(
    ("cov", "n_init", "offset"),
    [("diag", 1, 0.0), ("diag", 8, 0.0), ("full", 1, 0.0), ("spherical", 2, 50.0), ("tied", 1, 0)],
)
def test_the_memory_budget_holds_for_fit_predict_and_score_samples(
    cov, n_init, offset, monkeypatch
):
    X = _data(offset=offset)
    monkeypatch.setenv("GMM_CORE_GPU_MEMORY_BUDGET", str(BUDGET))
    kw = dict(covariance_type=cov, n_init=n_init, random_state=0, max_iter=15, backend="cupy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peak, gm = _peak(lambda: GaussianMixture(6, **kw).fit(X))
    assert peak <= 1.1 * BUDGET, f"fit: {peak} bytes for a budget of {BUDGET}"
    for method in ("predict", "score_samples"):
        peak, out = _peak(lambda method=method: getattr(gm, method)(X))
        assert isinstance(out, np.ndarray) and len(out) == len(X)
        assert peak <= 1.1 * BUDGET, f"{method}: {peak} bytes for a budget of {BUDGET}"


@pytest.mark.parametrize("cov", ["diag", "full", "tied"])
def test_streaming_equals_in_memory(cov, monkeypatch):
    X = _data(offset=20.0)
    start = GaussianMixture(6, covariance_type=cov, random_state=0, backend="cupy").fit(X)
    kw = dict(covariance_type=cov, tol=0.0, max_iter=10, backend="cupy", **_inits(start))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resident = GaussianMixture(6, **kw).fit(X)
        monkeypatch.setenv("GMM_CORE_GPU_MEMORY_BUDGET", str(BUDGET))
        streamed = GaussianMixture(6, **kw).fit(X)
    assert streamed.lower_bound_ == pytest.approx(resident.lower_bound_, abs=1e-5)
    np.testing.assert_allclose(streamed.means_, resident.means_, rtol=1e-4, atol=1e-4)
    # per-sample scores agree to float32 accuracy: the two fits centre by shifts summed in
    # different orders, and a score of -27 nats carries ~1e-5 relative float32 rounding
    np.testing.assert_allclose(
        streamed.score_samples(X), resident.score_samples(X), rtol=3e-5, atol=1e-4
    )
    np.testing.assert_array_equal(streamed.predict(X[:1000]), resident.predict(X[:1000]))


@pytest.mark.parametrize(
    ("source", "cov", "centred"),
    [("numpy", "diag", False), ("cupy", "diag", False), ("numpy", "full", False),
     ("cupy", "diag", True)],
)  # fmt: skip
def test_in_memory_peak_is_near_the_data_size_and_the_pool_is_given_back(source, cov, centred):
    """A default fit (moments, centring decision, k-means init, EM) allocates at most 1.25x the
    data: a NumPy X's upload (centred in place) or a CuPy X's centred copy, plus a quarter.
    A CuPy X near the origin is used as it is: then the fit allocates at most a quarter."""
    import cupy

    X = _data(n=2_000_000, d=16, k=8)  # 128 MB, mean far from the origin in some features
    if centred:
        X -= X.mean(axis=0)
    X = cupy.asarray(X) if source == "cupy" else X
    # the fit's own copy: a NumPy X's upload, a CuPy X's centred copy (none when near the origin)
    own = 0 if (centred and source == "cupy") else X.nbytes

    def fit():
        return GaussianMixture(8, covariance_type=cov, backend="cupy", random_state=0).fit(X)

    fit()  # compile
    pool = cupy.get_default_memory_pool()
    before = pool.total_bytes()
    peak, gm = _peak(fit)
    assert 0 < gm.device_peak_bytes_ <= peak
    assert peak <= own + 0.25 * X.nbytes + (4 << 20), f"{peak / X.nbytes:.2f} x the data"
    assert pool.total_bytes() <= before  # nothing is left cached by the fit
