"""The whole EM loop on the device (diag/spherical): buffers, launches, CUDA graph, host checks.

Iterations run as kernels (pass, reduction, M-step) of a fused pass strategy, captured as
``graph_steps`` iterations in a CUDA graph, or as ``diag_em_small`` launches of many whole
iterations each; the host reads the restart flags of one launch while the next one runs
(:func:`drive_launches`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import cupy
import numpy as np

from .._engine import EMResult
from .._gaussian import ILL_DEFINED_COVARIANCE, Params
from .copies import duplicate
from .data import CupyData
from .diag_common import (
    DiagPlan,
    FusedDiagPass,
    kernel_params,
    layout,
    mstep_kernel,
    reduce_kernel,
    tail_reduce,
)
from .diag_em_small import DiagEmSmall

logger = logging.getLogger("gmm_core")


def drive_launches(
    launch: Any, steps: int, max_iter: int, flags: Any, host_flags: list[Any], stream: Any
) -> int:
    """Call ``launch()`` (``steps`` iterations each) until ``max_iter`` or every restart stopped.

    The restart flags (``DeviceLoopState.flags``, on ``stream``) of launch i are copied into
    ``host_flags[i % 2]`` (pinned) and read while launch i + 1 runs, so the device never waits for
    the host; iterations launched after every restart stopped are no-ops on the device. Stops at
    the first read that shows a failed restart or none running; returns the iterations launched.
    """
    done, n_launch, previous = 0, 0, None
    while done < max_iter:
        launch()
        done += steps
        host = host_flags[n_launch % 2]
        n_launch += 1
        flags.get(stream=stream, out=host, blocking=False)
        event = stream.record()
        if previous is not None:
            previous[0].synchronize()
            failed, running = DeviceLoopState.read_flags(previous[1])
            if failed or not running:
                break
        previous = (event, host)
    return done


@dataclass
class DeviceLoopState:
    """Device arrays the M-step kernel updates in place."""

    params: Params
    bound: Any
    history: Any  # (R, max_iter)
    active: Any
    converged: Any
    n_iter: Any
    failed: Any
    #: (4, R) int32: the rows above (active, converged, n_iter, failed), one copy to read
    flags: Any

    @staticmethod
    def read_flags(host_flags: np.ndarray) -> tuple[bool, bool]:
        """(any restart failed, any restart still iterating) from a host copy of ``flags``."""
        return bool(host_flags[3].any()), bool(host_flags[0].any())


class DeviceLoop:
    """The device EM loop of one data set and shape: state, buffers, launches, CUDA graph.

    The M-step kernels take their many arguments as one table of 18 words (``MStepArgs`` in
    ``em_diag.cu``); the graph captures ``steps`` iterations once and is replayed, with the
    state reset in place, by every later fit of the same shape.

    Parameters
    ----------
    strategy : FusedDiagPass or DiagEmSmall
        What made ``plans`` (and launches them).
    data : CupyData
        Resident in one chunk.
    plans : list of DiagPlan
    n_restarts, n_components, max_iter : int
    graph_steps : int
        Iterations per CUDA graph or ``diag_em_small`` launch (at most ``max_iter``).
    use_graphs : bool
        Capture the iterations of a pass strategy in a CUDA graph.
    """

    def __init__(
        self,
        strategy: FusedDiagPass | DiagEmSmall,
        data: CupyData,
        plans: list[DiagPlan],
        n_restarts: int,
        n_components: int,
        max_iter: int,
        *,
        graph_steps: int,
        use_graphs: bool,
    ) -> None:
        _, _, _, ps = layout(data)
        rk = n_restarts * n_components
        d = data.n_features
        rk_shape = (n_restarts, n_components)
        var_shape = rk_shape if data.covariance_type == "spherical" else (*rk_shape, d)
        flags = cupy.zeros((4, n_restarts), dtype=cupy.int32)
        self.state = DeviceLoopState(
            Params(
                cupy.zeros(rk_shape),
                cupy.zeros((*rk_shape, d)),
                cupy.zeros(var_shape),
                cupy.zeros(var_shape),
            ),
            cupy.zeros(n_restarts),
            cupy.zeros((n_restarts, max_iter)),
            flags[0],  # active, converged, n_iter, failed: rows of one array
            flags[1],
            flags[2],
            flags[3],
            flags,
        )
        # host copies of the flags, read while the next graph runs (pinned: asynchronous copy)
        self.flag_buffers = [
            np.frombuffer(
                cupy.cuda.alloc_pinned_memory(flags.nbytes), dtype=np.int32, count=flags.size
            ).reshape(flags.shape)
            for _ in range(2)
        ]
        self.kparams = (cupy.empty((rk, ps), dtype=data.dtype), cupy.empty(rk, dtype=data.dtype))
        self.strategy = strategy
        self.plans = plans
        self.partials = [cupy.empty((p.n_blocks, p.pstride), dtype=cupy.float64) for p in plans]
        self.outs = [cupy.empty(p.pstride, dtype=cupy.float64) for p in plans]
        self.counters = [cupy.zeros(1, dtype=cupy.uint32) for _ in plans]
        self.tables = [cupy.zeros(18, dtype=cupy.uint64) for _ in plans]
        #: what the data were centred by (the M-step's means, _gaussian.estimate_parameters)
        self.shift = cupy.zeros(d, dtype=cupy.float64)
        self.n_components = n_components
        self.max_iter = max_iter
        self.data = data
        self.use_graphs = use_graphs
        self.kern_mstep = mstep_kernel(data)
        self.steps = max(1, min(graph_steps, max_iter))
        #: diag_em_small: the kernel and its flags (arrivals, step done, timed out)
        self.kern_small: Any = None
        self.sync: Any = None
        self.passes: FusedDiagPass | None = None
        if plans[0].small_kmax:
            assert isinstance(strategy, DiagEmSmall)
            self.kern_small = strategy.kernel(data, plans[0].small_kmax)
            self.sync = cupy.zeros(3, dtype=cupy.uint32)
            self.launches_per_iteration = 1 / self.steps
        else:
            assert isinstance(strategy, FusedDiagPass)
            self.passes = strategy
            for plan in plans:  # compile and configure outside any graph capture
                strategy.pass_kernel(data, plan, tail_reduce(plan))
            if not all(tail_reduce(p) for p in plans):
                reduce_kernel()
            self.launches_per_iteration = sum(strategy.launches_per_pass(p) for p in plans)
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.graph: Any = None
        self.graph_error: str | None = None
        self.capture_s = 0.0
        self._captured = False

    def reset(
        self,
        data: CupyData,
        params: Params,
        reg_covar: float,
        eps: float,
        tol: float,
        first_bound: float,
        synchronize: bool = True,
        shift: Any = None,
    ) -> None:
        """Load initial parameters and settings into the buffers the graph reads.

        ``shift`` (D,): what the data were centred by (None: zeros), as
        :func:`gmm_core._gaussian.estimate_parameters` takes it.

        ``data`` gives the dtype and what the lower bound divides by: its ``total_weight``, else
        its number of rows (the multi-GPU loop passes a shard with every device's rows and
        weight). ``synchronize=False`` leaves
        the copies queued on ``self.stream`` (whatever runs next on that stream sees them; the
        multi-GPU loop resets every device before waiting).
        """
        st = self.state
        n_restarts = st.bound.shape[0]
        with self.stream:
            for name in ("weights", "means", "covariances", "precisions_cholesky"):
                cupy.copyto(getattr(st.params, name), getattr(params, name), casting="unsafe")
            # initial values from the host (a fill would be a CuPy kernel to compile)
            st.bound.set(np.full(n_restarts, first_bound, dtype=np.float64), stream=self.stream)
            st.history.set(np.full(st.history.shape, np.nan), stream=self.stream)
            centre = np.zeros(self.shift.shape) if shift is None else cupy.asnumpy(shift)
            centre = np.ascontiguousarray(centre, dtype=np.float64)
            self.shift.set(centre, stream=self.stream)
            flags = np.zeros(st.flags.shape, dtype=st.flags.dtype)
            flags[0] = 1  # active; converged, n_iter, failed: 0
            st.flags.set(flags, stream=self.stream)
            if self.sync is not None:
                self.sync.fill(0)  # zero: a memset
            kernel_params(data, st.params, out=self.kparams)
            k = self.n_components
            for plan, table in zip(self.plans, self.tables, strict=True):
                r0, r1 = plan.r0, plan.r1
                ptrs = [
                    st.params.weights[r0:r1],
                    st.params.means[r0:r1],
                    st.params.covariances[r0:r1],
                    st.params.precisions_cholesky[r0:r1],
                    self.kparams[0][r0 * k : r1 * k],
                    self.kparams[1][r0 * k : r1 * k],
                    st.bound[r0:r1],
                    st.history[r0:r1],
                    st.active[r0:r1],
                    st.converged[r0:r1],
                    st.n_iter[r0:r1],
                    st.failed[r0:r1],
                ]
                words = [a.data.ptr for a in ptrs]
                # the last word: what the lower bound divides by (the total weight), as bits
                divisor = float(data.n_samples if data.total_weight is None else data.total_weight)
                words += [int(np.float64(x).view(np.uint64)) for x in (reg_covar, eps, tol)]
                words += [self.max_iter, int(np.float64(divisor).view(np.uint64))]
                words += [self.shift.data.ptr]
                table.set(np.array(words, dtype=np.uint64))
            if synchronize:
                self.stream.synchronize()
        if not self._captured:
            self._captured = True
            self._capture()

    def launch(self) -> None:
        """``steps`` iterations on ``self.stream``: the graph, a small-kernel launch, or passes."""
        if self.graph is not None:
            self.graph.launch(self.stream)
        elif self.kern_small is not None:
            plan = self.plans[0]
            with self.stream:
                self.sync[:2].fill(0)  # sync[2] (timed out) stays set until the next fit
                self.kern_small(
                    (plan.n_blocks,),
                    (plan.threads,),
                    (
                        self.data.chunks[0],
                        np.int64(self.data.n_samples),
                        np.int32(self.n_components),
                        np.int32(self.steps),
                        self.partials[0],
                        np.int32(plan.pstride),
                        self.sync,
                        self.tables[0],
                    ),
                )
        else:
            with self.stream:
                for _ in range(self.steps):
                    self.one_iteration()

    def one_iteration(self) -> None:
        """Every restart group's pass (+ reduction and M-step) on the current stream."""
        st = self.state
        assert self.passes is not None
        for plan, partial, out, counter, table in zip(
            self.plans, self.partials, self.outs, self.counters, self.tables, strict=True
        ):
            r0, r1 = plan.r0, plan.r1
            self.passes.launch_pass(
                self.data,
                plan,
                self.data.chunks[0],
                self.n_components,
                self.kparams[0],
                self.kparams[1],
                st.active[r0:r1],
                partial,
                out,
                counter,
                table,
                weights=self.data.weights,
            )
            if not tail_reduce(plan):
                self.kern_mstep((r1 - r0,), (128,), (out, np.int32(self.n_components), table))

    def run(self, max_iter: int) -> EMResult:
        """Launch until every restart stopped or ``max_iter``; the results on the host.

        ``params`` device copies (R, ...), ``history`` (max_iter, R) lower bounds with NaN after
        a restart stopped.
        """
        state = self.state
        stream = self.stream
        with stream:
            drive_launches(
                self.launch, self.steps, max_iter, state.flags, self.flag_buffers, stream
            )
            stream.synchronize()  # a failure is raised below, once the stream is idle
            if self.sync is not None and int(self.sync[2].get()):
                raise RuntimeError(
                    "diag_em_small: blocks waited in vain for each other (not every block of "
                    "the grid was resident); set GMM_CORE_SMALL_KERNEL=0 or "
                    "CupyEngine(small_kernel=False) to run small problems as passes"
                )
            if cupy.asnumpy(state.failed).any():
                raise ValueError(ILL_DEFINED_COVARIANCE)
        history = cupy.asnumpy(state.history).T.copy()
        return EMResult(
            state.params.map(duplicate),  # memcpy: the next fit reuses the state
            history,
            cupy.asnumpy(state.n_iter).astype(np.int64),
            cupy.asnumpy(state.converged).astype(bool),
        )

    def _capture(self) -> None:
        if not self.use_graphs or self.kern_small is not None:
            return
        stream = self.stream
        started = time.perf_counter()
        with stream:
            try:
                stream.begin_capture()
                for _ in range(self.steps):
                    self.one_iteration()
                self.graph = stream.end_capture()
                self.graph.upload(stream)
                stream.synchronize()
            except Exception as exc:  # capture unsupported: launch directly
                logger.info("CUDA graph capture failed (%s); launching kernels directly", exc)
                self.graph_error = f"{type(exc).__name__}: {exc}"
                if stream.is_capturing():
                    stream.end_capture()
                self.graph = None
        self.capture_s = time.perf_counter() - started
