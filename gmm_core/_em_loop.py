"""The host EM loop of every engine: a batch of restarts, per-restart convergence.

Each iteration is one pass of the engine over the data (log-likelihood and sufficient statistics
of all restarts) followed by the M-step on the engine's device. Convergence is tracked per
restart with an ``active`` mask on the device: a restart that has converged keeps its
parameters exactly as scikit-learn's loop would have left them. On a device, the host reads
whether any restart is still active one iteration late (the copy runs while the next iteration
does), so the device never waits for the host. Engines with a loop of their own (the CuPy
device loop) run it instead, unless progress is reported. Also here: :func:`em_progress`, the
choice of the kept restart, and the phase clock of ``fit_timings_``.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ._engine import EMResult, Engine
from ._gaussian import ILL_DEFINED_COVARIANCE, Params, Stats, m_step, select

__all__ = ["PhaseClock", "RestartTracker", "best_restart", "em_progress", "run_em"]

# called as callback(iteration, max_iter, n_active_restarts) after every EM iteration
_PROGRESS: contextvars.ContextVar[Callable[[int, int, int], None] | None] = contextvars.ContextVar(
    "gmm_core_em_progress", default=None
)


@contextlib.contextmanager
def em_progress(callback: Callable[[int, int, int], None]) -> Iterator[None]:
    """Report EM progress of every fit inside the ``with`` block.

    ``callback(iteration, max_iter, n_active_restarts)`` runs after each iteration (a progress
    bar in a CLI, a log line in a task). Asking for the number of active restarts
    synchronises a GPU engine once per iteration.
    """
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def run_em(
    engine: Engine,
    data: Any,
    params: Params,
    *,
    covariance_type: str,
    reg_covar: float,
    eps: float,
    tol: float,
    max_iter: int,
    first_bound: float,
    verbose: int = 0,
    verbose_interval: int = 10,
    shift: Any = None,
) -> EMResult:
    """The EM loop over a batch of restarts (the engine's own where it has one).

    The result's history is (iterations, R) lower bounds, NaN once a restart stopped.
    ``verbose``/``verbose_interval`` print as scikit-learn's ``GaussianMixture`` does;
    ``shift`` (D,): what the data were centred by (the M-step's means, see
    :func:`gmm_core._gaussian.estimate_parameters`).
    """
    if not verbose and _PROGRESS.get() is None:
        # the GPU engines run the whole loop on the device (None: layout needs this loop)
        result = engine.run_em(
            data,
            params,
            reg_covar=reg_covar,
            eps=eps,
            tol=tol,
            max_iter=max_iter,
            first_bound=first_bound,
            shift=shift,
        )
        if result is not None:
            return result
    xp = engine.xp
    if shift is not None:  # once per fit where the M-step runs (no copy per iteration)
        shift = xp.asarray(np.asarray(shift, dtype=np.float64))
    n_restarts = params.weights.shape[0]
    # on a device, positive-definiteness is checked at sync points, not by a sync per iteration
    deferred = xp is not np
    tracker = engine.restart_tracker(n_restarts, max_iter, first_bound, tol)
    if tracker is None:
        tracker = RestartTracker(xp, n_restarts, max_iter, first_bound, tol, deferred=deferred)
    # one restart: printed as it runs, as scikit-learn does; several run side by side, so each
    # one's block (the same lines scikit-learn prints per initialisation) follows the loop
    live = verbose and n_restarts == 1
    if live:
        print("Initialization 0")
    t_start = t_prev = time.perf_counter()
    times = [t_start]  # after each iteration
    progress = _PROGRESS.get()
    pending: Callable[[], Any] | None = None
    for it in range(1, max_iter + 1):
        stats: Stats = engine.accumulate(data, params, tracker.active)
        # an engine may run the M-step itself (CuPy, full covariance: one kernel launch)
        new_params = engine.m_step(stats, covariance_type, reg_covar, eps, shift=shift)
        if (
            new_params is not None
            and not deferred
            and not bool(xp.isfinite(new_params.precisions_cholesky).all())
        ):
            raise ValueError(ILL_DEFINED_COVARIANCE)  # as m_step(check=True) would
        if new_params is None:
            new_params = m_step(
                stats, covariance_type, reg_covar, eps, xp, check=not deferred, shift=shift
            )
        params = tracker.update(it, stats, new_params, params)
        if verbose:
            times.append(time.perf_counter())
        if live and it % verbose_interval == 0:
            now = times[-1]
            msg = f"  Iteration {it}"
            if verbose >= 2:
                change = float(engine.to_host(tracker.change)[0])  # inf first, as sklearn
                msg += f"\t time lapse {now - t_prev:.5f}s\t ll change {change:.5f}"
            print(msg, flush=True)
            t_prev = now
        if progress is not None:
            n_active = tracker.n_active(engine)
            progress(it, max_iter, n_active)
            if n_active == 0:
                break
        if deferred:
            # the flags of iteration it - 1, copied while iteration it runs: the device
            # never waits for the host, and at most one iteration runs after the last
            # restart stopped (a no-op: every restart is masked)
            reader = engine.read_later(tracker.flags())
            if pending is not None:
                any_active, has_failed = tracker.read_flags(pending())
                if has_failed:
                    raise ValueError(ILL_DEFINED_COVARIANCE)
                if not any_active:
                    break
            pending = reader
        elif tracker.n_active(engine) == 0:  # on the host: every iteration
            break
    if deferred and tracker.read_flags(engine.to_host(tracker.flags()))[1]:
        raise ValueError(ILL_DEFINED_COVARIANCE)
    hist, n_iter_h, converged_h = tracker.results(engine)
    if verbose and max_iter > 0:
        for r in range(n_restarts):
            _print_restart(
                r, hist[:, r], int(n_iter_h[r]), bool(converged_h[r]), times, first_bound,
                verbose, verbose_interval, iterations=not live,
            )  # fmt: skip
    return EMResult(params, hist, n_iter_h, converged_h)


def _print_restart(
    r: int,
    bounds: np.ndarray,
    n_iter: int,
    converged: bool,
    times: list[float],
    first_bound: float,
    verbose: int,
    interval: int,
    *,
    iterations: bool,
) -> None:
    """Restart ``r``'s verbose block as scikit-learn prints one initialisation's.

    ``bounds``: its lower bound per iteration; ``times``: the loop's clock before the first
    and after each iteration (the restarts ran side by side, so they share it);
    ``iterations``: print the header and the iteration lines too (not printed live).
    """
    if iterations:
        print(f"Initialization {r}")
        for it in range(interval, n_iter + 1, interval):
            line = f"  Iteration {it}"
            if verbose >= 2:
                before = bounds[it - 2] if it >= 2 else first_bound
                line += (
                    f"\t time lapse {times[it] - times[it - interval]:.5f}s\t ll change "
                    f"{bounds[it - 1] - before:.5f}"
                )
            print(line)
    line = f"Initialization {'converged' if converged else 'did not converge'}."
    if verbose >= 2:
        line += (
            f" time lapse {times[n_iter] - times[0]:.5f}s\t lower bound {bounds[n_iter - 1]:.5f}."
        )
    print(line, flush=True)


class RestartTracker:
    """Per-restart state of the EM loop: lower bounds, their history, iterations, convergence.

    Array-module code on the engine's arrays (NumPy, or CuPy where an engine has no tracker of
    its own, see :meth:`Engine.restart_tracker`); the generic loop reads it through these
    methods only. ``deferred``: positive-definiteness is recorded (``flags``) instead of raised
    by the M-step, and every restart goes through the per-restart selects.
    """

    def __init__(
        self,
        xp: Any,
        n_restarts: int,
        max_iter: int,
        first_bound: float,
        tol: float,
        *,
        deferred: bool,
    ) -> None:
        self.xp = xp
        self.tol = tol
        self.deferred = deferred
        self.n_restarts = n_restarts
        #: (R,) restarts still iterating (the engine's ``accumulate`` reads it)
        self.active: Any = xp.ones(n_restarts, dtype=bool)
        self.converged: Any = xp.zeros(n_restarts, dtype=bool)
        self.bound: Any = xp.full(n_restarts, first_bound, dtype=xp.float64)
        self.n_iter: Any = xp.zeros(n_restarts, dtype=xp.int64)
        self.failed: Any = xp.zeros((), dtype=bool)
        self.change: Any = None
        self.history: list[Any] = []

    def update(self, it: int, stats: Stats, new_params: Params, params: Params) -> Params:
        """Record iteration ``it`` (from 1); return the parameters the next pass uses.

        Restarts that stopped keep ``params``; the others take ``new_params``.
        """
        xp = self.xp
        new_bound = stats.loglik / stats.weight_sum
        if self.deferred:  # restarts still iterating (a stopped one's new values are dropped)
            pc = new_params.precisions_cholesky
            finite = xp.isfinite(pc.reshape(pc.shape[0], -1)).all(axis=1)
            self.failed |= (self.active & ~finite).any()
        change = new_bound - self.bound
        if not self.deferred and self.active.all():  # on the host, skip the per-restart selects
            params, self.bound = new_params, new_bound
            self.history.append(new_bound)
            self.n_iter.fill(it)
        else:
            params = select(self.active, new_params, params, xp)
            self.bound = xp.where(self.active, new_bound, self.bound)
            self.history.append(xp.where(self.active, new_bound, xp.nan))
            self.n_iter = xp.where(self.active, it, self.n_iter)
        just_converged = self.active & (xp.abs(change) < self.tol)
        self.converged |= just_converged
        self.active &= ~just_converged
        self.change = change
        return params

    def n_active(self, engine: Engine) -> int:
        """Restarts still iterating (a device engine synchronises)."""
        return int(self.active.sum())

    def flags(self) -> Any:
        """An engine array to read (one iteration late): whether any restart iterates, failed."""
        return self.xp.stack([self.active.any(), self.failed])

    def read_flags(self, host_flags: np.ndarray) -> tuple[bool, bool]:
        """``(any restart still iterating, any restart failed)`` from a host copy of ``flags``."""
        return bool(host_flags[0]), bool(host_flags[1])

    def results(self, engine: Engine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(history (iterations, R), n_iter (R,) int, converged (R,) bool)`` on the host."""
        xp = self.xp
        if self.history:
            history = engine.to_host(xp.stack(self.history))
        else:
            history = np.empty((0, self.n_restarts))
        return history, engine.to_host(self.n_iter), engine.to_host(self.converged)


def best_restart(history: np.ndarray, n_iter: np.ndarray) -> int:
    """The restart a fit keeps: the first with the largest final lower bound (as scikit-learn).

    ``history`` (iterations, R) lower bounds, ``n_iter`` (R,) iterations of every restart.
    """
    best, best_bound = 0, -np.inf
    for r in range(history.shape[1]):
        final = float(history[n_iter[r] - 1, r])
        if final > best_bound or best_bound == -np.inf:
            best, best_bound = r, final
    return best


class PhaseClock:
    """Seconds per phase of a fit (``fit_timings_``), the engine's queue drained at each lap."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.started = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        if self.engine is not None:
            self.engine.synchronize()
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
        self.last = now

    def total(self) -> float:
        return self.last - self.started
