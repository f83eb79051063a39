"""The generic EM loop on the device: its per-restart bookkeeping and diag/spherical M-step.

Where :meth:`CupyEngine.run_em` does not run the whole loop on the device (full and tied
covariance, streamed data), the estimator's loop (:func:`gmm_core._em_loop.run_em`) runs the
passes and M-steps and keeps, per restart, the lower bound, its history, the iteration count,
the convergence flags and the parameters of restarts that stopped. As CuPy array operations that
was a dozen small generated kernels (where, abs, less, logical ops, a CUB ``all``, a stack) to
compile on a process's first fit; here it is ``em_update`` of ``cuda/em_loop.cu``, launched once
per iteration, and nothing is read on the host but the flags the loop reads one iteration late
anyway. The M-step of diag and spherical covariances is ``loop_mstep`` (:func:`loop_m_step`),
one launch in place of some fifteen generated kernels.
"""

from __future__ import annotations

from typing import Any

import cupy
import numpy as np

from .._em_loop import RestartTracker
from .._engine import Engine
from .._gaussian import Params, Stats
from .kernels import KernelRef, get_kernel, kernel_ref

SOURCE = "em_loop.cu"
#: the kernels of one iteration's bookkeeping (``compile_for_fit`` lists them)
TRACKER_REFS: tuple[KernelRef, ...] = (kernel_ref(SOURCE, "em_update"),)
#: the loop's M-step of diag and spherical covariances (``loop_m_step``)
LOOP_MSTEP_REF = kernel_ref(SOURCE, "loop_mstep")
_THREADS = 256


class DeviceRestartTracker(RestartTracker):
    """:class:`~gmm_core._em_loop.RestartTracker` in device arrays updated by kernels.

    The state is int32 flags and float64 values on the current device: ``active`` and
    ``failed`` are one array (``[active (R) | failed]``), so the loop's late read of them is one
    copy. Nothing here allocates with a CuPy operation that would compile a kernel: initial
    values come from the host.
    """

    def __init__(self, n_restarts: int, max_iter: int, first_bound: float, tol: float) -> None:
        # the base class's arrays would be made by CuPy fills: everything is set here instead
        self.xp = cupy
        self.tol = tol
        self.deferred = True
        self.n_restarts = n_restarts
        flags = np.zeros(n_restarts + 1, dtype=np.int32)
        flags[:n_restarts] = 1
        self._flags = cupy.asarray(flags)
        self.active = self._flags[:n_restarts]
        self.failed = self._flags[n_restarts:]
        self.converged = cupy.zeros(n_restarts, dtype=cupy.int32)
        self.n_iter = cupy.zeros(n_restarts, dtype=cupy.int32)
        self.bound = cupy.asarray(np.full(n_restarts, first_bound, dtype=np.float64))
        self.change = cupy.zeros(n_restarts, dtype=cupy.float64)
        self.history = []
        self._rows = cupy.empty((max(1, max_iter), n_restarts), dtype=cupy.float64)
        self._arrivals = cupy.zeros(n_restarts, dtype=cupy.uint32)  # em_update's row counters
        self._iterations = 0

    def update(self, it: int, stats: Stats, new_params: Params, params: Params) -> Params:
        """Record iteration ``it``; restarts that stopped get their old parameters back."""
        r = self.n_restarts
        new = new_params.map(cupy.ascontiguousarray)  # as the M-steps make them: no copy
        old = params.map(cupy.ascontiguousarray)
        pairs = [
            (getattr(new, name), getattr(old, name))
            for name in ("weights", "means", "covariances", "precisions_cholesky")
        ]
        sizes = [a.size // r for a, _ in pairs]
        args: list[Any] = []
        for (a, b), size in zip(pairs, sizes, strict=True):
            args += [a, b, np.int64(size)]
        blocks = max(1, min(-(-max(sizes) // _THREADS), 64))
        get_kernel(SOURCE, "em_update")(
            (blocks, r),
            (_THREADS,),
            (
                *args,
                self.active,
                self.failed,
                cupy.ascontiguousarray(stats.loglik, dtype=cupy.float64),
                np.float64(stats.weight_sum),
                np.int32(it),
                np.float64(self.tol),
                self.bound,
                self.change,
                self._rows,
                self.converged,
                self.n_iter,
                self._arrivals,
            ),
        )
        self._iterations = it
        return new

    def n_active(self, engine: Engine) -> int:
        """Restarts still iterating (a copy to the host: synchronises)."""
        return int(np.count_nonzero(engine.to_host(self.active)))

    def flags(self) -> Any:
        """``[active (R) | failed]``, int32, to read one iteration late."""
        return self._flags

    def read_flags(self, host_flags: np.ndarray) -> tuple[bool, bool]:
        """``(any restart still iterating, any restart failed)`` from a host copy of ``flags``."""
        r = self.n_restarts
        return bool(np.any(host_flags[:r])), bool(host_flags[r])

    def results(self, engine: Engine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(history (iterations, R), n_iter (R,) int64, converged (R,) bool)`` on the host."""
        history = engine.to_host(self._rows[: self._iterations])
        n_iter = engine.to_host(self.n_iter).astype(np.int64)
        return history, n_iter, engine.to_host(self.converged).astype(bool)


def loop_m_step(
    stats: Stats, covariance_type: str, reg_covar: float, eps: float, shift: Any = None
) -> Params:
    """The M-step of diag or spherical covariances as one launch (``loop_mstep``).

    :func:`gmm_core._gaussian.m_step`'s values (``check=False``: a covariance that is not
    positive gives a non-finite precision factor), each operation rounded as CuPy's own
    kernels round it; only the two sums (of ``N_k`` over components, and of a spherical
    component's cross terms over features) may differ in their last bits.
    """
    n_restarts, n_components, n_features = stats.sx.shape
    f64 = cupy.float64
    diag = covariance_type == "diag"
    cov_shape = (n_restarts, n_components, n_features) if diag else (n_restarts, n_components)
    out = Params(
        cupy.empty((n_restarts, n_components)),
        cupy.empty((n_restarts, n_components, n_features)),
        cupy.empty(cov_shape),
        cupy.empty(cov_shape),
    )
    get_kernel(SOURCE, "loop_mstep")(
        (max(1, min(-(-n_components // _THREADS), 64)), n_restarts),
        (_THREADS,),
        (
            cupy.ascontiguousarray(stats.nk, dtype=f64),
            cupy.ascontiguousarray(stats.sx, dtype=f64),
            cupy.ascontiguousarray(stats.sxx, dtype=f64),
            np.int32(n_components), np.int32(n_features), np.bool_(diag),
            np.float64(reg_covar), np.float64(eps),
            np.intp(0) if shift is None else cupy.asarray(shift, dtype=f64),
            out.weights, out.means, out.covariances, out.precisions_cholesky,
        ),
    )  # fmt: skip
    return out
