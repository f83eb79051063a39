"""Initialisation on the device (``gmm_core._init`` on CuPy) against the same code on NumPy and
against plain references; data stay on the device (needs a usable CUDA GPU)."""

from __future__ import annotations

import math
import tracemalloc
import warnings

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from gmm_core import GaussianMixture, _init, _kmeans, _kmeans_seeding
from gmm_core._device import cupy_unavailable_reason

_REASON = cupy_unavailable_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_REASON is not None, reason=f"needs a usable CUDA GPU: {_REASON}"),
]

COV_TYPES = ("full", "tied", "diag", "spherical")
INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")


def _blobs(n, d, centers, seed=0, dtype=np.float32, offset=0.0):
    X, _ = make_blobs(n, n_features=d, centers=centers, random_state=seed)
    return (X + offset).astype(dtype)


def _engines():
    from gmm_core._cupy_engine import CupyEngine
    from gmm_core._numpy_engine import NumpyEngine

    return NumpyEngine(), CupyEngine()


def _draws(n, k, n_init, seed):
    rs = np.random.RandomState(seed)
    first = rs.randint(n, size=n_init)
    u = rs.uniform(size=(n_init, k - 1, 2 + int(math.log(k))))
    return first, u


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kmeans_plusplus_on_the_device_equals_numpy(dtype):
    import cupy

    X = _blobs(5000, 5, 6, seed=1, dtype=dtype)
    np_engine, cp_engine = _engines()
    k, n_init = 9, 3
    first, u = _draws(len(X), k, n_init, seed=2)
    want_c, want_ids = _kmeans_seeding.kmeans_plusplus(
        np_engine, np_engine.prepare(X, "auto", "diag"), k, first, u
    )
    data = cp_engine.prepare(X, "auto", "diag")
    got_c, got_ids = _kmeans_seeding.kmeans_plusplus(cp_engine, data, k, first, u)
    np.testing.assert_array_equal(cupy.asnumpy(got_ids), want_ids)
    # the device may keep X uncentred (small offset): compare in data coordinates
    np.testing.assert_allclose(
        cupy.asnumpy(got_c) + data.shift, want_c + X.mean(0, dtype=np.float64), rtol=1e-6
    )


@pytest.mark.parametrize("n", [1, 255, 2048, 2049, 5000, 70_001])
def test_candidate_sampling_kernels_equal_searchsorted_on_the_cumulative_sum(n):
    """kpp_block_sums + kpp_sample (block sums, then rows) = np.searchsorted(np.cumsum(...)),
    also where a draw lands exactly on a row or block boundary: integer distances (with
    zeros) make every running sum exact, so both sides see the same boundaries."""
    import cupy

    np_engine, cp_engine = _engines()
    rng = np.random.default_rng(n)
    closest = rng.integers(0, 4, size=(3, n)).astype(np.float32)
    closest[1] = 1.0  # the cumulative sum is 1, 2, ..., n: block edges at multiples of 2048
    closest[2] = 0.0
    closest[2, n // 2] = 5.0  # one row holds the whole potential
    edges = [0.0, 0.5, 2048 / n, 2048.5 / n, 4096 / n, (n - 1) / n, 1 - 1e-16]
    u = np.stack([rng.uniform(size=len(edges)), np.clip(edges, 0, np.nextafter(1, 0)), edges])
    want = _kmeans_seeding._sample(np_engine, closest, u, None)
    kernels = _kmeans_seeding._kernels(cp_engine, np.dtype(np.float32))
    got = _kmeans_seeding._sample(cp_engine, cupy.asarray(closest), cupy.asarray(u), kernels)
    np.testing.assert_array_equal(cupy.asnumpy(got), want)
    assert (want[: len(edges)] >= 0).all() and (want < n).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [2, 16])
def test_device_lloyd_matches_a_numpy_lloyd_from_the_same_seeds(dtype, d):
    """Lloyd as EM passes of a hard mixture (tensor-core pass for float32 with 16 features,
    the SIMT pass otherwise) = argmin/mean Lloyd on the host, from the same seeds."""
    import cupy

    X = _blobs(20_000, d, 8, seed=3, dtype=dtype)
    _, cp_engine = _engines()
    data = cp_engine.prepare(X, "auto", "diag")
    first, u = _draws(len(X), 8, 2, seed=4)
    seeds, _ = _kmeans_seeding.kmeans_plusplus(cp_engine, data, 8, first, u)
    total = float(cupy.asnumpy(data.variance).sum())
    tol = _kmeans.KMEANS_TOL * total / d
    got, n_iter = _kmeans.lloyd(
        cp_engine, data, seeds, tol=tol, precision=_kmeans.HARD_PRECISION / total
    )
    got, n_iter = cupy.asnumpy(got), cupy.asnumpy(n_iter)
    Xc = X.astype(np.float64) - data.shift
    for r in range(2):
        centres = cupy.asnumpy(seeds[r]).astype(np.float64)
        it = 0
        while it < 300:
            it += 1
            labels = ((Xc[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
            new = np.stack(
                [Xc[labels == j].mean(0) if (labels == j).any() else centres[j] for j in range(8)]
            )
            moved, centres = ((new - centres) ** 2).sum(), new
            if moved <= tol:
                break
        scale = np.abs(Xc).max()
        np.testing.assert_allclose(got[r], centres, rtol=0, atol=1e-5 * scale)
        assert abs(int(n_iter[r]) - it) <= (0 if dtype == np.float64 else 1)


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("init_params", INIT_METHODS)
def test_every_init_is_deterministic_for_a_seed_and_input_kind(cov, init_params):
    import cupy

    X = _blobs(6000, 4, 5, seed=5, offset=30.0)
    kw = dict(covariance_type=cov, init_params=init_params, n_init=3, random_state=11)
    fits = [GaussianMixture(5, backend="cupy", **kw).fit(data) for data in (X, X, cupy.asarray(X))]
    for other in fits[1:]:
        np.testing.assert_allclose(other.means_, fits[0].means_, rtol=1e-6)
        assert other.lower_bound_ == pytest.approx(fits[0].lower_bound_, rel=1e-7)
    np.testing.assert_array_equal(fits[1].means_, fits[0].means_)  # same input: bitwise
    assert fits[0].backend_ == "cupy"


def test_random_init_statistics_equal_the_dense_computation_on_the_device():
    import cupy

    X = _blobs(3000, 3, 3, seed=6, dtype=np.float64)
    _, cp_engine = _engines()
    data = cp_engine.prepare(X, "auto", "diag")
    got = _init._random_resp_stats(cp_engine, data, 4, 123, "diag")
    resp = cupy.random.RandomState(123).uniform(size=(len(X), 4))
    resp = cupy.asnumpy(resp / resp.sum(axis=1)[:, None])
    Xc = X - data.shift
    np.testing.assert_allclose(cupy.asnumpy(got.nk[0]), resp.sum(0), rtol=1e-12)
    np.testing.assert_allclose(cupy.asnumpy(got.sx[0]), resp.T @ Xc, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(cupy.asnumpy(got.sxx[0]), resp.T @ (Xc * Xc), rtol=1e-9)


def test_fit_does_not_copy_a_cupy_array_to_the_host():
    """No host allocation of the data's size during fit/predict/score_samples of CuPy input."""
    import cupy

    X = cupy.asarray(_blobs(1_000_000, 8, 6, seed=7))  # 32 MB
    GaussianMixture(6, covariance_type="diag", backend="cupy", random_state=0).fit(X)  # compile
    tracemalloc.start(16)
    try:
        gm = GaussianMixture(6, covariance_type="diag", backend="cupy", random_state=0).fit(X)
        gm.predict(X)
        gm.score_samples(X)
        _, peak = tracemalloc.get_traced_memory()
        biggest = tracemalloc.take_snapshot().statistics("traceback")[:2]
    finally:
        tracemalloc.stop()
    where = "\n".join(f"{s.size} bytes at\n" + "\n".join(s.traceback.format()) for s in biggest)
    assert peak < X.nbytes / 16, (
        f"{peak} bytes on the host for {X.nbytes} bytes of data; the largest allocations still "
        f"held:\n{where}"
    )


def test_device_kmeans_init_is_at_least_as_good_as_scikit_learns():
    X = _blobs(50_000, 6, 10, seed=8)
    ours, theirs = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for seed in range(5):
            gm = GaussianMixture(10, covariance_type="diag", backend="cupy", random_state=seed)
            gm.fit(X)
            sk = SkGaussianMixture(10, covariance_type="diag", random_state=seed, max_iter=0)
            sk.fit(X)
            cont = GaussianMixture(
                10,
                covariance_type="diag",
                backend="cupy",
                weights_init=sk.weights_,
                means_init=sk.means_,
                precisions_init=sk.precisions_,
            ).fit(X)
            ours.append((gm.lower_bounds_[0], gm.lower_bound_))
            theirs.append((cont.lower_bounds_[0], cont.lower_bound_))
    ours_m, theirs_m = np.median(ours, axis=0), np.median(theirs, axis=0)
    assert ours_m[0] >= theirs_m[0] - 1e-6
    assert ours_m[1] >= theirs_m[1] - 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "d"), [(1, 1), (1000, 3), (100_003, 17), (10, 300), (5000, 16)])
def test_column_stats_kernel_equals_numpy_and_is_deterministic(dtype, n, d):
    """The one-pass moments/finite-check kernel against float64 NumPy; same bits twice."""
    import cupy

    from gmm_core._cupy.checks import column_stats

    rng = np.random.default_rng(n + d)
    X = (rng.normal(size=(n, d)) * rng.uniform(0.1, 100, size=d) + rng.normal(size=d) * 50).astype(
        dtype
    )
    s1, s2, largest = column_stats(cupy.asarray(X))
    x64 = X.astype(np.float64)
    np.testing.assert_allclose(cupy.asnumpy(s1), x64.sum(axis=0), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(cupy.asnumpy(s2), (x64**2).sum(axis=0), rtol=1e-12)
    assert largest == np.abs(x64).max()
    t1, t2, _ = column_stats(cupy.asarray(X))
    assert (cupy.asnumpy(t1) == cupy.asnumpy(s1)).all() and (
        cupy.asnumpy(t2) == cupy.asnumpy(s2)
    ).all()
    for bad in (np.nan, np.inf, -np.inf):
        Y = X.copy()
        Y[n // 2, d // 2] = bad
        assert column_stats(cupy.asarray(Y))[2] == np.inf


@pytest.mark.parametrize("rows", [[0, 1, 2, 3, 4], [4, 0, 1, 3], [3, 4, 1, 2]])
def test_restart_rows_are_copied_on_the_device_as_indexing_does(rows):
    """The memcpy row copies of the inits (no gather kernel: the cold fit) against indexing."""
    import cupy

    rng = np.random.default_rng(len(rows))
    centres = cupy.asarray(rng.normal(size=(5, 6, 3)))
    iters = cupy.arange(5, dtype=cupy.int64)
    taken = _kmeans_seeding.take_restarts(cupy, centres, rows, 4)
    assert (taken == centres[cupy.asarray(rows), :4]).all()
    assert (_kmeans_seeding.take_restarts(cupy, iters, rows) == iters[cupy.asarray(rows)]).all()
    out, want = cupy.zeros_like(centres), cupy.zeros_like(centres)
    _kmeans_seeding.put_restarts(cupy, out, rows, taken)
    want[cupy.asarray(rows), :4] = centres[cupy.asarray(rows), :4]
    assert (out == want).all()


@pytest.mark.parametrize("cov", ["diag", "spherical", "full"])
@pytest.mark.parametrize("coarse_from", [1 << 20, 20_000], ids=["all-rows", "coarse-first"])
def test_candidates_of_several_k_initialised_together_on_the_device(monkeypatch, cov, coarse_from):
    """Model selection's shared init (k-means++ of restarts of K = 1..21 together, Lloyd padded
    per tile width, tensor-core and SIMT passes) against each candidate's init alone on the
    device, and the seeding's chosen rows against the NumPy reference."""
    import cupy

    monkeypatch.setattr(_init, "COARSE_MIN_ROWS", coarse_from)
    X = _blobs(60_000, 8, 24, seed=5)
    np_engine, cp_engine = _engines()
    data = cp_engine.prepare(X, "auto", cov)
    ks = (1, 2, 3, 8, 16, 17, 21, 5)
    draws = [_init.draw(np.random.RandomState(c), "kmeans", 2, data, k) for c, k in enumerate(ks)]
    sizes = np.repeat(ks, 2)
    flat = [d for ds in draws for d in ds]
    seeded = cupy.asnumpy(_kmeans_seeding.seed_all(cp_engine, data, sizes, flat))
    want = _kmeans_seeding.seed_all(np_engine, np_engine.prepare(X, "auto", cov), sizes, flat)
    # each restart's own centres (rows of X, centred in float32 by the device and in float64
    # by NumPy: equal to float32 rounding of X's values; another row is off by whole units);
    # zeros past them
    for r, k in enumerate(sizes):
        np.testing.assert_allclose(
            seeded[r, :k] + data.shift,
            want[r, :k] + X.mean(0, dtype=np.float64),
            rtol=1e-6,
            atol=1e-6 * float(np.abs(X).max()),
        )
    own = np.arange(seeded.shape[1]) < sizes[:, None]
    assert not seeded[~own].any() and not want[~own].any()
    eps = 10 * float(np.finfo(np.float32).eps)
    common = dict(covariance_type=cov, reg_covar=1e-6, eps=eps, shift=data.shift)
    together = _init.candidate_params(
        cp_engine, data, init_params="kmeans", sizes=ks, draws=draws, **common
    )
    for c, k in enumerate(ks):
        alone = _init.initial_params(
            cp_engine,
            data,
            init_params="kmeans",
            n_components=k,
            n_init=2,
            random_state=np.random.RandomState(c),
            user={},
            **common,
        ).map(cupy.asnumpy)
        weights, means, covariances = together[c]
        np.testing.assert_allclose(weights, alone.weights, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(means, alone.means, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(covariances, alone.covariances, rtol=1e-4, atol=1e-5)
