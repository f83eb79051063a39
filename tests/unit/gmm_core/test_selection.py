"""GaussianMixtureSelect: one batched sweep over K and covariance type vs a loop of sklearn fits.

Tolerances: the batched sweep runs exactly the iterations of each separate fit, so lower bounds,
BIC and AIC agree with scikit-learn's to summation order (seen: <= 1e-14 relative; asserted
1e-8), iteration counts and convergence flags exactly.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.utils.estimator_checks import parametrize_with_checks

from gmm_core import GaussianMixture, GaussianMixtureSelect
from gmm_core import _padded_em as padded_em
from gmm_core import selection as selection_module
from gmm_core._gaussian import Params, cholesky_precisions
from gmm_core._numpy_engine import NumpyEngine

COV_TYPES = ["full", "tied", "diag", "spherical"]
RTOL = 1e-8


def _sklearn_loop(X, ks, **kwargs):
    """``{K: fitted sklearn model or None (fit raised)}``, one fit per K, as a user loops."""
    out = {}
    for k in ks:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                out[k] = SkGaussianMixture(n_components=k, **kwargs).fit(X)
        except ValueError:
            out[k] = None
    return out


def _rows(sel, covariance_type):
    table = sel.results_
    return {
        int(k): i
        for i, (k, t) in enumerate(
            zip(table["n_components"], table["covariance_type"], strict=True)
        )
        if t == covariance_type
    }


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_sweep_equals_a_loop_of_sklearn_fits(blobs, covariance_type):
    ks = range(1, 8)
    kwargs = dict(covariance_type=covariance_type, n_init=2, random_state=0, tol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sel = GaussianMixtureSelect(ks, backend="numpy", **kwargs).fit(blobs)
    refs = _sklearn_loop(blobs, ks, **kwargs)
    table, rows = sel.results_, _rows(sel, covariance_type)
    assert sel.batched_ and sel.backend_ == "numpy"
    for k, ref in refs.items():
        i = rows[k]
        assert not table["failed"][i]
        assert table["n_iter"][i] == ref.n_iter_
        assert table["converged"][i] == ref.converged_
        np.testing.assert_allclose(table["lower_bound"][i], ref.lower_bound_, rtol=RTOL)
        np.testing.assert_allclose(table["train_score"][i], ref.score(blobs), rtol=RTOL)
        np.testing.assert_allclose(table["bic"][i], ref.bic(blobs), rtol=RTOL)
        np.testing.assert_allclose(table["aic"][i], ref.aic(blobs), rtol=RTOL)
        assert table["n_parameters"][i] == ref._n_parameters()
    chosen_by_sklearn = min(refs, key=lambda k: refs[k].bic(blobs))
    assert sel.best_params_ == {
        "n_components": chosen_by_sklearn,
        "covariance_type": covariance_type,
    }
    best, ref = sel.best_estimator_, refs[chosen_by_sklearn]
    np.testing.assert_allclose(best.means_, ref.means_, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(best.covariances_, ref.covariances_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(best.weights_, ref.weights_, rtol=1e-7)


def test_a_shared_random_state_is_drawn_in_grid_order_as_a_loop_would(blobs):
    ks, types = [2, 3, 5], ["diag", "full"]
    common = dict(init_params="random", n_init=2, tol=1e-4, max_iter=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sel = GaussianMixtureSelect(
            ks,
            covariance_type=types,
            random_state=np.random.RandomState(7),
            backend="numpy",
            **common,
        ).fit(blobs)
    shared = np.random.RandomState(7)
    for covariance_type in types:  # covariance types outer, n_components inner
        refs = _sklearn_loop(
            blobs, ks, covariance_type=covariance_type, random_state=shared, **common
        )
        rows = _rows(sel, covariance_type)
        for k, ref in refs.items():
            np.testing.assert_allclose(sel.results_["bic"][rows[k]], ref.bic(blobs), rtol=RTOL)
            assert sel.results_["n_iter"][rows[k]] == ref.n_iter_


def _collapsing_data():
    """Two clusters, three copies of one far point and a lone point: with reg_covar=0 and this
    random initialisation, K=3 and K=5 collapse part-way through EM (scikit-learn raises)."""
    rng = np.random.default_rng(1)
    return np.vstack(
        [
            rng.normal(0, 1, size=(40, 2)),
            rng.normal(8, 1, size=(40, 2)),
            np.tile([[30.0, 30.0]], (3, 1)),
            [[15.0, 15.0]],
        ]
    )


def test_a_collapsing_candidate_is_recorded_as_failed_and_the_sweep_goes_on():
    X = _collapsing_data()
    ks = [1, 2, 3, 4, 5, 200]
    kwargs = dict(reg_covar=0.0, random_state=7, init_params="random")
    sel = GaussianMixtureSelect(ks, backend="numpy", **kwargs).fit(X)
    refs = _sklearn_loop(X, ks, **kwargs)
    table = sel.results_
    assert {k for k, ref in refs.items() if ref is None} == {3, 5, 200}
    for i, k in enumerate(table["n_components"].tolist()):
        if refs[k] is None:
            assert table["failed"][i] and np.isnan(table["bic"][i])
        else:
            assert not table["failed"][i] and table["reason"][i] == ""
            np.testing.assert_allclose(table["bic"][i], refs[k].bic(X), rtol=RTOL)
            assert table["n_iter"][i] == refs[k].n_iter_
    reasons = dict(zip(table["n_components"].tolist(), table["reason"], strict=True))
    assert "ill-defined empirical covariance" in reasons[3]
    assert reasons[3].startswith("iteration ")  # it collapsed during EM, not at the start
    assert "too few samples" in reasons[200]
    assert sel.best_params_["n_components"] in {1, 2, 4}


def test_every_candidate_failing_raises_with_the_reasons():
    X = np.tile([[1.0, 2.0]], (10, 1))
    with pytest.raises(ValueError, match="every candidate failed.*K=20"):
        GaussianMixtureSelect([20, 30], backend="numpy").fit(X)


def _known_k_blobs(seed):
    X, _ = make_blobs(1500, n_features=2, centers=4, cluster_std=0.6, random_state=seed)
    return X[:1000], X[1000:]


@pytest.mark.parametrize("criterion", ["bic", "holdout", "aic"])
def test_the_true_k_of_well_separated_blobs_is_chosen(criterion):
    X, X_holdout = _known_k_blobs(seed=3)
    sel = GaussianMixtureSelect(
        range(1, 9), covariance_type="full", criterion=criterion, random_state=0, backend="numpy"
    ).fit(X, X_holdout=X_holdout)
    assert sel.best_params_["n_components"] == 4
    if criterion == "holdout":  # the one-standard-error rule: K=4 within 1 SE of the best
        table = sel.results_
        best = int(np.argmax(table["holdout_score"]))
        assert table["holdout_score"][3] >= table["holdout_score"][best] - table["holdout_se"][best]
        assert table["holdout_score"][2] < table["holdout_score"][best] - table["holdout_se"][best]
    assert np.isfinite(sel.results_["holdout_score"]).all()
    np.testing.assert_allclose(
        sel.results_["holdout_score"][sel.best_index_],
        sel.best_estimator_.score(X_holdout),
        rtol=1e-12,
    )


def test_holdout_bic_across_covariance_types_picks_the_true_shape():
    rng = np.random.default_rng(0)
    # two elongated, rotated clusters: full covariance describes them with 2 components
    base = rng.standard_normal((800, 2)) * [3.0, 0.3]
    rot = np.array([[np.cos(0.7), -np.sin(0.7)], [np.sin(0.7), np.cos(0.7)]])
    X = np.vstack([base[:400] @ rot.T, base[400:] @ rot + [10.0, 0.0]])
    sel = GaussianMixtureSelect(
        range(1, 6), covariance_type=["spherical", "diag", "full"], random_state=0, backend="numpy"
    ).fit(X)
    assert sel.best_params_ == {"n_components": 2, "covariance_type": "full"}
    assert len(sel.results_["bic"]) == 15


def test_the_best_estimator_is_a_plain_gaussian_mixture_and_the_selector_delegates(blobs):
    sel = GaussianMixtureSelect(range(2, 6), random_state=0, backend="numpy").fit(blobs)
    best = sel.best_estimator_
    assert type(best) is GaussianMixture
    assert best.n_components == sel.best_params_["n_components"]
    ref = GaussianMixture(n_components=best.n_components, random_state=0, backend="numpy").fit(
        blobs
    )
    np.testing.assert_allclose(best.means_, ref.means_, rtol=1e-10)
    np.testing.assert_array_equal(sel.predict(blobs), ref.predict(blobs))
    np.testing.assert_allclose(sel.score_samples(blobs), ref.score_samples(blobs), rtol=1e-10)
    np.testing.assert_allclose(sel.predict_proba(blobs), ref.predict_proba(blobs), atol=1e-12)
    assert sel.score(blobs) == pytest.approx(ref.score(blobs), rel=1e-12)


@parametrize_with_checks([GaussianMixtureSelect((1, 2, 3), backend="numpy", max_iter=20)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_get_params_set_params_and_clone():
    sel = GaussianMixtureSelect(range(1, 4), covariance_type=("diag", "full"), criterion="aic")
    params = sel.get_params()
    assert params["n_components"] == range(1, 4) and params["criterion"] == "aic"
    sel.set_params(criterion="bic", n_init=2)
    copy = clone(sel)
    assert copy.get_params()["n_init"] == 2 and copy.criterion == "bic"
    assert copy.get_params()["covariance_type"] == ("diag", "full")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_components=[2, 2]), "twice"),
        (dict(n_components=[0, 1]), "positive integers"),
        (dict(n_components=True), "positive integers"),
        (dict(n_components=[True, 2]), "positive integers"),
        (dict(covariance_type=["diag", "round"]), "covariance_type must be"),
        (dict(criterion="holdout"), "X_holdout"),
    ],
)
def test_bad_parameters_name_the_fix(blobs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixtureSelect(backend="numpy", **kwargs).fit(blobs)


def test_the_loop_fallback_gives_the_same_table(blobs, monkeypatch):
    kwargs = dict(covariance_type=["diag", "full"], random_state=0, backend="numpy")
    batched = GaussianMixtureSelect(range(1, 6), **kwargs).fit(blobs)
    monkeypatch.setattr(selection_module, "BATCHED_BACKENDS", ())  # as on the GPU backends
    looped = GaussianMixtureSelect(range(1, 6), **kwargs).fit(blobs)
    assert batched.batched_ and not looped.batched_
    for column in ("bic", "aic", "lower_bound", "train_score"):
        np.testing.assert_allclose(looped.results_[column], batched.results_[column], rtol=RTOL)
    np.testing.assert_array_equal(looped.results_["n_iter"], batched.results_["n_iter"])
    assert looped.best_params_ == batched.best_params_


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_numpy_pass_with_zero_weight_padding_equals_the_unpadded_pass(blobs, covariance_type):
    rng = np.random.default_rng(0)
    X = blobs - blobs.mean(axis=0)
    k, k_max, d = 3, 6, X.shape[1]
    means = X[rng.choice(len(X), k, replace=False)]
    cov = {
        "full": np.broadcast_to(np.eye(d) * 4.0, (k, d, d)),
        "tied": np.eye(d) * 4.0,
        "diag": np.full((k, d), 4.0),
        "spherical": np.full(k, 4.0),
    }[covariance_type]
    params = Params(
        np.full((1, k), 1 / k),
        means[None],
        np.asarray(cov)[None],
        cholesky_precisions(np.asarray(cov)[None], covariance_type, np),
    )
    padded = padded_em.pad(params, k_max, covariance_type)
    engine = NumpyEngine()
    data = engine.prepare(X, None, covariance_type)
    one = engine.accumulate(data, params, np.ones(1, dtype=bool))
    with np.errstate(divide="ignore"):
        wide = engine.accumulate(data, padded, np.ones(1, dtype=bool))
    np.testing.assert_array_equal(wide.loglik, one.loglik)
    np.testing.assert_array_equal(wide.nk[:, :k], one.nk)
    assert not wide.nk[:, k:].any() and not wide.sx[:, k:].any()
    np.testing.assert_array_equal(wide.sx[:, :k], one.sx)


def test_the_dask_backend_gives_the_numpy_table(blobs):
    distributed = pytest.importorskip("distributed")
    with (
        distributed.Client(processes=False, n_workers=1, dashboard_address=None) as client,
        client.as_current(),
    ):
        dask = GaussianMixtureSelect(range(1, 6), random_state=0, backend="dask").fit(blobs)
    ref = GaussianMixtureSelect(range(1, 6), random_state=0, backend="numpy").fit(blobs)
    assert dask.backend_ == "dask" and dask.batched_
    np.testing.assert_allclose(dask.results_["bic"], ref.results_["bic"], rtol=1e-10)
    np.testing.assert_array_equal(dask.results_["n_iter"], ref.results_["n_iter"])


def test_candidates_are_batched_by_tiles_of_16_components():
    assert [list(b) for b in padded_em.buckets(range(1, 33))] == [
        list(range(16)),
        list(range(16, 32)),
    ]
    assert [list(b) for b in padded_em.buckets([40, 2, 17, 16])] == [[1, 3], [2], [0]]
    assert padded_em.buckets([]) == []


def test_a_sweep_over_both_tile_widths_has_its_phase_times_and_equals_the_loop(blobs):
    """Candidates of K = 1..18 run as two batches (K <= 16, K = 17, 18); still a loop's table."""
    kwargs = dict(covariance_type="diag", random_state=0, backend="numpy", max_iter=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sweep = GaussianMixtureSelect((1, 2, 5, 17, 18), **kwargs).fit(blobs)
        for k, bic in zip((1, 2, 5, 17, 18), sweep.results_["bic"], strict=True):
            ref = SkGaussianMixture(k, covariance_type="diag", random_state=0, max_iter=20)
            np.testing.assert_allclose(bic, ref.fit(blobs).bic(blobs), rtol=1e-8)
    assert set(sweep.fit_timings_) >= {"validate", "transfer", "init", "em", "score"}
    assert abs(sum(sweep.fit_timings_.values()) - sweep.fit_seconds_) < 1e-6


@pytest.mark.parametrize("zeroed", [False, True], ids=["numpy", "inactive-zeroed"])
def test_stopped_candidates_do_not_send_the_m_step_down_the_per_restart_fallback(
    blobs, monkeypatch, zeroed
):
    """With reg_covar=0 a stopped candidate's zero statistics gave zero covariances, and
    NumPy's batched Cholesky then raised every later iteration, factoring each restart alone
    (slow, correct). The GPU passes return zeros for inactive restarts (the NumPy engine keeps
    their last statistics): ``inactive-zeroed`` does the same here. Stopped restarts keep
    their parameters: one batched factorisation per iteration, and the table still equals the
    loop of scikit-learn fits."""
    calls = []
    real = padded_em.cholesky_precisions

    def counting(covariances, covariance_type, xp, check=True):
        calls.append(covariances.shape)
        return real(covariances, covariance_type, xp, check=check)

    monkeypatch.setattr(padded_em, "cholesky_precisions", counting)
    if zeroed:
        accumulate = NumpyEngine.accumulate

        def zeroing(self, data, params, active):
            stats = accumulate(self, data, params, active)
            off = ~np.asarray(active)
            for name in ("loglik", "nk", "sx", "sxx"):
                getattr(stats, name)[off] = 0.0
            return stats

        monkeypatch.setattr(NumpyEngine, "accumulate", zeroing)
    ks = [1, 2, 3, 4]
    kwargs = dict(covariance_type="full", reg_covar=0.0, random_state=0, tol=1e-5)
    sel = GaussianMixtureSelect(ks, backend="numpy", **kwargs).fit(blobs)
    n_iter = sel.results_["n_iter"]
    assert sel.batched_ and len(set(n_iter.tolist())) > 1  # some stop before others
    batched = [shape for shape in calls if len(shape) == 4]  # (restarts, K, D, D)
    per_restart = [shape for shape in calls if len(shape) == 3]
    assert per_restart == [] and len(batched) == n_iter.max()
    refs = _sklearn_loop(blobs, ks, **kwargs)
    rows = _rows(sel, "full")
    for k, ref in refs.items():
        np.testing.assert_allclose(sel.results_["bic"][rows[k]], ref.bic(blobs), rtol=RTOL)


def test_a_shared_random_state_stays_in_step_with_the_loop_past_a_failed_initialisation():
    """scikit-learn raises at the first restart whose drawn covariances are ill-defined, before
    drawing the next: the sweep drew all ``n_init`` first, so every later candidate of a shared
    ``RandomState`` started from other draws (found by a QA probe: BIC 986.82 against 986.64)."""
    noise = np.array([-3, -2, -1, 1, 2, 3] * 4, float)
    X = np.r_[np.zeros(24), 10 + noise, -10 + noise, 20 + noise, -20 + noise][:, None]
    kwargs = dict(covariance_type="spherical", reg_covar=0.0, n_init=3)
    loop_state = np.random.RandomState(0)
    refs = _sklearn_loop(X, [5, 3], random_state=loop_state, **kwargs)
    assert refs[5] is None and refs[3] is not None  # the case: K=5 fails at initialisation
    sel = GaussianMixtureSelect(
        [5, 3], random_state=np.random.RandomState(0), backend="numpy", **kwargs
    ).fit(X)
    table = sel.results_
    assert table["failed"][0] and table["reason"][0].startswith("initialisation")
    np.testing.assert_allclose(table["bic"][1], refs[3].bic(X), rtol=RTOL)


def test_feature_names_of_a_dataframe_are_checked_by_the_delegated_methods(blobs):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(blobs, columns=["a", "b", "c"])
    sel = GaussianMixtureSelect([1, 2, 3], random_state=0, backend="numpy").fit(df)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "fitted without feature names" warning
        labels = sel.predict(df)
        proba = sel.predict_proba(df)
    np.testing.assert_array_equal(labels, sel.best_estimator_.predict(df))
    assert proba.shape == (len(blobs), sel.best_params_["n_components"])
    with pytest.raises(ValueError, match="feature names"):
        sel.score_samples(df.rename(columns={"a": "z"}))
    with pytest.warns(UserWarning, match="feature names"):
        sel.predict(blobs)


def test_a_one_shot_iterator_for_n_components_is_refused_with_the_fix(blobs):
    """A generator read by the first fit left the next fit "n_components ... got []" and
    clone a TypeError (QA probe): refused up front, as scikit-learn's parameter grids do."""
    gen = GaussianMixtureSelect((k for k in (1, 2, 3)), random_state=0, backend="numpy")
    with pytest.raises(ValueError, match=r"one-shot iterator.*list, tuple or range"):
        gen.fit(blobs)
    with pytest.raises(ValueError, match="one-shot iterator"):
        GaussianMixtureSelect(iter([1, 2]), backend="numpy").fit(blobs)
    ranged = GaussianMixtureSelect(range(1, 4), random_state=0, backend="numpy")
    first = ranged.fit(blobs).results_["bic"].copy()
    np.testing.assert_array_equal(clone(ranged).fit(blobs).results_["bic"], first)
    np.testing.assert_array_equal(ranged.fit(blobs).results_["bic"], first)


def test_grid_values_are_checked_as_gaussian_mixture_checks_them(blobs):
    """QA probe: [2.0] was accepted where 2.0 and GaussianMixture(2.0) are refused; a 0-d array
    raised "iteration over a 0-d array" and a 2-D one a NumPy conversion error; an array of
    covariance types was refused though the docstring says sequence."""
    for bad in ([2.0], [1, 2.5], np.array([1.0, 2.0]), np.array(2.0), [0, 1], [True]):
        with pytest.raises(ValueError, match="positive integers"):
            GaussianMixtureSelect(bad, backend="numpy").fit(blobs)
    with pytest.raises(ValueError, match=r"1-D sequence of ints.*shape \(1, 2\)"):
        GaussianMixtureSelect(np.array([[1, 2]]), backend="numpy").fit(blobs)
    zero_d = GaussianMixtureSelect(np.array(2), random_state=0, backend="numpy").fit(blobs)
    assert list(zero_d.results_["n_components"]) == [2]
    as_array = GaussianMixtureSelect(
        [1, 2], covariance_type=np.array(["diag", "full"]), random_state=0, backend="numpy"
    ).fit(blobs)
    as_list = GaussianMixtureSelect(
        [1, 2], covariance_type=["diag", "full"], random_state=0, backend="numpy"
    ).fit(blobs)
    np.testing.assert_array_equal(as_array.results_["bic"], as_list.results_["bic"])


def test_a_holdout_needs_two_rows_and_one_passed_as_y_is_not_lost_silently(blobs):
    """QA probe: one holdout row gave a standard error of 0, so the one-standard-error rule
    chose the largest K; fit(X, X_val) put the holdout in y, ignored without a word."""
    sel = GaussianMixtureSelect([1, 2, 3], criterion="holdout", random_state=0, backend="numpy")
    with pytest.raises(ValueError, match="minimum of 2"):
        sel.fit(blobs, X_holdout=blobs[:1])
    # rows scored for the table only (bic): one is enough, its standard error NaN
    one = GaussianMixtureSelect([1, 2], random_state=0, backend="numpy")
    one.fit(blobs, X_holdout=blobs[:1])
    assert np.isfinite(one.results_["holdout_score"]).all()
    assert np.isnan(one.results_["holdout_se"]).all()
    with pytest.warns(UserWarning, match="X_holdout="):
        GaussianMixtureSelect([1, 2], random_state=0, backend="numpy").fit(blobs, blobs[:50])
    fitted = sel.fit(blobs, X_holdout=blobs[:40])
    scores = fitted.best_estimator_.score_samples(blobs[:40])
    best = fitted.best_index_
    assert fitted.results_["holdout_se"][best] == pytest.approx(
        scores.std(ddof=1) / np.sqrt(40), rel=1e-12
    )


@pytest.mark.parametrize("cov", ["full", "diag", "spherical", "tied"])
def test_weighted_sweep_equals_a_loop_of_weighted_fits(cov):
    """sample_weight (QA probe: fit refused it though GaussianMixture.fit takes it): every
    candidate is GaussianMixture(K).fit(X, sample_weight=w) with the same seed (shared passes
    on NumPy, and the loop the multi-GPU backend runs), the train score is the weighted mean
    and BIC/AIC count sum(w) samples; a K above the rows of positive weight fails alone."""
    from gmm_core import _sweep

    X, _ = make_blobs(400, n_features=3, centers=3, random_state=4)
    w = np.random.default_rng(1).integers(0, 4, size=len(X)).astype(float)
    ks = [1, 2, 3, 4]
    sel = GaussianMixtureSelect(ks, covariance_type=cov, random_state=0, backend="numpy")
    sel.fit(X, sample_weight=w)
    total = w.sum()
    for row, k in enumerate(ks):
        one = GaussianMixture(k, covariance_type=cov, random_state=0, backend="numpy")
        one.fit(X, sample_weight=w)
        score = np.average(one.score_samples(X), weights=w)
        p = one._n_parameters()
        assert sel.results_["lower_bound"][row] == pytest.approx(one.lower_bound_, rel=1e-10)
        assert sel.results_["bic"][row] == pytest.approx(
            -2 * score * total + p * np.log(total), rel=1e-8
        )
        assert sel.results_["aic"][row] == pytest.approx(-2 * score * total + 2 * p, rel=1e-8)
    looped = [_sweep.Candidate(k, cov) for k in ks]
    _sweep.fit_loop(sel, X, looped, w)
    np.testing.assert_allclose(
        [c.train_score for c in looped], sel.results_["train_score"], rtol=1e-10
    )

    # weights of mean below 1 (normalised, decay weights) count as the rows: their scale moves
    # neither the fits nor the table (QA probe: weights summing to 1 made the penalty p log 1 =
    # 0 and the largest K always won)
    for scale in (1.0 / w.sum(), 1e-3):
        small = GaussianMixtureSelect(ks, covariance_type=cov, random_state=0, backend="numpy")
        small.fit(X, sample_weight=w * scale)
        at_mean_1 = w / w.mean()
        counts = GaussianMixtureSelect(ks, covariance_type=cov, random_state=0, backend="numpy")
        counts.fit(X, sample_weight=at_mean_1)
        np.testing.assert_allclose(small.results_["bic"], counts.results_["bic"], rtol=1e-9)
        assert small.best_index_ == counts.best_index_ == 2  # three blobs

    few = np.zeros(len(X))
    few[:5] = 1.0
    sparse = GaussianMixtureSelect([1, 2, 6], covariance_type=cov, random_state=0, backend="numpy")
    sparse.fit(X, sample_weight=few)
    assert list(sparse.results_["failed"]) == [False, False, True]
    assert "positive sample_weight" in sparse.results_["reason"][2]
    with pytest.raises(ValueError, match="non-negative"):
        sparse.fit(X, sample_weight=-w)


@pytest.mark.parametrize("cov", ["full", "tied", "diag", "spherical"])
def test_a_variance_below_the_datas_resolution_is_ill_defined_as_in_scikit_learn(cov):
    """QA probe: with reg_covar=0 a constant feature (or a component on repeated rows) kept a
    variance of ~1e-34 (the M-step's eps term) and fitted, where scikit-learn raises; in the
    sweep the candidate counted as fitted and its table entry disagreed with
    best_estimator_.bic(X) by n. Such a variance is now ill-defined: the fit raises as
    scikit-learn's does, the candidate fails with the reason and the others go on."""
    X, _ = make_blobs(300, n_features=2, centers=3, random_state=0)
    X = np.c_[X, np.full(len(X), 3.0)]
    kw = dict(covariance_type=cov, reg_covar=0.0, random_state=0)
    try:
        SkGaussianMixture(2, **kw).fit(X)
        sklearn_raises = False
    except ValueError:
        sklearn_raises = True
    assert sklearn_raises == (cov != "spherical")  # the case this test is about
    if sklearn_raises:
        with pytest.raises(ValueError, match="ill-defined empirical covariance"):
            GaussianMixture(2, backend="numpy", **kw).fit(X)
    else:
        GaussianMixture(2, backend="numpy", **kw).fit(X)
    types = sorted({cov, "spherical"})
    sel = GaussianMixtureSelect([1, 2, 3], covariance_type=types, reg_covar=0.0,
                                random_state=0, backend="numpy").fit(X)  # fmt: skip
    table = sel.results_
    mine = table["covariance_type"] == cov
    assert list(table["failed"][mine]) == [sklearn_raises] * 3
    if sklearn_raises:
        assert all("ill-defined" in reason for reason in table["reason"][mine])
    best = sel.best_estimator_
    assert table["bic"][sel.best_index_] == pytest.approx(best.bic(X), rel=1e-9)
