"""Device-side initialisation (``gmm_core._init``) checked on the host: the same array code runs
on NumPy here and on CuPy on a GPU (``tests/gpu/test_device_init.py``)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import gmm_core._fit as fitting
from gmm_core import GaussianMixture, _init, _kmeans, _kmeans_seeding
from gmm_core._numpy_engine import NumpyEngine

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")


class DeviceInitNumpyEngine(NumpyEngine):
    """The NumPy engine taking the device initialisation path (what the GPU engines do)."""

    device_init = True


@pytest.fixture
def device_init_engine(monkeypatch):
    monkeypatch.setattr(fitting, "get_engine", lambda backend: DeviceInitNumpyEngine())


def _blobs(n=6000, d=3, centers=5, seed=0, dtype=np.float64):
    X, _ = make_blobs(n, n_features=d, centers=centers, random_state=seed)
    return X.astype(dtype)


def _prepared(X, cov="diag"):
    engine = NumpyEngine()
    return engine, engine.prepare(X, "auto", cov)


def _reference_kmeans_plusplus(X, k, first, u):
    """scikit-learn's greedy k-means++ (``_kmeans_plusplus``), with the draws given."""
    centres = [X[first]]
    closest = ((X - X[first]) ** 2).sum(axis=1)
    ids = [first]
    for c in range(1, k):
        cum = np.cumsum(closest)
        cand = np.searchsorted(cum, u[c - 1] * cum[-1])
        cand = np.clip(cand, None, len(X) - 1)
        dist = ((X[None, :, :] - X[cand][:, None, :]) ** 2).sum(axis=2)
        dist = np.minimum(closest, dist)
        best = int(np.argmin(dist.sum(axis=1)))
        closest = dist[best]
        ids.append(int(cand[best]))
        centres.append(X[cand[best]])
    return np.array(centres), np.array(ids)


def _reference_lloyd(X, centres, tol, max_iter=300):
    """Plain Lloyd: nearest centre by argmin, new centre = mean, stop when moved <= tol."""
    centres = centres.copy()
    for it in range(1, max_iter + 1):
        d = ((X[:, None, :] - centres[None]) ** 2).sum(axis=2)
        labels = d.argmin(axis=1)
        new = centres.copy()
        for j in range(len(centres)):
            if (labels == j).any():
                new[j] = X[labels == j].mean(axis=0)
        moved = ((new - centres) ** 2).sum()
        centres = new
        if moved <= tol:
            return centres, it
    return centres, max_iter


def test_kmeans_plusplus_matches_scikit_learns_greedy_seeding_for_every_restart():
    X = _blobs()
    engine, data = _prepared(X)
    rs = np.random.RandomState(3)
    k, n_init = 7, 3
    trials = 2 + int(math.log(k))
    first = rs.randint(len(X), size=n_init)
    u = rs.uniform(size=(n_init, k - 1, trials))
    centres, ids = _kmeans_seeding.kmeans_plusplus(engine, data, k, first, u)
    for r in range(n_init):
        want_centres, want_ids = _reference_kmeans_plusplus(data.X, k, first[r], u[r])
        np.testing.assert_array_equal(ids[r], want_ids)
        np.testing.assert_allclose(centres[r], want_centres)


def test_lloyd_as_em_passes_matches_a_plain_lloyd_from_the_same_seeds():
    X = _blobs(n=4000, d=2, centers=6, seed=1)
    engine, data = _prepared(X)
    rs = np.random.RandomState(0)
    k = 6
    first = rs.randint(len(X), size=2)
    u = rs.uniform(size=(2, k - 1, 2 + int(math.log(k))))
    seeds, _ = _kmeans_seeding.kmeans_plusplus(engine, data, k, first, u)
    total = float(data.variance.sum())
    tol = _kmeans.KMEANS_TOL * total / X.shape[1]
    precision = _kmeans.HARD_PRECISION / total
    got, n_iter = _kmeans.lloyd(engine, data, seeds, tol=tol, precision=precision)
    for r in range(2):
        want, want_iter = _reference_lloyd(data.X, seeds[r].astype(np.float64), tol)
        np.testing.assert_allclose(got[r], want, rtol=0, atol=1e-9)
        assert n_iter[r] == want_iter


@pytest.mark.parametrize("cov", ["full", "tied", "diag", "spherical"])
def test_hard_assignment_pass_gives_scikit_learns_kmeans_label_statistics(cov):
    """The last k-means pass, with the fit's covariance type, = scikit-learn's GMM init from
    one-hot k-means labels."""
    from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

    X = _blobs(n=3000, d=3, centers=4, seed=2)
    engine, data = _prepared(X, cov)
    rs = np.random.RandomState(1)
    centres = data.X[rs.choice(len(X), 4, replace=False)][None]
    total = float(data.variance.sum())
    hard = _kmeans.hard_params(centres, cov, _kmeans.HARD_PRECISION / total, np)
    stats = engine.accumulate(data, hard, np.ones(1, bool))
    eps = 10 * np.finfo(np.float64).eps
    weights, means, covariances = _init._params_of(stats, cov, 1e-6, eps, np)
    labels = ((data.X[:, None, :] - centres[0][None]) ** 2).sum(axis=2).argmin(axis=1)
    resp = np.eye(4)[labels]
    nk, want_means, want_cov = _estimate_gaussian_parameters(data.X, resp, 1e-6, cov)
    np.testing.assert_allclose(weights[0], nk / len(X), rtol=1e-12)
    np.testing.assert_allclose(means[0], want_means, rtol=0, atol=1e-9)
    np.testing.assert_allclose(covariances[0], want_cov, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("cov", ["full", "tied", "diag", "spherical"])
def test_random_responsibilities_statistics_equal_the_dense_computation(cov):
    X = _blobs(n=2500, d=3, centers=3, seed=4)
    engine, data = _prepared(X, cov)
    got = _init._random_resp_stats(engine, data, 3, 11, cov)
    resp = np.random.RandomState(11).uniform(size=(len(X), 3))
    resp /= resp.sum(axis=1)[:, None]
    x = data.X
    np.testing.assert_allclose(got.nk[0], resp.sum(axis=0))
    np.testing.assert_allclose(got.sx[0], resp.T @ x, atol=1e-9)
    want = {
        "full": np.einsum("nk,ni,nj->kij", resp, x, x),
        "tied": x.T @ x,
        "diag": resp.T @ (x * x),
        "spherical": resp.T @ (x * x).sum(axis=1),
    }[cov]
    np.testing.assert_allclose(got.sxx if cov == "tied" else got.sxx[0], want, rtol=1e-10)


@pytest.mark.parametrize("cov", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize("init_params", INIT_METHODS)
def test_device_init_fit_is_deterministic_for_a_seed(device_init_engine, cov, init_params):
    X = _blobs(n=2000, d=2, centers=4, seed=5)
    fits = [
        GaussianMixture(
            4, covariance_type=cov, init_params=init_params, n_init=2, random_state=7
        ).fit(X)
        for _ in range(2)
    ]
    assert fits[0].backend_ == "numpy"
    np.testing.assert_array_equal(fits[0].means_, fits[1].means_)
    assert fits[0].lower_bound_ == fits[1].lower_bound_
    assert set(fits[0].fit_timings_) == {"validate", "transfer", "compile", "init", "em", "finish"}
    other = GaussianMixture(
        4, covariance_type=cov, init_params=init_params, n_init=2, random_state=8
    ).fit(X)
    if init_params != "kmeans":  # k-means from different seeds may well agree
        assert not np.array_equal(other.restart_lower_bounds_[0], fits[0].restart_lower_bounds_[0])


@pytest.mark.parametrize("coarse_from", [1 << 20, 2000], ids=["all-rows", "coarse-first"])
def test_device_kmeans_init_is_at_least_as_good_as_scikit_learns(
    device_init_engine, monkeypatch, coarse_from
):
    """Median over 5 seeds of the first and final lower bound: device k-means init vs KMeans
    (also when seeding and the first Lloyd iterations run on every 8th row)."""
    monkeypatch.setattr(_init, "COARSE_MIN_ROWS", coarse_from)
    X = _blobs(n=6000, d=4, centers=8, seed=6)
    ours, theirs = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for seed in range(5):
            a = GaussianMixture(8, covariance_type="diag", random_state=seed).fit(X)
            b = SkGaussianMixture(8, covariance_type="diag", random_state=seed, verbose=0)
            b.fit(X)
            first_b = SkGaussianMixture(
                8, covariance_type="diag", random_state=seed, max_iter=1
            ).fit(X)
            ours.append((a.lower_bounds_[0], a.lower_bound_))
            theirs.append((first_b.lower_bound_, b.lower_bound_))
    ours_m, theirs_m = np.median(ours, axis=0), np.median(theirs, axis=0)
    assert ours_m[0] >= theirs_m[0] - 1e-6
    assert ours_m[1] >= theirs_m[1] - 1e-6


def test_user_means_replace_the_drawn_ones(device_init_engine):
    X = _blobs(n=1500, d=2, centers=3, seed=8)
    means = np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 2.0]])
    gm = GaussianMixture(3, covariance_type="diag", means_init=means, max_iter=0).fit(X)
    np.testing.assert_allclose(gm.means_, means)


@pytest.mark.parametrize("path", ["host", "device"])
def test_values_whose_squares_overflow_the_dtype_are_refused(path, monkeypatch):
    """float32 data near 1e19 used to fit 'successfully' to infinite covariances."""
    if path == "device":
        monkeypatch.setattr(fitting, "get_engine", lambda backend: DeviceInitNumpyEngine())
    X = np.random.default_rng(0).normal(size=(400, 3)) * 1e19
    with pytest.raises(ValueError, match=r"float32.*overflow.*X.astype\(numpy.float64\)"):
        GaussianMixture(2, covariance_type="diag", backend="numpy").fit(X.astype(np.float32))
    gm = GaussianMixture(2, covariance_type="diag", backend="numpy", random_state=0).fit(X)
    assert np.isfinite(gm.covariances_).all() and np.isfinite(gm.lower_bound_)
    # float64 data too large for float64: the fix is rescaling, not a conversion to float64
    with pytest.raises(ValueError, match="float64.*overflow") as raised:
        GaussianMixture(2, covariance_type="diag", backend="numpy").fit(X * 1e141)
    assert "astype" not in str(raised.value) and "Rescale X" in str(raised.value)


def test_partial_fit_and_a_holdout_with_overflowing_values_are_refused_as_fit_does():
    """QA probe: partial_fit(X * 1e160) raised 'ill-defined covariance' with overflow warnings,
    and one holdout row at 1e200 made every candidate of a sweep 'fail' (criterion='holdout',
    naming reg_covar) or left its holdout column -inf (criterion='bic')."""
    from gmm_core import GaussianMixtureSelect

    X = np.random.default_rng(1).normal(size=(300, 2))
    gm = GaussianMixture(2, backend="numpy", random_state=0).fit(X)
    before = gm.means_.copy()
    with pytest.raises(ValueError, match="float64.*overflow.*Rescale X"):
        gm.partial_fit(X * 1e160)
    np.testing.assert_array_equal(gm.means_, before)
    holdout = X[:10].copy()
    holdout[0, 0] = 1e200
    for criterion in ("holdout", "bic"):
        selector = GaussianMixtureSelect(n_components=[1, 2], criterion=criterion, backend="numpy")
        with pytest.raises(ValueError, match="X_holdout has values up to 1e\\+200"):
            selector.fit(X, X_holdout=holdout)


def test_coarse_to_fine_lloyd_ends_at_a_fixed_point_of_all_rows(monkeypatch):
    X = _blobs(n=8000, d=3, centers=7, seed=9)
    engine, data = _prepared(X)
    monkeypatch.setattr(_init, "COARSE_MIN_ROWS", 1000)
    rs = np.random.RandomState(2)
    seeds, _ = _kmeans_seeding.kmeans_plusplus(
        engine, data, 7, rs.randint(len(X), size=1), rs.uniform(size=(1, 6, 3))
    )
    total = float(data.variance.sum())
    tol = _kmeans.KMEANS_TOL * total / 3
    got = _kmeans.lloyd_coarse_to_fine(
        engine, data, seeds, tol=tol, precision=_kmeans.HARD_PRECISION / total
    )
    after, n_iter = _reference_lloyd(data.X, got[0], tol, max_iter=1)
    assert ((after - got[0]) ** 2).sum() <= tol  # one more Lloyd step on all rows: no move


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_is_refused_on_the_device_path(device_init_engine, bad):
    """The device path skips the host scan of NumPy input: the device moments catch it."""
    X = _blobs(n=500, d=2, centers=2)
    X[7, 1] = bad
    with pytest.raises(ValueError, match="NaN or infinity"):
        GaussianMixture(2, covariance_type="diag").fit(X)


# ---------------------------------------------------------------------------------------------
# sample weights on the device path (the NumPy reference of the weighted seeding kernels)


def test_weighted_kmeans_plusplus_with_integer_weights_seeds_as_repeated_rows():
    """closest = w min |x - c|^2: the same candidates and centres as the rows repeated w times."""
    rng = np.random.default_rng(4)
    X = _blobs(800, d=3, centers=6)
    w = rng.integers(1, 4, len(X))
    engine = NumpyEngine()
    zero = np.zeros(3)
    weighted = engine.prepare(X, zero, "diag", sample_weight=w.astype(np.float64))
    repeated = engine.prepare(np.repeat(X, w, axis=0), zero, "diag")
    k, first = 6, np.array([17, 400])
    first_copy = np.concatenate([[0], np.cumsum(w)[:-1]])[first]
    u = rng.uniform(size=(2, k - 1, 2 + int(math.log(k))))
    centres_w, ids_w = _kmeans_seeding.kmeans_plusplus(engine, weighted, k, first, u)
    centres_r, ids_r = _kmeans_seeding.kmeans_plusplus(engine, repeated, k, first_copy, u)
    np.testing.assert_array_equal(centres_w, centres_r)
    original = np.searchsorted(np.cumsum(w), ids_r, side="right")
    np.testing.assert_array_equal(ids_w, original)


def test_device_path_with_integer_weights_fits_as_repeated_rows(device_init_engine):
    """Weighted seeding, Lloyd and EM passes of the device path (k-means init): the fit of the
    rows repeated w times (the draws differ, the k-means fixed point and the optimum do not)."""
    X = _blobs(3000, d=2, centers=3, seed=2)
    w = np.random.default_rng(5).integers(0, 4, len(X))
    kw = dict(covariance_type="diag", random_state=0, init_params="kmeans", tol=1e-8)
    weighted = GaussianMixture(3, **kw).fit(X, sample_weight=w)
    repeated = GaussianMixture(3, **kw).fit(np.repeat(X, w, axis=0))
    order_w, order_r = np.argsort(weighted.means_[:, 0]), np.argsort(repeated.means_[:, 0])
    np.testing.assert_allclose(weighted.means_[order_w], repeated.means_[order_r], rtol=1e-6)
    assert weighted.lower_bound_ == pytest.approx(repeated.lower_bound_, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# model selection: the initialisations of candidates of several K in shared passes

#: two tile widths (K <= 16 and 17..32), every count of k-means++ candidates per centre (2..5)
CANDIDATE_KS = (1, 2, 3, 8, 16, 17, 21, 5)


def _candidate_draws(data, init_params, ks, n_init, seed=0):
    return [
        _init.draw(np.random.RandomState(seed + c), init_params, n_init, data, k)
        for c, k in enumerate(ks)
    ]


def test_kmeans_plusplus_refuses_restarts_of_increasing_size():
    engine, data = _prepared(_blobs(n=200))
    with pytest.raises(ValueError, match="non-increasing"):
        _kmeans_seeding.kmeans_plusplus(engine, data, [2, 3], [0, 1], np.zeros((2, 2, 2)))


@pytest.mark.parametrize("scratch", [1e15, 3 * 4 * 2500], ids=["one-batch", "3-per-batch"])
def test_seeding_candidates_of_several_k_together_equals_seeding_each_alone(monkeypatch, scratch):
    """Restarts of K = 1..21 seeded together (grouped by candidates per centre, largest K first,
    in scratch-sized batches): every restart's centres are those it gets seeded alone, and the
    rows past its own K are zeros."""
    X = _blobs(n=2500, d=3, centers=6, seed=3)
    engine, data = _prepared(X)
    monkeypatch.setattr(NumpyEngine, "scratch_bytes", lambda self, data: scratch)
    draws = _candidate_draws(data, "kmeans", CANDIDATE_KS, n_init=2)
    sizes = np.repeat(CANDIDATE_KS, 2)
    together = _kmeans_seeding.seed_all(engine, data, sizes, [d for ds in draws for d in ds])
    assert together.shape == (len(sizes), max(CANDIDATE_KS), 3)
    for c, k in enumerate(CANDIDATE_KS):
        alone = _kmeans_seeding.seed_all(engine, data, k, draws[c])
        for i in range(2):
            np.testing.assert_array_equal(together[2 * c + i, :k], alone[i])
            assert not together[2 * c + i, k:].any()


@pytest.mark.parametrize("cov", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize(
    ("init_params", "coarse_from"),
    [
        ("kmeans", 1 << 20),
        ("kmeans", 1000),
        ("k-means++", 1000),
        ("random", 1 << 20),
        ("random_from_data", 1 << 20),
    ],
    ids=["kmeans", "kmeans-coarse-first", "k-means++", "random", "random_from_data"],
)
def test_candidates_initialised_together_get_what_each_gets_alone(
    monkeypatch, cov, init_params, coarse_from
):
    """``candidate_params`` (model selection's shared seeding and Lloyd passes, padded per tile
    width) against ``initial_params`` of each candidate alone with the same draws."""
    monkeypatch.setattr(_init, "COARSE_MIN_ROWS", coarse_from)
    X = _blobs(n=3000, d=3, centers=8, seed=4)
    engine, data = _prepared(X, cov)
    eps = 10 * np.finfo(np.float64).eps
    common = dict(covariance_type=cov, reg_covar=1e-6, eps=eps, shift=data.shift)
    draws = _candidate_draws(data, init_params, CANDIDATE_KS, n_init=2, seed=10)
    together = _init.candidate_params(
        engine, data, init_params=init_params, sizes=CANDIDATE_KS, draws=draws, **common
    )
    for c, k in enumerate(CANDIDATE_KS):
        alone = _init.initial_params(
            engine,
            data,
            init_params=init_params,
            n_components=k,
            n_init=2,
            random_state=np.random.RandomState(10 + c),
            user={},
            **common,
        )
        weights, means, covariances = together[c]
        assert means.shape == (2, k, 3)
        np.testing.assert_allclose(weights, alone.weights, rtol=1e-12)
        np.testing.assert_allclose(means, alone.means, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(covariances, alone.covariances, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["all-fit", "some-fail"])
def test_a_sweep_initialised_on_the_device_path_equals_separate_device_fits(monkeypatch, case):
    """``GaussianMixtureSelect`` on a device-init engine (the CuPy path, run by NumPy): every
    candidate, initialised in shared passes, follows the fit ``GaussianMixture(K)`` makes alone
    on that engine (lower bound, iterations); with reg_covar=0 on 40 distinct points (each 5
    times), the candidates whose initial covariances are ill-defined fail alone."""
    from gmm_core import GaussianMixtureSelect
    from gmm_core import selection as selection_module

    monkeypatch.setattr(fitting, "get_engine", lambda backend: DeviceInitNumpyEngine())
    monkeypatch.setattr(selection_module, "get_engine", lambda backend: DeviceInitNumpyEngine())
    ks = [1, 3, 6, 16, 17, 20]
    kw = dict(covariance_type="diag", n_init=2, tol=1e-6, max_iter=40)
    if case == "all-fit":
        X = _blobs(n=1500, d=2, centers=12, seed=1)
    else:
        X = np.repeat(np.random.default_rng(0).normal(size=(40, 2)), 5, axis=0)
        kw["reg_covar"] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sel = GaussianMixtureSelect(ks, random_state=3, **kw).fit(X)
        table = sel.results_
        for i, k in enumerate(ks):
            try:
                alone = GaussianMixture(k, random_state=3, **kw).fit(X)
            except ValueError as error:
                assert table["failed"][i], (k, error)
                assert table["reason"][i].startswith("initialisation"), table["reason"][i]
                continue
            assert not table["failed"][i], (k, table["reason"][i])
            assert table["n_iter"][i] == alone.n_iter_
            np.testing.assert_allclose(table["lower_bound"][i], alone.lower_bound_, rtol=1e-10)
    failed = set(table["n_components"][table["failed"]].tolist())
    assert failed == (set() if case == "all-fit" else {16, 17, 20})


@pytest.mark.parametrize("cov", ["tied", "diag"])
def test_numpy_engine_statistics_are_those_of_the_data_passed(cov):
    """The NumPy engine keeps its last statistics (stopped restarts keep theirs): a pass over a
    subsample of the same shape first (k-means' coarse stage) left the next pass over all rows
    the subsample's row count, so the initial weights came out 8x too large (found by the
    candidates' init test through the coarse stage)."""
    X = _blobs(n=4000, d=3, centers=4, seed=7)
    engine, data = _prepared(X, cov)
    coarse = engine.subsample(data, 8)
    params = _kmeans.hard_params(data.X[[0, 1, 2, 3]][None].repeat(2, axis=0), cov, 1.0, np)
    active = np.ones(2, dtype=bool)
    engine.accumulate(coarse, params, active)
    got = engine.accumulate(data, params, active)
    want = NumpyEngine().accumulate(data, params, active)
    assert got.n_samples == want.n_samples == 4000
    for name in ("loglik", "nk", "sx", "sxx"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))


def test_lloyd_drops_stopped_restarts_from_its_passes_and_ends_where_each_alone_ends():
    """Restarts of K = 1, 2 (padded) stop after a few iterations, K = 12 goes on: once at most
    LLOYD_COMPACT of the batch iterates, the passes carry only the rest (the GPU passes compute
    every restart they are given), and every restart ends at its own fixed point."""
    X = _blobs(n=3000, d=2, centers=12, seed=11)
    engine, data = _prepared(X)
    ks = np.array([12, 2, 1, 1])
    draws = _candidate_draws(data, "kmeans", ks, n_init=1)
    seeds = _kmeans_seeding.seed_all(engine, data, ks, [d[0] for d in draws])
    total = float(data.variance.sum())
    tol, precision = _kmeans.KMEANS_TOL * total / 2, _kmeans.HARD_PRECISION / total

    batches = []

    class Counting(NumpyEngine):
        def lloyd_pass(self, data, params, active):
            batches.append(params.means.shape[0])
            return super().lloyd_pass(data, params, active)

    got, n_iter = _kmeans.lloyd(Counting(), data, seeds, tol=tol, precision=precision, sizes=ks)
    assert batches[0] == 4 and min(batches) == 1, batches  # K=1, 2 left; K=12 went on alone
    for r, k in enumerate(ks):
        alone, it = _kmeans.lloyd(engine, data, seeds[r : r + 1, :k], tol=tol, precision=precision)
        np.testing.assert_array_equal(got[r, :k], alone[0])
        assert not got[r, k:].any() and n_iter[r] == it[0]


@pytest.mark.parametrize("rows", [[0, 1, 2, 3, 4], [4, 0, 1, 3], [2], [3, 4, 1, 2]])
def test_restart_rows_taken_and_put_back_as_fancy_indexing_does(rows):
    """take_restarts / put_restarts (runs of consecutive rows copied at once) against indexing:
    centres (R, K, D) narrowed to a width, and 1-D flags."""
    from gmm_core._kmeans_seeding import put_restarts, take_restarts

    rng = np.random.default_rng(len(rows))
    centres = rng.normal(size=(5, 6, 3))
    flags = np.arange(5, dtype=np.int32) * 7
    taken = take_restarts(np, centres, rows, 4)
    np.testing.assert_array_equal(taken, centres[rows, :4])
    assert taken.flags.c_contiguous
    np.testing.assert_array_equal(take_restarts(np, flags, rows), flags[rows])
    out, want = np.zeros_like(centres), np.zeros_like(centres)
    put_restarts(np, out, rows, taken)
    want[rows, :4] = centres[rows, :4]
    np.testing.assert_array_equal(out, want)
    # shapes that would copy into a neighbouring restart are refused
    with pytest.raises(ValueError, match="outside"):
        take_restarts(np, centres, rows, 7)
    with pytest.raises(ValueError, match="does not fit"):
        put_restarts(np, out, rows[:-1] if len(rows) > 1 else [0, 1], taken)
    with pytest.raises(ValueError, match="all of it"):
        put_restarts(np, out, [1, 0, 2, 3, 4], out)
    assert take_restarts(np, centres, [], 4).shape == (0, 4, 3)


def test_weighted_tied_statistics_of_one_sample_components_are_scikit_learns():
    """k-means++ / random_from_data on the device path (one chosen row per component, tied):
    scikit-learn's X^T W X over all rows minus the components' nk m m^T, in raw coordinates.
    With weights the data's (unweighted) mean is not the weighted one; the cross terms of
    sum w x_c were missing."""
    from gmm_core._gaussian import estimate_parameters

    X = _blobs(500, d=3, centers=2, seed=3) + 4.0
    w = np.random.default_rng(2).integers(0, 4, len(X)).astype(np.float64)
    engine = NumpyEngine()
    data = engine.prepare(X, "auto", "tied", sample_weight=w)
    chosen = np.array([3, 77, 140])
    shift = np.asarray(data.shift, dtype=np.float64)
    eps = 10 * np.finfo(np.float64).eps
    rows = (X[chosen] - shift)[None]
    (stats,) = _init._stats_of_rows(engine, data, rows, "tied", shift, eps)
    _, _, cov = estimate_parameters(stats, "tied", 0.0, eps, np, shift)
    nk = 1.0 + eps
    means = X[chosen] / nk
    want = ((X * w[:, None]).T @ X - nk * means.T @ means) / (3 * nk)
    np.testing.assert_allclose(cov[0], want, rtol=1e-9)
