"""Sample weights and ``partial_fit`` on the GPU engines (needs a usable CUDA GPU).

References: the NumPy engine's weighted pass (float64), fits on repeated rows (integer weights),
the unweighted fit (weights of one), the batch fit of a stream (stepwise EM).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from gpu_fixtures import RTOL, assert_stats_close, make_data, random_params, scikit_learn_start
from sklearn.exceptions import ConvergenceWarning

from gmm_core import GaussianMixture
from gmm_core._engine import cupy_unavailable_reason

_REASON = cupy_unavailable_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_REASON is not None, reason=f"needs a usable CUDA GPU: {_REASON}"),
]

# (covariance, features, components, dtype, restarts, CupyEngine keywords): one case per pass
# strategy the weights go through
PASS_CASES = {
    "diag_tc": ("diag", 8, 20, np.float32, 3, {}),
    "diag_simt": ("diag", 5, 6, np.float32, 2, {"tensor_cores": False}),
    "diag_f64": ("diag", 3, 4, np.float64, 1, {}),
    "spherical": ("spherical", 6, 5, np.float32, 2, {}),
    "full_tc": ("full", 6, 5, np.float32, 2, {}),
    "full_gemm_f64": ("full", 4, 3, np.float64, 1, {}),
    "tied_gemm": ("tied", 4, 3, np.float32, 2, {}),
    "diag_streamed": ("diag", 8, 20, np.float32, 2, {"memory_budget_bytes": 600_000}),
}


def _weights(n: int, seed: int = 3) -> np.ndarray:
    """Uneven weights in [0, 3), a tenth of them exactly 0."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.0, 3.0, n)
    w[rng.random(n) < 0.1] = 0.0
    return w


@pytest.mark.parametrize("case", PASS_CASES, ids=list(PASS_CASES))
def test_weighted_pass_equals_the_numpy_weighted_pass(case):
    """Every strategy's weighted statistics and log-likelihood match NumPy's in float64."""
    import cupy

    from gmm_core._cupy import CupyEngine
    from gmm_core._numpy_engine import NumpyEngine

    cov, d, k, dtype, n_restarts, kw = PASS_CASES[case]
    X = make_data(20_000, d, k, dtype, seed=11)
    w = _weights(len(X))
    shift = X.mean(0, dtype=np.float64)
    params = random_params(X, cov, k, n_restarts)
    ref_engine = NumpyEngine()
    ref_data = ref_engine.prepare(X, shift, cov, sample_weight=w)
    want = ref_engine.accumulate(ref_data, params, np.ones(n_restarts, bool))
    engine = CupyEngine(**kw)
    data = engine.prepare(cupy.asarray(X), shift, cov, sample_weight=w)
    if "memory_budget_bytes" in kw:
        assert not data.resident and len(data.chunks) > 1
    got = engine.accumulate(data, params.map(cupy.asarray), cupy.ones(n_restarts, dtype=bool))
    assert got.total_weight == pytest.approx(float(w.sum()), rel=1e-6)
    assert_stats_close(got, want, RTOL[dtype])


# (covariance, features, components, dtype, rows): fits through the device loop (diag), the
# generic loop (full, tied) and a small problem the persistent kernel would serve unweighted
FIT_CASES = {
    "diag_f32": ("diag", 8, 6, np.float32, 30_000),
    "full_f32": ("full", 5, 4, np.float32, 30_000),
    "spherical_f64": ("spherical", 4, 3, np.float64, 20_000),
    "tied_f32": ("tied", 4, 3, np.float32, 20_000),
    "small_diag": ("diag", 2, 3, np.float32, 5_000),
}


def _quiet_fit(gm, X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return gm.fit(X, **kw)


@pytest.mark.parametrize("case", FIT_CASES, ids=list(FIT_CASES))
def test_integer_weights_equal_repeated_rows(case):
    """fit(X, w) with integer w = fit(np.repeat(X, w)) from the same start, to float32 level."""
    import cupy

    cov, d, k, dtype, n = FIT_CASES[case]
    X = make_data(n, d, k, dtype, seed=5)
    w = np.random.default_rng(6).integers(0, 4, n)
    start = scikit_learn_start(X, k, cov)
    # a fixed number of iterations: a tolerance near float32 noise would stop the two apart
    kw = dict(covariance_type=cov, backend="cupy", tol=0.0, max_iter=12, **start)
    weighted = _quiet_fit(GaussianMixture(k, **kw), cupy.asarray(X), sample_weight=w)
    repeated = _quiet_fit(GaussianMixture(k, **kw), cupy.asarray(np.repeat(X, w, axis=0)))
    assert weighted.n_iter_ == repeated.n_iter_ == 12
    assert weighted.lower_bound_ == pytest.approx(repeated.lower_bound_, rel=1e-5, abs=1e-5)
    scale = np.abs(X).max()
    np.testing.assert_allclose(weighted.means_, repeated.means_, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(weighted.weights_, repeated.weights_, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cov", ["diag", "full"])
def test_weights_of_one_give_the_unweighted_fit(cov):
    """Default (device k-means) init and EM: equal weights draw and fit as no weights do."""
    import cupy

    X = cupy.asarray(make_data(40_000, 8, 5, np.float32, seed=8))
    kw = dict(covariance_type=cov, backend="cupy", random_state=0)
    plain = _quiet_fit(GaussianMixture(5, **kw), X)
    ones = _quiet_fit(GaussianMixture(5, **kw), X, sample_weight=np.ones(len(X)))
    assert ones.n_iter_ == plain.n_iter_
    assert ones.lower_bound_ == pytest.approx(plain.lower_bound_, rel=1e-7)
    np.testing.assert_allclose(ones.means_, plain.means_, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random_from_data", "random"])
def test_device_init_draws_by_weight_and_is_deterministic(init_params):
    """Rows of weight 0 (far outliers here) are never drawn; the same seed, the same model."""
    import cupy

    X = make_data(30_000, 4, 3, np.float32, seed=9)
    outliers = np.full((300, 4), 1e3, dtype=np.float32)
    Xo = np.concatenate([X, outliers])
    w = np.concatenate([np.ones(len(X)), np.zeros(len(outliers))])
    w[: len(X) // 2] = 2.0  # uneven: the weighted draws, not the uniform ones
    kw = dict(covariance_type="diag", backend="cupy", random_state=3, init_params=init_params)
    init = _quiet_fit(GaussianMixture(3, max_iter=0, **kw), cupy.asarray(Xo), sample_weight=w)
    assert np.abs(init.means_).max() < 200, "a zero-weight outlier became a centre"
    a = _quiet_fit(GaussianMixture(3, **kw), cupy.asarray(Xo), sample_weight=w)
    b = _quiet_fit(GaussianMixture(3, **kw), cupy.asarray(Xo), sample_weight=w)
    np.testing.assert_array_equal(a.means_, b.means_)
    assert a.lower_bound_ == b.lower_bound_
    # the fit ignores the outliers: as good on the weighted rows as a fit without them
    clean = _quiet_fit(GaussianMixture(3, **kw), cupy.asarray(X), sample_weight=w[: len(X)])
    assert a.lower_bound_ == pytest.approx(clean.lower_bound_, rel=1e-3)


def test_multigpu_weighted_fit_equals_the_one_gpu_fit():
    """The multi-GPU engine (every visible GPU, one here) shards the weights with the rows."""
    import cupy

    X = make_data(40_000, 8, 4, np.float32, seed=12)
    w = _weights(len(X))
    start = scikit_learn_start(X, 4, "diag")
    kw = dict(covariance_type="diag", tol=1e-6, max_iter=20, **start)
    one = _quiet_fit(GaussianMixture(4, backend="cupy", **kw), cupy.asarray(X), sample_weight=w)
    many = _quiet_fit(GaussianMixture(4, backend="multigpu", **kw), X, sample_weight=w)
    assert many.backend_ == "multigpu"
    assert many.lower_bound_ == pytest.approx(one.lower_bound_, rel=1e-6)
    np.testing.assert_allclose(many.means_, one.means_, rtol=1e-4, atol=1e-4)


MEANS = np.array([[0.0, 0.0], [4.0, 1.0], [-2.0, 5.0]])
SCALES = np.array([1.0, 0.6, 0.8])
MIX = np.array([0.5, 0.3, 0.2])


def _stream(rng: np.random.Generator, n: int) -> np.ndarray:
    z = rng.choice(3, n, p=MIX)
    return (MEANS[z] + rng.standard_normal((n, 2)) * SCALES[z, None] + 100.0).astype(np.float32)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_partial_fit_on_cupy_approaches_the_batch_fit(covariance_type):
    """60 CuPy batches of 1000 rows: within 2e-3 nats/row of the batch fit (the bound of the
    NumPy test, tests/unit/gmm_core/test_online.py, which explains it), and every step as the
    NumPy engine's to float32 level."""
    import cupy

    rng = np.random.default_rng(1)
    batches = [_stream(rng, 1000) for _ in range(60)]
    test = _stream(rng, 40_000)
    kw = dict(n_components=3, covariance_type=covariance_type, random_state=0)
    online = GaussianMixture(backend="cupy", **kw)
    online.partial_fit(cupy.asarray(batches[0]))
    host = copy.deepcopy(online)  # the same start on both (the engines' inits differ)
    host.backend = "numpy"
    for batch in batches[1:]:
        online.partial_fit(cupy.asarray(batch))
        host.partial_fit(batch)
    assert online.backend_ == "cupy" and online.n_steps_ == 59
    np.testing.assert_allclose(online.means_, host.means_, rtol=1e-4, atol=1e-4)
    batch_fit = GaussianMixture(backend="numpy", **kw).fit(np.concatenate(batches))
    gap = batch_fit.score(test) - online.score(test)
    assert abs(gap) < 2e-3
