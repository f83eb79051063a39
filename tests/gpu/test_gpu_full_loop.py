"""The estimator's loop on the device for full covariance: the M-step writes the tensor-core
pass's operands, the pass skips restarts that stopped, one bookkeeping kernel per iteration
(needs a usable CUDA GPU)."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_fixtures import make_data, random_params

from gmm_core import GaussianMixture
from gmm_core._em_loop import RestartTracker
from gmm_core._engine import cupy_unavailable_reason
from gmm_core._gaussian import Params, Stats

_REASON = cupy_unavailable_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_REASON is not None, reason=f"needs a usable CUDA GPU: {_REASON}"),
]


def _full_tc_engine(X, n_restarts=2, k=4):
    import cupy

    from gmm_core._cupy import CupyEngine

    engine = CupyEngine()
    data = engine.prepare(X, X.mean(0), "full")
    params = random_params(X, "full", k, n_restarts).map(cupy.asarray)
    assert engine.full_pass_tc.supports(data, n_restarts, k), "the tensor-core pass serves"
    return engine, data, params


def test_the_m_step_writes_the_operands_full_tc_params_computes():
    import cupy

    X = make_data(3000, 32, 4, np.float32)
    engine, data, params = _full_tc_engine(X)
    stats = engine.accumulate(data, params, cupy.ones(2, cupy.int32))
    new = engine.m_step(stats, "full", 1e-6, 1e-10)
    tc = engine.full_pass_tc
    buffers = tc.operand_buffers(2, 4, 32)
    from_mstep = {name: cupy.asnumpy(buf) for name, buf in buffers.items()}
    launches = tc.params_launches
    tc._operands_of = None  # forget them: the next pass computes them from the parameters
    engine.accumulate(data, new, cupy.ones(2, cupy.int32))
    assert tc.params_launches == launches + 1
    for name, buf in buffers.items():  # the same float64 values, the same formulas: equal
        np.testing.assert_array_equal(cupy.asnumpy(buf), from_mstep[name], err_msg=name)
    assert from_mstep["lconst"].any() and from_mstep["ufrag"].any()


def test_a_full_fit_computes_the_pass_operands_once_and_fits_as_without_that():
    X = make_data(5000, 12, 3, np.float32, seed=2)
    kwargs = dict(n_components=3, covariance_type="full", tol=0.0, max_iter=12, random_state=0)
    from gmm_core._cupy.full_pass_tc import FullPassTC

    launches = {"n": 0}
    original = FullPassTC.accumulate

    def accumulate(self, data, params, active=None):
        before = self.params_launches
        stats = original(self, data, params, active)
        launches["n"] += self.params_launches - before  # k-means' Lloyd passes come here too
        return stats

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FullPassTC, "accumulate", accumulate)
        fast = GaussianMixture(backend="cupy", **kwargs).fit(X)
        fast_launches, launches["n"] = launches["n"], 0
        # every pass computes its operands from the parameters: the result must not change
        mp.setattr(FullPassTC, "operands_written", lambda self, pc, buffers: None)
        slow = GaussianMixture(backend="cupy", **kwargs).fit(X)
    assert fast.n_iter_ == slow.n_iter_ == 12
    # the same initialisation either way; in the loop, one launch (the first pass) against 12
    assert launches["n"] - fast_launches == 11, "the M-step writes the operands of later passes"
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)
    assert fast.lower_bound_ == slow.lower_bound_


def test_restarts_that_stop_early_fit_as_when_every_pass_computes_its_operands():
    """n_init=3 with a tolerance: restarts stop at different iterations, their passes are
    skipped, the loop restores their parameters in place; with the M-step's operands for the
    others, the fit must equal, to the bit, one whose every pass computes every restart from
    operands made afresh (no mask: no skipping, no operands kept)."""
    X = make_data(6000, 10, 4, np.float32, seed=4, spread=3.0)
    from gmm_core._cupy.full_pass_tc import FullPassTC

    original = FullPassTC.accumulate

    def unmasked(self, data, params, active=None):
        return original(self, data, params, None)

    # starts drawn from the data: restarts need different numbers of iterations (k-means and
    # random starts converge in 2 for every restart on such data, device calls of 2026-12-04;
    # on the NumPy backend these settings stop apart for each of seeds 0-4); the first seed of
    # five whose restarts stop apart
    for seed in range(5):
        kwargs = dict(
            n_components=4,
            covariance_type="full",
            n_init=3,
            tol=1e-4,
            init_params="random_from_data",
            random_state=seed,
        )
        fast = GaussianMixture(backend="cupy", **kwargs).fit(X)
        lengths = [len(curve) for curve in fast.restart_lower_bounds_]
        if len(set(lengths)) > 1:
            break
    assert len(set(lengths)) > 1, f"no seed made the restarts stop apart: {lengths}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FullPassTC, "accumulate", unmasked)
        slow = GaussianMixture(backend="cupy", **kwargs).fit(X)
    assert lengths == [len(curve) for curve in slow.restart_lower_bounds_]
    for a, b in zip(fast.restart_lower_bounds_, slow.restart_lower_bounds_, strict=True):
        np.testing.assert_array_equal(a, b)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)


def test_a_full_pass_skips_restarts_that_stopped():
    import cupy

    X = make_data(4099, 20, 4, np.float32, seed=3)  # a partial last tile
    engine, data, params = _full_tc_engine(X, n_restarts=3)
    every = engine.accumulate(data, params, cupy.ones(3, cupy.int32))
    some = engine.accumulate(data, params, cupy.asarray([1, 0, 1], cupy.int32))
    for name in ("loglik", "nk", "sx", "sxx"):
        a, b = cupy.asnumpy(getattr(every, name)), cupy.asnumpy(getattr(some, name))
        np.testing.assert_array_equal(b[[0, 2]], a[[0, 2]], err_msg=name)
        assert not b[1].any(), f"{name}: a stopped restart reads no data"
        assert a[1].any()


def _synthetic(rng, R, K, D, it):
    """Host stats and parameters of iteration ``it`` (lower bounds that settle per restart)."""
    pc = np.triu(rng.normal(size=(R, K, D, D))) + 3 * np.eye(D)
    new = Params(rng.random((R, K)), rng.normal(size=(R, K, D)), rng.normal(size=(R, K, D, D)), pc)
    # restart 0 converges at iteration 3, restart 1 at 4, restart 2 never
    steps = np.array([[5.0, 1.0, 1e-9, 1e-9, 1e-9, 1e-9], [4.0, 2.0, 1.0, 1e-9, 1e-9, 1e-9]])
    ll = np.array([steps[0, :it].sum(), steps[1, :it].sum(), float(it)]) * 1000.0
    stats = Stats(ll, np.ones((R, K)), np.ones((R, K, D)), np.ones((R, K, D, D)), 1000, 1000.0)
    return stats, new


def test_the_device_bookkeeping_kernel_matches_the_host_tracker():
    """em_update (one launch, the last block of each restart's row tracks it) = RestartTracker,
    with parameters big enough for 64 blocks per restart."""
    import cupy

    from gmm_core._cupy.tracker import DeviceRestartTracker

    R, K, D, iters = 3, 16, 32, 6
    rng = np.random.default_rng(0)
    host = RestartTracker(np, R, iters + 1, -np.inf, 1e-3, deferred=True)
    device = DeviceRestartTracker(R, iters + 1, -np.inf, 1e-3)
    _, start = _synthetic(rng, R, K, D, 0)
    p_host, p_dev = start, start.map(cupy.asarray)
    for it in range(1, iters + 1):
        stats, new = _synthetic(rng, R, K, D, it)
        if it == 5:  # restart 0 stopped: its discarded M-step may be anything, even not finite
            new.precisions_cholesky[0] = np.nan
        p_host = host.update(it, stats, new, p_host)
        p_dev = device.update(it, stats.map(cupy.asarray), new.map(cupy.asarray), p_dev)
        flags = cupy.asnumpy(device.flags())
        assert device.read_flags(flags) == (bool(host.active.any()), bool(host.failed))
        assert flags[:R].astype(bool).tolist() == host.active.tolist()
        for name in ("weights", "means", "covariances", "precisions_cholesky"):
            np.testing.assert_array_equal(
                cupy.asnumpy(getattr(p_dev, name)), getattr(p_host, name), err_msg=name
            )
    assert not bool(host.failed) and not device.read_flags(cupy.asnumpy(device.flags()))[1]
    h_hist, h_iter, h_conv = host.results(_Host())
    d_hist, d_iter, d_conv = device.results(_Host())
    np.testing.assert_array_equal(d_hist, h_hist)
    np.testing.assert_array_equal(d_iter, h_iter)
    np.testing.assert_array_equal(d_conv, h_conv)
    assert d_iter.tolist() == [3, 4, 6] and d_conv.tolist() == [True, True, False]
    # a restart still iterating with a factor that is not finite: failed
    stats, new = _synthetic(rng, R, K, D, iters + 1)
    new.precisions_cholesky[2, 1, 0, 0] = np.inf
    device.update(iters + 1, stats.map(cupy.asarray), new.map(cupy.asarray), p_dev)
    assert device.read_flags(cupy.asnumpy(device.flags()))[1]


class _Host:
    """The engine methods a tracker's ``results`` reads through."""

    @staticmethod
    def to_host(a):
        import cupy

        return cupy.asnumpy(a)
