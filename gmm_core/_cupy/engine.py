"""The CuPy engine: runs the pass strategy chosen for the data.

:mod:`.selection` chooses the strategy and lists the kernels a fit compiles; see
:mod:`gmm_core._cupy`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import cupy
import cupyx
import numpy as np

from .._engine import EMResult, Engine
from .._gaussian import Params, Stats
from .config import BUDGET_ENV, LaunchConfig
from .data import (
    CupyData,
    Scratch,
    device_chunks,
    memory_budget,
    prepare,
    retype,
    scratch_bytes,
    subsample,
)
from .diag_common import DiagPlan, FusedDiagPass
from .diag_em_small import DiagEmSmall
from .diag_pass import DiagPass
from .diag_pass_tc import DiagPassTC
from .diag_pass_wg import DiagPassWG
from .full_pass_tc import FullPassTC
from .gemm import GemmPass, full_features
from .large_k import LargeKPass
from .loop import DeviceLoop
from .memory import release_memory, track_memory
from .selection import FusedDiag, StrategySelection
from .tracker import DeviceRestartTracker, loop_m_step


class _ConfigAlias:
    """An engine attribute that reads and writes ``engine.config.<field>`` (older spellings)."""

    def __init__(self, field: str) -> None:
        self.field = field

    def __get__(self, engine: Any, owner: Any = None) -> Any:
        return self if engine is None else getattr(engine.config, self.field)

    def __set__(self, engine: Any, value: Any) -> None:
        setattr(engine.config, self.field, value)


class CupyEngine(StrategySelection, Engine):
    """GPU engine; see :class:`gmm_core._engine.Engine` for the contract.

    Parameters
    ----------
    memory_budget_bytes : int, optional
        Largest data size kept on the device; larger data are streamed in row chunks. Default:
        the ``GMM_CORE_GPU_MEMORY_BUDGET`` environment variable, else half the free device memory.
    chunk_rows : int, optional
        Rows per streamed chunk (default: a quarter of the budget's worth).
    use_graphs : bool, default=True
        Capture :meth:`run_em` iterations in CUDA graphs.
    graph_steps : int, default=64
        EM iterations per CUDA graph (the host checks convergence once per graph launch).
    shared_accumulators : bool, default=False
        Fused kernel variant keeping its float64 accumulators in shared memory (fewer registers).
    tensor_cores : bool, optional
        Run the fused passes on tensor cores (3xTF32) where they apply, on compute capability
        8.0 or newer: ``diag_pass_tc`` for float32 diag data with ``n_features`` in
        {4, 8, 12, 16} and ``n_components <= 32``; ``full_pass_tc`` for float32 full-covariance
        data with ``n_features <= 32`` and ``n_components <= 32`` (more components repeat its
        E-step per group of 16: the GEMM path is faster there), U in shared memory where it
        fits (on an H100/H200 up to 23 components with 32 features), else read through L1.
        Default: the ``GMM_CORE_TENSOR_CORES`` environment variable (``0`` turns it off), else
        on.
    small_kernel : bool, optional
        Run :meth:`run_em` on small problems (one restart, up to 8 components, at most
        ``2**21`` rows, few statistics: e.g. Blobs 500k x 2, K=5) as ``diag_em_small``: many
        whole iterations per launch with every block resident, ordered by flags in global
        memory. Default: the ``GMM_CORE_SMALL_KERNEL`` environment variable (``0`` turns it
        off), else on.
    config : LaunchConfig, optional
        Device properties and settings to use instead of the current device's (the three
        settings above are then ignored): lets :meth:`kernel_refs` say which kernels a fit
        would compile without touching a GPU.
    """

    name = "cupy"
    xp = cupy
    device_init = True
    supports_sample_weight = True

    def __init__(
        self,
        memory_budget_bytes: int | None = None,
        chunk_rows: int | None = None,
        use_graphs: bool = True,
        graph_steps: int = 64,
        shared_accumulators: bool = False,
        tensor_cores: bool | None = None,
        small_kernel: bool | None = None,
        *,
        config: LaunchConfig | None = None,
    ) -> None:
        if memory_budget_bytes is None and os.environ.get(BUDGET_ENV):
            memory_budget_bytes = int(float(os.environ[BUDGET_ENV]))
        self.memory_budget_bytes = memory_budget_bytes
        self.chunk_rows = chunk_rows
        self.use_graphs = use_graphs
        self.graph_steps = graph_steps
        #: how the last :meth:`run_em` ran (CUDA graph or direct launches)
        self.last_run_info: dict[str, Any] = {}
        if config is None:
            config = LaunchConfig.for_current_device(
                tensor_cores=tensor_cores,
                small_kernel=small_kernel,
                shared_accumulators=shared_accumulators,
            )
        self.config = config
        scratch = Scratch()
        #: the pass strategies, in the order :meth:`accumulate` and :meth:`run_em` try them
        self.full_pass_tc = FullPassTC(config, scratch)
        self.diag_em_small = DiagEmSmall(config)
        self.diag_pass_wg = DiagPassWG(config, scratch)
        self.diag_pass_tc = DiagPassTC(config, scratch)
        self.diag_pass = DiagPass(config, scratch)
        # a function of the budget alone: a bound method would make engine <-> gemm a reference
        # cycle, which kept every finished fit's device memory until the garbage collector ran
        self.gemm = GemmPass(config, functools.partial(memory_budget, memory_budget_bytes))
        self.large_k = LargeKPass(
            config, scratch, functools.partial(memory_budget, memory_budget_bytes)
        )
        self._diag_plans_cache: dict[tuple, FusedDiag] = {}
        self._loop: tuple[tuple, DeviceLoop] | None = None
        self._compiled: set[tuple] = set()

    # -- data -----------------------------------------------------------------------------------
    def takes_device_arrays(self) -> bool:
        """CuPy arrays are taken as they are (never copied to the host)."""
        return True

    def asarray(self, a: Any) -> Any:
        """Host array -> device array."""
        return cupy.asarray(a)

    def to_host(self, a: Any) -> np.ndarray:
        """Device (or host) array -> NumPy array."""
        return cupy.asnumpy(a) if isinstance(a, cupy.ndarray) else np.asarray(a)

    def _budget(self) -> int:
        return memory_budget(self.memory_budget_bytes)

    def prepare(
        self, X: Any, shift: Any, covariance_type: str, *, sample_weight: Any = None
    ) -> CupyData:
        """Centre ``X`` and keep it on the device when it fits the budget, else chunk it.

        Parameters
        ----------
        X : numpy.ndarray or cupy.ndarray of shape (n_samples, n_features), float32/float64
        shift : array of shape (n_features,) or None
        covariance_type : {'full', 'tied', 'diag', 'spherical'}
        sample_weight : numpy.ndarray of shape (n_samples,), optional
            Validated weights (float64): every pass weights its statistics (the passes'
            ``WEIGHTED`` kernel variants; the GEMM path multiplies its responsibilities).
        """
        weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        return prepare(
            X,
            shift,
            covariance_type,
            budget=self._budget(),
            chunk_rows=self.chunk_rows,
            sample_weight=weight,
        )

    def device_chunks(self, data: CupyData) -> Iterator[Any]:
        """Yield the data's centred row chunks as device arrays (uploading streamed ones)."""
        return device_chunks(data)

    def retype(self, data: CupyData, covariance_type: str) -> CupyData:
        """The same data (no copy) for passes of another covariance type."""
        return retype(data, covariance_type)

    def scratch_bytes(self, data: CupyData) -> float:
        """Bytes of temporaries beside the data (:func:`gmm_core._cupy.data.scratch_bytes`)."""
        return float(scratch_bytes(data, self._budget()))

    def subsample(self, data: CupyData, step: int) -> CupyData:
        """Every ``step``-th row, centred alike, held on the device."""
        return subsample(data, step)

    def read_later(self, a: Any) -> Any:
        """Copy ``a`` into pinned host memory behind the queued work; read it when needed."""
        host = cupyx.empty_pinned(a.shape, a.dtype)
        stream = cupy.cuda.get_current_stream()
        a.get(stream=stream, out=host, blocking=False)
        event = stream.record()

        def result() -> np.ndarray:
            event.synchronize()
            return host

        return result

    def synchronize(self) -> None:
        """Wait for the current stream's queued work."""
        cupy.cuda.get_current_stream().synchronize()

    def track_memory(self) -> Any:
        """The peak of what the block allocates from the memory pool (a CuPy memory hook)."""
        return track_memory()

    @staticmethod
    def release_memory() -> None:
        """Give the pool's cached blocks back (unless ``GMM_CORE_KEEP_DEVICE_CACHE=1``)."""
        release_memory()

    # -- passes ---------------------------------------------------------------------------------
    def accumulate(self, data: CupyData, params: Params, active: Any) -> Stats:
        """One pass over the data: log-likelihood and sufficient statistics of every restart."""
        n_restarts, n_components, n_features = params.means.shape
        self.compile_for_fit(data, n_restarts, n_components)
        if self.full_pass_tc.supports(data, n_restarts, n_components):
            return self.full_pass_tc.accumulate(data, params, active)
        self.full_pass_tc.forget()
        if self.diag_pass.supports(data, n_restarts, n_components):
            try:
                fused = self._fused_diag(data, n_restarts, n_components)
                return fused.strategy.accumulate(data, params, fused.plans)
            except MemoryError:  # the kernel's tiles do not fit shared memory
                pass
        if self.large_k.supports(data, n_restarts, n_components):
            return self.large_k.accumulate(data, params, active)
        return self.gemm.accumulate(data, params)

    def lloyd_pass(self, data: CupyData, params: Params, active: Any) -> Stats:
        """:meth:`accumulate` for Lloyd: the tensor-core diag pass without its exactness guard."""
        n_restarts, n_components, _ = params.means.shape
        self.compile_for_fit(data, n_restarts, n_components)
        if self.diag_pass.supports(data, n_restarts, n_components):
            try:
                strategy, plans = self._lloyd_diag(data, n_restarts, n_components)
                return strategy.accumulate(data, params, plans, guard=False)
            except MemoryError:
                pass
        return self.accumulate(data, params, active)

    def weighted_log_prob(self, data: CupyData, params: Params) -> Any:
        """``log w_k + log N(x | k)`` of one mixture, shape (n_samples, n_components)."""
        return self.gemm.weighted_log_prob(data, params)

    def reduce_log_prob(self, data: CupyData, params: Params, reduce: Any) -> Any:
        """``reduce`` of the weighted log-densities, row chunk by row chunk (budget-sized)."""
        return self.gemm.reduce_log_prob(data, params, reduce)

    def m_step(
        self, stats: Stats, covariance_type: str, reg_covar: float, eps: float, shift: Any = None
    ) -> Params | None:
        """The M-step as one kernel launch (``full_mstep``, ``loop_mstep``), else None.

        Diag and spherical: :func:`~gmm_core._cupy.tracker.loop_m_step`.

        After a ``full_pass_tc`` pass of the same shape it also writes that pass's operands of
        the new parameters, so the next pass needs no ``full_tc_params`` launch.
        """
        if covariance_type in ("diag", "spherical"):
            return loop_m_step(stats, covariance_type, reg_covar, eps, shift)
        operands = None
        if covariance_type == "full":
            operands = self.full_pass_tc.mstep_operands(*stats.sx.shape)
        new = self.gemm.m_step(
            stats,
            covariance_type,
            reg_covar,
            eps,
            operands=operands,
            defines=self.full_pass_tc.defines,
            shift=shift,
        )
        if new is not None and operands is not None:
            self.full_pass_tc.operands_written(new, operands)
        return new

    def restart_tracker(
        self, n_restarts: int, max_iter: int, first_bound: float, tol: float
    ) -> DeviceRestartTracker:
        """The generic loop's bookkeeping as kernels (:mod:`gmm_core._cupy.tracker`)."""
        return DeviceRestartTracker(n_restarts, max_iter, first_bound, tol)

    # -- the whole EM loop on the device (diag/spherical) ------------------------------------------
    def run_em(
        self,
        data: CupyData,
        params: Params,
        *,
        reg_covar: float,
        eps: float,
        tol: float,
        max_iter: int,
        first_bound: float = -np.inf,
        shift: Any = None,
    ) -> EMResult | None:
        """Run the estimator's EM loop with every step on the device, or return ``None``.

        Same semantics as :func:`gmm_core._fit.run_model_em` (per-restart convergence on
        ``|change of lower bound| < tol``, parameters frozen once converged), for diag/spherical
        data resident on the device. Iterations run as kernels (pass, reduction, M-step), in CUDA
        graphs of ``graph_steps`` iterations; the host checks once per graph launch.

        Returns
        -------
        EMResult or None
            ``params`` device arrays (R, ...); ``history`` (max_iter, R) lower bounds with NaN
            after a restart stopped; ``n_iter`` (R,) int; ``converged`` (R,) bool. ``None`` when
            this data layout needs the generic loop.
        """
        n_restarts, n_components, n_features = params.means.shape
        if not (data.resident and len(data.chunks) == 1) or max_iter < 1:
            return None
        if not self.diag_pass.supports(data, n_restarts, n_components):
            return None
        self.compile_for_fit(data, n_restarts, n_components)
        small = self.diag_em_small.plans(data, n_restarts, n_components)
        strategy: FusedDiagPass | DiagEmSmall
        if small is not None:
            strategy, plans = self.diag_em_small, small
        else:
            try:
                strategy, plans = self._fused_diag(data, n_restarts, n_components)
            except MemoryError:
                return None
        cupy.cuda.get_current_stream().synchronize()  # params come from the caller's stream
        loop = self._device_loop(strategy, data, plans, n_restarts, n_components, max_iter)
        loop.reset(data, params, reg_covar, eps, tol, first_bound, shift=shift)
        self.last_run_info = {
            "graph": loop.graph is not None,
            "small_kernel": small is not None,
            "small_kmax": plans[0].small_kmax,
            "graph_error": loop.graph_error,
            "capture_s": loop.capture_s,
            "launches_per_iteration": loop.launches_per_iteration,
            "plans": [(p.n_blocks, p.tile_n, p.items_per_thread, p.smem_bytes) for p in plans],
        }
        return loop.run(max_iter)

    def _device_loop(
        self,
        strategy: FusedDiagPass | DiagEmSmall,
        data: CupyData,
        plans: list[DiagPlan],
        n_restarts: int,
        n_components: int,
        max_iter: int,
    ) -> DeviceLoop:
        """Buffers, launch sequence and CUDA graph of :meth:`run_em`, reused across fits."""
        key = (data.chunks[0].data.ptr, id(plans), n_restarts, n_components, max_iter)
        if self._loop is not None and self._loop[0] == key:
            return self._loop[1]
        self._loop = None  # one cached loop at a time: its graph pins its buffers
        loop = DeviceLoop(
            strategy,
            data,
            plans,
            n_restarts,
            n_components,
            max_iter,
            graph_steps=self.graph_steps,
            use_graphs=self.use_graphs,
        )
        self._loop = (key, loop)
        return loop

    # -- settings and hooks of tests and tuning scripts (benchmarks/tune_*.py) --------------------
    @property
    def tensor_cores(self) -> bool:
        """Whether the fused passes run on tensor cores where they apply."""
        return self.config.tensor_cores

    @property
    def small_kernel(self) -> bool:
        """Whether :meth:`run_em` runs small problems as ``diag_em_small``."""
        return self.config.small_kernel

    @property
    def shared_accumulators(self) -> bool:
        """Whether ``diag_pass`` keeps its float64 accumulators in shared memory."""
        return self.config.shared_accumulators

    _n_sm = _ConfigAlias("n_sm")
    _smem_optin = _ConfigAlias("smem_optin")
    _tc_threads = _ConfigAlias("tc_threads")
    _tile_per_thread = _ConfigAlias("tile_per_thread")
    _max_blocks_per_sm = _ConfigAlias("max_blocks_per_sm")
    _full_on_device = _ConfigAlias("full_on_device")
    _full_tc_force_global_u = _ConfigAlias("full_tc_force_global_u")
    _tc_geometry = staticmethod(DiagPassTC.geometry)
    _full_features = staticmethod(full_features)

    def _fused_ok(self, data: CupyData, n_restarts: int, n_components: int) -> bool:
        return self.diag_pass.supports(data, n_restarts, n_components)

    def _plans(self, data: CupyData, n_restarts: int, n_components: int) -> list[DiagPlan]:
        return self._fused_diag(data, n_restarts, n_components).plans

    def _accumulate_fused(self, data: CupyData, params: Params) -> Stats:
        fused = self._fused_diag(data, *params.means.shape[:2])
        return fused.strategy.accumulate(data, params, fused.plans)

    def _full_tc_ok(self, data: CupyData, n_components: int) -> bool:
        return self.full_pass_tc.supports(data, 1, n_components)

    def _full_tc_u_in_smem(self, n_features: int, n_components: int) -> bool | None:
        return self.full_pass_tc.u_in_smem(n_features, n_components)

    def _gemm_constants(self, data: CupyData, params: Params) -> dict[str, Any]:
        return self.gemm.constants(data, params)

    def _log_prob_chunk(self, x: Any, c: dict[str, Any], features: Any = None) -> Any:
        return self.gemm.log_prob_chunk(x, c, features)
