"""The CuPy engine: fused CUDA passes for diag/spherical and full, cuBLAS GEMMs otherwise.

diag and spherical
    One kernel per pass (``cuda/em_diag.cu``) reads every sample once for all restarts, computes
    log-densities, log-sum-exp and responsibilities in shared memory and accumulates the
    sufficient statistics per block (float64 across tiles); a second small kernel sums the block
    partials. No N x K array reaches global memory. float32 diag data with 4, 8, 12 or 16
    features and up to 32 components use ``diag_pass_tc`` instead: both GEMMs of the pass on
    tensor cores (3xTF32), see ``tensor_cores``. :meth:`CupyEngine.run_em` additionally runs
    whole EM iterations (pass, reduction, M-step, convergence test) as kernels captured in a CUDA
    graph, with a host check every ``graph_steps`` iterations.
full
    float32 data with up to 32 features: ``full_pass_tc`` (``cuda/em_full.cu``), one fused pass
    per iteration on tensor cores (3xTF32): ``y = x U_k - mu_k U_k`` for the log-densities, the
    softmax in shared memory, ``(r_k (x - m_k))^T (x - m_k)`` about each component's mean for
    the statistics, float64 across tiles. Otherwise
    (float64 data, more features, ``tensor_cores`` off) two GEMMs over row chunks of quadratic
    features ``[x_i x_j (i <= j), x]``: log-densities, then ``resp^T features``.
tied
    The Cholesky-precision formulation as GEMMs over row chunks: ``X @ U_r`` for the
    log-densities, ``resp^T X`` and ``X^T X`` for the statistics.

Data that fit the memory budget stay on the device; otherwise they are streamed from host memory
in row chunks with the same result. A ``cupy`` out-of-memory error while uploading falls back to
streaming, and during a GEMM pass to smaller chunks.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import cupy
import numpy as np

from . import _cuda_loader
from ._engine import EMResult, Engine
from ._gaussian import ILL_DEFINED_COVARIANCE, Params, Stats, log_det_cholesky

logger = logging.getLogger("gmm_core")

_LOG_2PI = math.log(2 * math.pi)
NT = _cuda_loader.THREADS_PER_BLOCK
#: widest feature count compiled into the fused diag/spherical kernel (registers hold a row)
MAX_FUSED_FEATURES = 32
#: work items (sample, restart) per thread in phase A of the fused kernel
_MAX_ITEMS_PER_THREAD = 4
#: elements of the widest temporary of one GEMM-path chunk (float32: 256 MiB)
_GEMM_CHUNK_ELEMENTS = 1 << 26
_BUDGET_ENV = "GMM_CORE_GPU_MEMORY_BUDGET"
#: rows summed by one float32 statistics GEMM before float64 accumulation takes over
_STATS_ROWS = 1 << 16
#: block partials (float64 values) up to which the pass's last block reduces them itself
_TAIL_REDUCE_MAX = 1 << 16
_TC_ENV = "GMM_CORE_TENSOR_CORES"
_SMALL_ENV = "GMM_CORE_SMALL_KERNEL"
#: ``diag_em_small``: most rows, components (KMAX values compiled) and float64 accumulators per
#: thread (registers) it takes
_SMALL_MAX_ROWS = 1 << 21
_SMALL_KMAX = (2, 4, 8)
_SMALL_MAX_ACC = 40
#: widest full covariance whose M-step and pass constants run as ``em_full.cu`` kernels (two
#: float64 D x D matrices per block in static shared memory)
_FULL_KERNEL_MAX_FEATURES = 48
#: ``full_pass_tc`` (em_full.cu): widest data, components per block group, samples per tile,
#: M-step components per warp, warps per block (``fulltc`` constants in the source)
_FULL_TC_MAX_FEATURES = 32
_FULL_TC_GROUP = 16
_FULL_TC_TILE = 128
_FULL_TC_CW = 2
_FULL_TC_WARPS = 8
#: most component groups of ``full_pass_tc``: every group of 16 repeats the E-step, so beyond
#: two the GEMM path is faster (H200, D=32, one pass: K=32 3.8 vs 4.0 ms, K=48 7.6 vs 6.8 ms,
#: K=64 12.8 vs 7.1 ms; ``benchmarks/results/tune_full_h200_k.txt``)
_FULL_TC_MAX_GROUPS = 2
#: largest float64 block-partial buffer of ``full_pass_tc`` (bytes)
_FULL_TC_PARTIAL_BYTES = 1 << 28
#: geometry of ``diag_pass_tc`` (``tc::Geo`` in ``em_diag.cu``): samples per warp step
_TC_SLAB = 16
#: threads per block of ``diag_pass_tc``: 256 (W^T in registers, measured faster) or 128
_TC_THREADS = 256


def _env_flag(name: str) -> bool:
    """An on/off environment setting, on unless set to 0/false/no/off (any case)."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


def _items_per_thread(tile_n: int, n_restarts: int) -> int:
    """Phase-A work items per thread compiled into ``diag_pass`` for a tile: 1, 2 or 4."""
    needed = -(-tile_n * n_restarts // NT)
    return 1 if needed <= 1 else 2 if needed <= 2 else 4


def _max_carveout(kern: Any) -> None:
    """Prefer all of L1 as shared memory.

    One carveout for every kernel of an iteration: the SMs need not reconfigure L1/shared memory
    between the pass and the M-step.
    """
    try:
        kern.preferred_shared_memory_carveout = 100
    except Exception:  # pragma: no cover - attribute missing in old CuPy
        pass


def _round4(n: int) -> int:
    return (n + 3) // 4 * 4


def full_tc_smem(n_features: int, n_components: int, u_in_smem: bool = True) -> int:
    """Dynamic shared memory (bytes) of ``full_pass_tc<n_features, u_in_smem>``.

    The layout of ``full_tc_smem`` in ``em_full.cu`` (``tests/test_cuda_compile.py`` checks the
    two agree).
    """
    ntd, mtd = -(-n_features // 8), -(-n_features // 16)
    dm = 16 * mtd
    xs = dm + (8 - dm % 32) % 32
    npair = ntd * (ntd + 1) // 2
    nfrag = sum(ntd - 2 * m for m in range(mtd))
    k = n_components
    doubles = _FULL_TC_WARPS * _FULL_TC_CW * nfrag * 4 * 32 + _FULL_TC_WARPS
    u_floats = k * npair * 64 if u_in_smem else 0
    floats = u_floats + k * (8 * ntd + dm) + 2 * _round4(k) + 2 * _FULL_TC_TILE * (xs + (k | 1))
    return 8 * doubles + 4 * floats


@dataclass
class CupyData:
    """Centred data on the device (or host chunks to stream), as :meth:`CupyEngine.prepare` made.

    ``chunks`` holds CuPy arrays when ``resident`` and NumPy arrays otherwise; each is a
    C-contiguous block of rows of ``X - shift`` in the fit dtype.
    """

    chunks: list[Any]
    resident: bool
    covariance_type: str
    dtype: np.dtype
    n_samples: int
    n_features: int
    upload_seconds: float = 0.0
    _xtx: Any = field(default=None, repr=False)
    _features: Any = field(default=None, repr=False)

    @property
    def X(self) -> Any:
        """The whole centred data when resident in one piece (tests, predict paths)."""
        if self.resident and len(self.chunks) == 1:
            return self.chunks[0]
        raise AttributeError("data are chunked; iterate over CupyEngine.device_chunks()")


@dataclass
class _DiagPlan:
    """Launch geometry of the fused pass for one group of restarts."""

    r0: int
    r1: int
    tile_n: int
    items_per_thread: int
    smem_bytes: int
    n_blocks: int
    pstride: int
    #: m-tiles of 16 components of the tensor-core pass (``diag_pass_tc``); 0: ``diag_pass``
    tc_mt: int = 0
    #: threads per block
    threads: int = NT
    #: components compiled into ``diag_em_small`` (whole iterations per launch); 0: a pass
    small_kmax: int = 0


class CupyEngine(Engine):
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
    """

    name = "cupy"
    xp = cupy
    sync_every = 16

    def __init__(
        self,
        memory_budget_bytes: int | None = None,
        chunk_rows: int | None = None,
        use_graphs: bool = True,
        graph_steps: int = 64,
        shared_accumulators: bool = False,
        tensor_cores: bool | None = None,
        small_kernel: bool | None = None,
    ) -> None:
        if memory_budget_bytes is None and os.environ.get(_BUDGET_ENV):
            memory_budget_bytes = int(float(os.environ[_BUDGET_ENV]))
        self.memory_budget_bytes = memory_budget_bytes
        self.chunk_rows = chunk_rows
        self.use_graphs = use_graphs
        self.graph_steps = graph_steps
        self.shared_accumulators = shared_accumulators
        self._buffers: dict[tuple, Any] = {}
        # launch-geometry overrides for tuning scripts (benchmarks/tune_fused.py)
        self._tile_per_thread: int | None = None
        self._max_blocks_per_sm: int | None = None
        self._tc_threads = _TC_THREADS
        #: full covariance: M-step and pass constants as kernels (``em_full.cu``), else CuPy ops
        self._full_on_device = True
        #: ``full_pass_tc`` reads U from global memory even where shared memory would hold it
        #: (tests and tuning compare the two)
        self._full_tc_force_global_u = False
        #: how the last :meth:`run_em` ran (CUDA graph or direct launches)
        self.last_run_info: dict[str, Any] = {}
        device = cupy.cuda.Device()
        self._n_sm = device.attributes["MultiProcessorCount"]
        if tensor_cores is None:
            tensor_cores = _env_flag(_TC_ENV)
        self.tensor_cores = bool(tensor_cores) and int(device.compute_capability) >= 80
        self.small_kernel = _env_flag(_SMALL_ENV) if small_kernel is None else bool(small_kernel)
        self._smem_optin = device.attributes.get("MaxSharedMemoryPerBlockOptin", 48 * 1024)

    # -- data -----------------------------------------------------------------------------------
    def takes_device_arrays(self) -> bool:
        return True

    def asarray(self, a: Any) -> Any:
        return cupy.asarray(a)

    def to_host(self, a: Any) -> np.ndarray:
        return cupy.asnumpy(a) if isinstance(a, cupy.ndarray) else np.asarray(a)

    def _budget(self) -> int:
        if self.memory_budget_bytes is not None:
            return int(self.memory_budget_bytes)
        free, _ = cupy.cuda.runtime.memGetInfo()
        return int(0.5 * (free + cupy.get_default_memory_pool().free_bytes()))

    def prepare(self, X: Any, shift: Any, covariance_type: str) -> CupyData:
        """Centre ``X`` and keep it on the device when it fits the budget, else chunk it.

        Parameters
        ----------
        X : numpy.ndarray or cupy.ndarray of shape (n_samples, n_features), float32/float64
        shift : array of shape (n_features,) or None
        covariance_type : {'full', 'tied', 'diag', 'spherical'}
        """
        dtype = np.dtype(X.dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"X must be float32 or float64, got {dtype}; convert it with astype")
        n_samples, n_features = X.shape
        budget = self._budget()
        started = time.perf_counter()
        if isinstance(X, cupy.ndarray):
            Xc = X - cupy.asarray(shift, dtype=dtype) if shift is not None else X
            data = CupyData(
                [cupy.ascontiguousarray(Xc)], True, covariance_type, dtype, n_samples, n_features
            )
        else:
            X = np.ascontiguousarray(X)
            data = None
            if X.nbytes <= budget:
                try:  # upload as is, centre on the device (no host copy of the data)
                    dev = cupy.asarray(X)
                    if shift is not None:
                        dev -= cupy.asarray(shift, dtype=dtype)
                    data = CupyData([dev], True, covariance_type, dtype, n_samples, n_features)
                except cupy.cuda.memory.OutOfMemoryError:
                    dev = None
                    cupy.get_default_memory_pool().free_all_blocks()
                    logger.warning(
                        "GPU out of memory uploading %.1f MB; streaming row chunks instead",
                        X.nbytes / 1e6,
                    )
            if data is None:
                host = X - np.asarray(shift, dtype=dtype) if shift is not None else X
                host = np.ascontiguousarray(host)
                rows = self.chunk_rows or max(
                    1024, budget // max(1, 4 * n_features * dtype.itemsize)
                )
                chunks = [host[i : i + rows] for i in range(0, n_samples, rows)]
                data = CupyData(chunks, False, covariance_type, dtype, n_samples, n_features)
                logger.info(
                    "data (%.1f MB) exceed the GPU memory budget (%.1f MB): streaming %d chunks",
                    host.nbytes / 1e6,
                    budget / 1e6,
                    len(chunks),
                )
        cupy.cuda.get_current_stream().synchronize()
        assert data is not None  # every branch above sets it
        data.upload_seconds = time.perf_counter() - started
        return data

    def device_chunks(self, data: CupyData) -> Any:
        """Yield the data's row chunks as device arrays (uploading streamed ones)."""
        for chunk in data.chunks:
            yield chunk if data.resident else cupy.asarray(chunk)

    def _xtx(self, data: CupyData) -> Any:
        if data._xtx is None:
            xtx = cupy.zeros((data.n_features, data.n_features))
            for chunk in self.device_chunks(data):
                c64 = chunk.astype(cupy.float64, copy=False)
                xtx += c64.T @ c64
            data._xtx = xtx
        return data._xtx

    def _full_feature_cache(self, data: CupyData, triu: tuple[Any, Any]) -> list[Any] | None:
        """Quadratic features of resident data, computed once per fit when they fit the budget."""
        if not data.resident:
            return None
        if data._features is None:
            n_cols = data.n_features * (data.n_features + 3) // 2
            nbytes = data.n_samples * n_cols * data.dtype.itemsize
            if nbytes > self._budget() // 2:
                return None
            try:
                data._features = [self._full_features(chunk, triu) for chunk in data.chunks]
            except cupy.cuda.memory.OutOfMemoryError:
                cupy.get_default_memory_pool().free_all_blocks()
                return None
        return data._features

    # -- passes ---------------------------------------------------------------------------------
    def accumulate(self, data: CupyData, params: Params, active: Any) -> Stats:
        """One pass over the data: log-likelihood and sufficient statistics of every restart."""
        n_restarts, n_components, n_features = params.means.shape
        if self._full_tc_ok(data, n_components):
            return self._accumulate_full_tc(data, params)
        if self._fused_ok(data, n_restarts, n_components):
            try:
                return self._accumulate_fused(data, params)
            except MemoryError:  # the kernel's tiles do not fit shared memory
                pass
        return self._accumulate_gemm(data, params)

    def weighted_log_prob(self, data: CupyData, params: Params) -> Any:
        """``log w_k + log N(x | k)`` of one mixture, shape (n_samples, n_components)."""
        consts = self._gemm_constants(data, params)
        parts = []
        for chunk in self.device_chunks(data):
            for start in range(0, chunk.shape[0], consts["rows"]):
                lp = self._log_prob_chunk(chunk[start : start + consts["rows"]], consts)
                parts.append(lp[:, 0, :])
        return cupy.concatenate(parts) if len(parts) > 1 else parts[0]

    # -- fused diag/spherical path ----------------------------------------------------------------
    def _fused_ok(self, data: CupyData, n_restarts: int, n_components: int) -> bool:
        return (
            data.covariance_type in ("diag", "spherical")
            and data.n_features <= MAX_FUSED_FEATURES
            and n_components <= NT
        )

    def _diag_kernels(
        self, data: CupyData, ipt: int, mstep_in_pass: bool = False
    ) -> tuple[Any, Any, Any, Any]:
        sph = "true" if data.covariance_type == "spherical" else "false"
        t = _cuda_loader.ctype(data.dtype)
        d = data.n_features
        sacc = "true" if self.shared_accumulators else "false"
        fused_m = "true" if mstep_in_pass else "false"
        names = (
            f"diag_pass<{t}, {d}, {ipt}, {sph}, {sacc}, {fused_m}>",
            f"diag_mstep<{t}, {d}, {sph}>",
            f"prepare_params<{t}, {d}, {sph}>",
        )
        key = ("kernels", *names, cupy.cuda.Device().id)
        if key not in self._buffers:
            mod = _cuda_loader.module("em_diag.cu", names)
            kernels = (
                mod.get_function(names[0]),
                mod.get_function(names[1]),
                mod.get_function(names[2]),
                mod.get_function("reduce_partials"),
            )
            for kern in kernels:
                _max_carveout(kern)
            self._buffers[key] = kernels
        return self._buffers[key]

    def _layout(self, data: CupyData) -> tuple[int, int, int, int]:
        """(Q, C, XS, PS) of ``gmm::Layout`` in ``em_diag.cu``."""
        d = data.n_features
        q = 1 if data.covariance_type == "spherical" else d
        return q, 1 + d + q, _round4(d + q), _round4(2 * d)

    def _plans(self, data: CupyData, n_restarts: int, n_components: int) -> list[_DiagPlan]:
        """Split restarts into groups whose (restart, component) rows fit one block."""
        key = (
            "plans",
            self.shared_accumulators,
            self.tensor_cores,
            self._tc_threads,
            data.covariance_type,
            data.dtype.str,
            data.n_features,
            data.n_samples,
            n_restarts,
            n_components,
        )
        if key in self._buffers:
            return self._buffers[key]
        tc_plans = self._tc_plans(data, n_restarts, n_components)
        if tc_plans is not None:
            self._buffers[key] = tc_plans
            return tc_plans
        _, n_stats, xs, ps = self._layout(data)
        itemsize = data.dtype.itemsize
        group = max(1, min(n_restarts, NT // n_components, NT * _MAX_ITEMS_PER_THREAD // 32))
        plans = []
        for r0 in range(0, n_restarts, group):
            r1 = min(n_restarts, r0 + group)
            rg = r1 - r0
            rk = rg * n_components
            groups = NT // rk
            # samples per statistics thread per tile: long enough to amortise the float64 flush,
            # short enough to keep the tile (and with it shared memory per block) small
            per_thread = self._tile_per_thread or (16 if self.shared_accumulators else 32)
            tile_n = min(
                max(32, -(-per_thread * groups // 32) * 32),
                (NT * _MAX_ITEMS_PER_THREAD // rg) // 32 * 32,
            )
            tile_n = max(32, tile_n)

            def smem(tile: int, rk: int = rk, rg: int = rg) -> int:
                rs = rk if rk % 2 else rk + 1
                ipt = _items_per_thread(tile, rg)  # the kernel's IPT (1, 2 or 4), not 3
                body = (rk * ps + _round4(rk) + tile * xs + tile * rs) * itemsize
                acc = rk * n_stats if self.shared_accumulators else 0
                return (body + 15) // 16 * 16 + (NT + ipt * (NT // 32) + acc) * 8

            while smem(tile_n) > self._smem_optin and tile_n > 32:
                tile_n -= 32
            if smem(tile_n) > self._smem_optin:
                raise MemoryError("fused kernel does not fit shared memory")  # caller falls back
            ipt = _items_per_thread(tile_n, rg)
            n_tiles = -(-data.n_samples // tile_n)
            plans.append(_DiagPlan(r0, r1, tile_n, ipt, smem(tile_n), n_tiles, rk * n_stats + rg))
        self._fit_grid(data, plans)
        self._buffers[key] = plans
        return plans

    def _small_plans(
        self, data: CupyData, n_restarts: int, n_components: int
    ) -> list[_DiagPlan] | None:
        """The one plan of ``diag_em_small`` for :meth:`run_em`, or None where it does not apply."""
        _, n_stats, _, _ = self._layout(data)
        kmax = next((k for k in _SMALL_KMAX if k >= n_components), 0)
        if not (
            self.small_kernel
            and n_restarts == 1
            and kmax
            and kmax * n_stats <= _SMALL_MAX_ACC
            and data.n_samples <= _SMALL_MAX_ROWS
        ):
            return None
        key = (
            "small plan",
            data.covariance_type,
            data.dtype.str,
            data.n_features,
            data.n_samples,
            n_components,
            self._max_blocks_per_sm,
        )
        plans = self._buffers.get(key)
        if plans is None:
            kern = self._small_kernel(data, kmax)
            threads = kern.max_threads_per_block  # its __launch_bounds__ (SmallNT in em_diag.cu)
            per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
                kern.kernel.ptr, threads, 0
            )
            if per_sm < 1:
                return None
            # every block must be resident at once (they wait for each other)
            per_sm = min(per_sm, self._max_blocks_per_sm or 1)
            n_blocks = max(1, min(-(-data.n_samples // threads), self._n_sm * per_sm))
            pstride = n_components * n_stats + 1
            plan = _DiagPlan(0, 1, 0, 1, 0, n_blocks, pstride, threads=threads, small_kmax=kmax)
            plans = self._buffers[key] = [plan]
        return plans

    def _small_kernel(self, data: CupyData, kmax: int) -> Any:
        sph = "true" if data.covariance_type == "spherical" else "false"
        t = _cuda_loader.ctype(data.dtype)
        name = f"diag_em_small<{t}, {data.n_features}, {sph}, {kmax}>"
        key = ("kernel", name, cupy.cuda.Device().id)
        if key not in self._buffers:
            self._buffers[key] = _cuda_loader.module("em_diag.cu", (name,)).get_function(name)
        return self._buffers[key]

    def _tc_ok(self, data: CupyData, n_components: int) -> bool:
        """Whether ``diag_pass_tc`` serves this data (see ``tensor_cores``)."""
        d = data.n_features
        return (
            self.tensor_cores
            and data.covariance_type == "diag"
            and data.dtype == np.float32
            and d % 4 == 0
            and d <= 16
            and n_components <= 32
        )

    def _tc_plans(
        self, data: CupyData, n_restarts: int, n_components: int
    ) -> list[_DiagPlan] | None:
        """Plans of ``diag_pass_tc``, or None where it does not serve this data or device.

        The 256-thread kernel with 17-32 components needs 110 KiB of shared memory per block:
        GPUs with less (sm_86/89/120: 99 KiB) get the 128-thread variant, else the SIMT pass.
        """
        if not self._tc_ok(data, n_components):
            return None
        for threads in dict.fromkeys((self._tc_threads, 128)):
            plans = self._tc_geometry(data, n_restarts, n_components, threads)
            if all(plan.smem_bytes <= self._smem_optin for plan in plans):
                self._fit_grid(data, plans)
                return plans
        return None

    @staticmethod
    def _tc_geometry(
        data: CupyData, n_restarts: int, n_components: int, threads: int
    ) -> list[_DiagPlan]:
        """Launch geometry of ``diag_pass_tc`` with ``threads`` per block.

        Restart groups of 1, 2, 4 (8 with 256 threads): one restart per warp, so the group size
        divides the warps of a block. Shared memory as the kernel lays it out.
        """
        d = data.n_features
        mt = -(-n_components // 16)
        cp_ = 2 * d  # statistic columns [x, x^2] (tc::Geo)
        xs = cp_ + 4
        nw = threads // 32
        n_slabs = -(-data.n_samples // _TC_SLAB)
        plans = []
        r0 = 0
        while r0 < n_restarts:
            rg = 1 << min(nw.bit_length() - 1, (n_restarts - r0).bit_length() - 1)
            # slabs (hi, lo) + per-warp float64 accumulators + log-likelihoods + tail buffer
            smem = 2 * nw * _TC_SLAB * xs * 4 + (nw * mt * (cp_ * 16 + 64) + nw + threads) * 8
            if threads == 128:  # + W^T fragments (hi, lo) of every restart of the group
                smem += 2 * rg * mt * (d // 4) * 32 * 16
            n_blocks = -(-n_slabs // (nw // rg))
            pstride = rg * n_components * (1 + 2 * d) + rg
            plans.append(_DiagPlan(r0, r0 + rg, _TC_SLAB, 1, smem, n_blocks, pstride, mt, threads))
            r0 += rg
        return plans

    def _fit_grid(self, data: CupyData, plans: list[_DiagPlan]) -> None:
        """Persistent grids: at most the blocks that are resident at once on the device."""
        for plan in plans:
            kern = self._pass_kernel(data, plan, False)
            try:
                per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
                    kern.kernel.ptr, plan.threads, plan.smem_bytes
                )
            except Exception:  # pragma: no cover - older CuPy
                per_sm = 1
            per_sm = min(per_sm, self._max_blocks_per_sm or per_sm)
            plan.n_blocks = max(1, min(plan.n_blocks, self._n_sm * max(1, per_sm)))

    def _tc_kernel(self, data: CupyData, plan: _DiagPlan, mstep_in_pass: bool) -> Any:
        mstep = "true" if mstep_in_pass else "false"
        name = f"diag_pass_tc<{data.n_features}, {plan.tc_mt}, {mstep}, {plan.threads}>"
        key = ("tc-kernel", name, cupy.cuda.Device().id)
        if key not in self._buffers:
            kern = _cuda_loader.module("em_diag.cu", (name,)).get_function(name)
            _max_carveout(kern)
            self._buffers[key] = kern
        return self._buffers[key]

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: Any, zero: bool = False) -> Any:
        key = (name, shape, np.dtype(dtype).str)
        buf = self._buffers.get(key)
        if buf is None:
            alloc = cupy.zeros if zero else cupy.empty
            buf = self._buffers[key] = alloc(shape, dtype=dtype)
        return buf

    def _kernel_params(
        self, data: CupyData, params: Params, out: tuple[Any, Any] | None = None
    ) -> tuple[Any, Any]:
        """Per (restart, component) rows of (s_d, -mu_d s_d) and log constants, fit dtype."""
        n_restarts, n_components, _ = params.means.shape
        _, _, _, ps = self._layout(data)
        rk = n_restarts * n_components
        if out is None:
            out = (cupy.empty((rk, ps), dtype=data.dtype), cupy.empty(rk, dtype=data.dtype))
        kparams, log_const = out
        prep = self._diag_kernels(data, 1)[2]
        prep(
            (-(-rk // 128),),
            (128,),
            (
                cupy.ascontiguousarray(params.weights, dtype=cupy.float64),
                cupy.ascontiguousarray(params.means, dtype=cupy.float64),
                cupy.ascontiguousarray(params.precisions_cholesky, dtype=cupy.float64),
                np.int32(rk),
                kparams,
                log_const,
            ),
        )
        return kparams, log_const

    def _launch_pass(
        self,
        data: CupyData,
        plan: _DiagPlan,
        chunk: Any,
        n_components: int,
        kparams: Any,
        log_const: Any,
        active: Any,
        partial: Any,
        out: Any,
        counter: Any = None,
        mstep_table: Any = None,
        reduce: bool = True,
    ) -> None:
        """One pass (+ reduction) of a restart group; with ``mstep_table`` also its M-step.

        With ``reduce=False`` a pass that does not reduce its block partials itself (see
        :meth:`_tail_reduce`) leaves them in ``partial`` for the caller.
        """
        tail = self._tail_reduce(plan)
        kern_pass = self._pass_kernel(data, plan, tail and mstep_table is not None)
        kern_reduce = self._diag_kernels(data, plan.items_per_thread)[3]
        k0 = plan.r0 * n_components
        k1 = plan.r1 * n_components
        counter = cupy.zeros(1, dtype=cupy.uint32) if tail and counter is None else counter
        kern_pass(
            (plan.n_blocks,),
            (plan.threads,),
            (
                chunk,
                np.int64(chunk.shape[0]),
                np.int32(plan.r1 - plan.r0),
                np.int32(n_components),
                kparams[k0:k1],
                log_const[k0:k1],
                active,
                np.int32(plan.tile_n),
                np.int32(plan.pstride),
                partial,
                counter if tail else np.intp(0),
                out,
                mstep_table if tail and mstep_table is not None else np.intp(0),
            ),
            shared_mem=plan.smem_bytes,
        )
        if tail or not reduce:
            return
        kern_reduce(
            (-(-plan.pstride // 32),),
            (32, 8),
            (partial, np.int32(plan.n_blocks), np.int32(plan.pstride), out),
        )

    def _pass_kernel(self, data: CupyData, plan: _DiagPlan, mstep_in_pass: bool) -> Any:
        """The plan's pass kernel, allowed the plan's dynamic shared memory."""
        if plan.tc_mt:
            kern = self._tc_kernel(data, plan, mstep_in_pass)
        else:
            kern = self._diag_kernels(data, plan.items_per_thread, mstep_in_pass)[0]
        key = ("smem", id(kern))
        if plan.smem_bytes > 48 * 1024 and self._buffers.get(key, 0) < plan.smem_bytes:
            kern.max_dynamic_shared_size_bytes = plan.smem_bytes
            self._buffers[key] = plan.smem_bytes
        return kern

    @staticmethod
    def _tail_reduce(plan: _DiagPlan) -> bool:
        """Small problems: the pass's last block reduces the partials (one launch fewer)."""
        return plan.n_blocks * plan.pstride <= _TAIL_REDUCE_MAX

    def _accumulate_fused(self, data: CupyData, params: Params) -> Stats:
        n_restarts, n_components, n_features = params.means.shape
        _, n_stats, _, _ = self._layout(data)
        plans = self._plans(data, n_restarts, n_components)
        kparams, log_const = self._kernel_params(data, params)
        null = np.intp(0)  # no active mask: every restart is computed
        loglik, stats = [], []
        for plan in plans:
            rg = plan.r1 - plan.r0
            partial = self._buffer("partial", (plan.n_blocks, plan.pstride), cupy.float64)
            total: Any = None
            for chunk in self.device_chunks(data):
                out = cupy.empty(plan.pstride, dtype=cupy.float64)
                self._launch_pass(
                    data, plan, chunk, n_components, kparams, log_const, null, partial, out
                )
                total = out if total is None else total + out
            stats.append(total[: rg * n_components * n_stats].reshape(rg, n_components, n_stats))
            loglik.append(total[rg * n_components * n_stats :])
        st = stats[0] if len(stats) == 1 else cupy.concatenate(stats)
        ll = loglik[0] if len(loglik) == 1 else cupy.concatenate(loglik)
        sxx = st[..., 1 + n_features :]
        if data.covariance_type == "spherical":
            sxx = sxx[..., 0]
        return Stats(
            ll,
            cupy.ascontiguousarray(st[..., 0]),
            cupy.ascontiguousarray(st[..., 1 : 1 + n_features]),
            cupy.ascontiguousarray(sxx),
            data.n_samples,
        )

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
    ) -> EMResult | None:
        """Run the estimator's EM loop with every step on the device, or return ``None``.

        Same semantics as :meth:`gmm_core.GaussianMixture._run_em` (per-restart convergence on
        ``|change of lower bound| < tol``, parameters frozen once converged), for diag/spherical
        data resident on the device. Iterations run as kernels (pass, reduction, M-step), in CUDA
        graphs of ``graph_steps`` iterations; the host checks once per graph launch.

        Returns
        -------
        (params, history, n_iter, converged) or None
            ``params`` device arrays (R, ...); ``history`` (max_iter, R) lower bounds with NaN
            after a restart stopped; ``n_iter`` (R,) int; ``converged`` (R,) bool. ``None`` when
            this data layout needs the generic loop.
        """
        n_restarts, n_components, n_features = params.means.shape
        if not (data.resident and len(data.chunks) == 1) or max_iter < 1:
            return None
        if not self._fused_ok(data, n_restarts, n_components):
            return None
        small = self._small_plans(data, n_restarts, n_components)
        try:
            plans = small if small is not None else self._plans(data, n_restarts, n_components)
        except MemoryError:
            return None
        cupy.cuda.get_current_stream().synchronize()  # params come from the caller's stream
        loop = self._device_loop(data, plans, n_restarts, n_components, max_iter)
        loop.reset(self, data, params, reg_covar, eps, tol, first_bound)
        state = loop.state
        self.last_run_info = {
            "graph": loop.graph is not None,
            "small_kernel": small is not None,
            "small_kmax": plans[0].small_kmax,
            "graph_error": loop.graph_error,
            "capture_s": loop.capture_s,
            "launches_per_iteration": loop.launches_per_iteration,
            "plans": [(p.n_blocks, p.tile_n, p.items_per_thread, p.smem_bytes) for p in plans],
        }
        stream = loop.stream
        with stream:
            drive_launches(
                loop.launch, loop.steps, max_iter, state.flags, loop.flag_buffers, stream
            )
            stream.synchronize()  # a failure is raised below, once the stream is idle
            if loop.sync is not None and int(loop.sync[2].get()):
                raise RuntimeError(
                    "diag_em_small: blocks waited in vain for each other (not every block of "
                    "the grid was resident); set GMM_CORE_SMALL_KERNEL=0 or "
                    "CupyEngine(small_kernel=False) to run small problems as passes"
                )
            if cupy.asnumpy(state.failed).any():
                raise ValueError(ILL_DEFINED_COVARIANCE)
        history = cupy.asnumpy(state.history).T.copy()
        return EMResult(
            state.params.map(cupy.copy),
            history,
            cupy.asnumpy(state.n_iter).astype(np.int64),
            cupy.asnumpy(state.converged).astype(bool),
        )

    def _device_loop(
        self,
        data: CupyData,
        plans: list[_DiagPlan],
        n_restarts: int,
        n_components: int,
        max_iter: int,
    ) -> _DeviceLoop:
        """Buffers, launch sequence and CUDA graph of :meth:`run_em`, reused across fits."""
        key = ("loop", data.chunks[0].data.ptr, id(plans), n_restarts, n_components, max_iter)
        loop = self._buffers.get(key)
        if loop is None:
            # one cached loop at a time: its graph pins its buffers
            for old in [k for k in self._buffers if k[0] == "loop"]:
                del self._buffers[old]
            loop = _DeviceLoop(self, data, plans, n_restarts, n_components, max_iter)
            self._buffers[key] = loop
        return loop

    # -- GEMM path (full, tied; diag/spherical beyond the fused kernel's limits) -------------------
    def _full_kernel(self, name: str) -> Any:
        key = ("kernel", name, cupy.cuda.Device().id)
        if key not in self._buffers:
            self._buffers[key] = _cuda_loader.module("em_full.cu", (name,)).get_function(name)
        return self._buffers[key]

    def _full_on_device_ok(self, n_features: int) -> bool:
        """Whether the full-covariance M-step and constants run as ``em_full.cu`` kernels."""
        return self._full_on_device and n_features <= _FULL_KERNEL_MAX_FEATURES

    def m_step(
        self, stats: Stats, covariance_type: str, reg_covar: float, eps: float
    ) -> Params | None:
        """Full covariance: the M-step as one kernel launch (``full_mstep``); else None.

        Same formulas as :func:`gmm_core._gaussian.m_step`; a covariance that is not positive
        definite gives NaN precision factors (the estimator's loop raises at its next check).
        """
        if covariance_type != "full":
            return None
        n_restarts, n_components, n_features = stats.sx.shape
        if not self._full_on_device_ok(n_features):
            return None
        rk = n_restarts * n_components
        f64 = cupy.float64
        shape = (n_restarts, n_components, n_features)
        out = Params(
            cupy.empty(shape[:2]),
            cupy.empty(shape),
            cupy.empty((*shape, n_features)),
            cupy.empty((*shape, n_features)),
        )
        self._full_kernel(f"full_mstep<{n_features}>")(
            (rk,),
            (256,),
            (
                cupy.ascontiguousarray(stats.nk, dtype=f64),
                cupy.ascontiguousarray(stats.sx, dtype=f64),
                cupy.ascontiguousarray(stats.sxx, dtype=f64),
                np.int32(n_components),
                np.float64(reg_covar),
                np.float64(eps),
                out.weights,
                out.means,
                out.covariances,
                out.precisions_cholesky,
            ),
        )
        return out

    # -- fused full-covariance pass on tensor cores ----------------------------------------------
    def _full_tc_u_in_smem(self, n_features: int, n_components: int) -> bool | None:
        """Where ``full_pass_tc`` keeps the E-step's U fragments.

        Shared memory (True), global memory through L1 (False: more components than shared
        memory holds), or None where even the rest does not fit (the GEMM path serves).
        """
        for u_in_smem in (True, False):
            if self._full_tc_force_global_u and u_in_smem:
                continue
            if full_tc_smem(n_features, n_components, u_in_smem) <= self._smem_optin:
                return u_in_smem
        return None

    def _full_tc_ok(self, data: CupyData, n_components: int) -> bool:
        """Whether ``full_pass_tc`` serves this data (see ``tensor_cores``)."""
        ok = (
            self.tensor_cores
            and data.covariance_type == "full"
            and data.dtype == np.float32
            and data.n_features <= _FULL_TC_MAX_FEATURES
            and n_components <= _FULL_TC_GROUP * _FULL_TC_MAX_GROUPS
        )
        if not ok:
            return False
        if self._full_tc_u_in_smem(data.n_features, n_components) is None:
            key = ("full-tc-declined", data.n_features, n_components)
            if key not in self._buffers:  # say it once per shape
                self._buffers[key] = True
                logger.info(
                    "full covariance, %d features, %d components: the tensor-core pass's "
                    "operands exceed shared memory; using the GEMM path",
                    data.n_features,
                    n_components,
                )
            return False
        return True

    def _full_tc_kernels(self, n_features: int, u_in_smem: bool, smem: int) -> tuple[Any, Any, Any]:
        usm = "true" if u_in_smem else "false"
        names = (f"full_tc_params<{n_features}>", f"full_pass_tc<{n_features}, {usm}>")
        key = ("full-tc", *names, cupy.cuda.Device().id)
        if key not in self._buffers:
            mod = _cuda_loader.module("em_full.cu", names)
            reduce = _cuda_loader.module("em_diag.cu", ("reduce_partials",))
            kernels = (
                mod.get_function(names[0]),
                mod.get_function(names[1]),
                reduce.get_function("reduce_partials"),
            )
            _max_carveout(kernels[1])
            self._buffers[key] = kernels
        kern_pass = self._buffers[key][1]
        if kern_pass.max_dynamic_shared_size_bytes < smem:
            kern_pass.max_dynamic_shared_size_bytes = smem
        return self._buffers[key]

    def _accumulate_full_tc(self, data: CupyData, params: Params) -> Stats:
        """One ``full_pass_tc`` launch per row chunk; float64 statistics as ``_accumulate_gemm``."""
        R, K, D = params.means.shape
        rk = R * K
        ntd = -(-D // 8)
        u_in_smem = self._full_tc_u_in_smem(D, K)
        assert u_in_smem is not None  # _full_tc_ok checked it
        smem = full_tc_smem(D, K, u_in_smem)
        kern_params, kern_pass, kern_reduce = self._full_tc_kernels(D, u_in_smem, smem)
        f64 = cupy.float64
        ufrag = self._buffer("full-tc-u", (rk, ntd * (ntd + 1) // 2, 32, 2), cupy.float32)
        bvec = self._buffer("full-tc-b", (rk, 8 * ntd), cupy.float32)
        lconst = self._buffer("full-tc-c", (rk,), cupy.float32)
        mvec = self._buffer("full-tc-m", (rk, 16 * -(-D // 16)), cupy.float32)
        far = self._buffer("full-tc-far", (rk,), cupy.int32)
        kern_params(
            (rk,),
            (256,),
            (
                cupy.ascontiguousarray(params.weights, dtype=f64),
                cupy.ascontiguousarray(params.means, dtype=f64),
                cupy.ascontiguousarray(params.precisions_cholesky, dtype=f64),
                ufrag,
                bvec,
                lconst,
                mvec,
                far,
            ),
        )
        groups = -(-K // _FULL_TC_GROUP)
        pstride = rk * (1 + D + D * D) + R
        longest = max(chunk.shape[0] for chunk in data.chunks)
        n_blocks = max(1, min(self._n_sm, -(-longest // _FULL_TC_TILE)))
        # many restarts: fewer blocks per restart keep the partials within _FULL_TC_PARTIAL_BYTES
        # (the grid's R * groups rows of blocks still fill the device)
        n_blocks = max(1, min(n_blocks, _FULL_TC_PARTIAL_BYTES // (8 * pstride)))
        partial = self._buffer("full-tc-partial", (n_blocks, pstride), f64)
        total: Any = None
        for chunk in self.device_chunks(data):
            blocks = max(1, min(n_blocks, -(-chunk.shape[0] // _FULL_TC_TILE)))
            kern_pass(  # restarts (and component groups) fastest: a tile is read from HBM once
                (R * groups, blocks),
                (_FULL_TC_WARPS * 32,),
                (
                    chunk,
                    np.int64(chunk.shape[0]),
                    np.int32(K),
                    ufrag,
                    bvec,
                    lconst,
                    mvec,
                    far,
                    np.int32(pstride),
                    partial,
                ),
                shared_mem=smem,
            )
            out = cupy.empty(pstride, dtype=f64)
            kern_reduce(
                (-(-pstride // 32),), (32, 8), (partial, np.int32(blocks), np.int32(pstride), out)
            )
            total = out if total is None else total + out
        nk = total[:rk].reshape(R, K)
        sx = total[rk : rk * (1 + D)].reshape(R, K, D)
        sxx = total[rk * (1 + D) : rk * (1 + D + D * D)].reshape(R, K, D, D)
        return Stats(total[rk * (1 + D + D * D) :], nk, sx, sxx, data.n_samples)

    def _gemm_constants(self, data: CupyData, params: Params) -> dict[str, Any]:
        """Everything a chunk needs, in the fit dtype, computed once per pass."""
        cov = data.covariance_type
        dt = data.dtype
        n_restarts, n_components, n_features = params.means.shape
        rk = n_restarts * n_components
        pc = params.precisions_cholesky
        out: dict[str, Any] = {"cov": cov, "R": n_restarts, "K": n_components, "D": n_features}
        full_on_device = cov == "full" and self._full_on_device_ok(n_features)
        if not full_on_device:
            log_det = log_det_cholesky(pc, cov, n_features, cupy)
            if cov == "tied":
                log_det = log_det[:, None]
            const = -0.5 * n_features * _LOG_2PI + log_det + cupy.log(params.weights)
            out["const"] = const.reshape(1, n_restarts, n_components).astype(dt)
        if full_on_device:
            # full_constants (em_full.cu): M and the constants below, one launch
            n_tri = n_features * (n_features + 1) // 2
            M = cupy.empty((n_tri + n_features, rk), dtype=dt)
            const_k = cupy.empty(rk, dtype=dt)
            self._full_kernel(f"full_constants<{_cuda_loader.ctype(dt)}, {n_features}>")(
                (rk,),
                (256,),
                (
                    cupy.ascontiguousarray(params.weights, dtype=cupy.float64),
                    cupy.ascontiguousarray(params.means, dtype=cupy.float64),
                    cupy.ascontiguousarray(pc, dtype=cupy.float64),
                    np.int32(rk),
                    M,
                    const_k,
                ),
            )
            iu0, iu1, _ = self._triu(n_features)
            out["M"] = M
            out["const"] = const_k.reshape(1, n_restarts, n_components)
            out["triu"] = (iu0, iu1)
            width = n_tri + n_features + rk
        elif cov == "full":
            # |(x - mu) U|^2 = phi(x) . w + x . v + mu^T P mu with P = U U^T and phi(x) the
            # upper-triangular products x_i x_j: one GEMM over resp-independent features
            iu0, iu1, scale = self._triu(n_features)
            prec = cupy.matmul(pc, pc.swapaxes(-1, -2))  # (R, K, D, D)
            w_quad = prec[..., iu0, iu1] * scale  # (R, K, T)
            v_lin = -2.0 * cupy.matmul(prec, params.means[..., None])[..., 0]  # -2 P mu
            c_quad = -0.5 * (v_lin * params.means).sum(-1)  # mu^T P mu
            weights = cupy.concatenate([w_quad, v_lin], axis=-1).reshape(rk, -1)
            out["M"] = (-0.5 * weights).T.astype(dt)  # (T + D, RK)
            out["const"] = (const - 0.5 * c_quad).reshape(1, n_restarts, n_components).astype(dt)
            out["triu"] = (iu0, iu1)
            width = len(iu0) + n_features + rk
        elif cov == "tied":
            out["U"] = pc.astype(dt)  # (R, D, D)
            mu_u = cupy.matmul(params.means, pc)  # (R, K, D)
            out["muU_T"] = mu_u.transpose(0, 2, 1).astype(dt)  # (R, D, K)
            out["muU_sq"] = (mu_u**2).sum(-1).reshape(n_restarts, 1, n_components).astype(dt)
            width = n_restarts * max(n_features, n_components)
        else:
            prec = pc**2
            if cov == "spherical":
                prec = cupy.broadcast_to(prec[..., None], params.means.shape)
            # log N = x^2 . (-prec/2) + x . (mu prec) - (mu^2 prec)/2 (+ const); x is centred
            out["Wq"] = (-0.5 * prec).reshape(rk, n_features).T.astype(dt)
            out["Wl"] = (params.means * prec).reshape(rk, n_features).T.astype(dt)
            quad = (params.means**2 * prec).sum(-1)
            out["const"] = (const - 0.5 * quad).reshape(1, n_restarts, n_components).astype(dt)
            width = rk + n_features
        out["rows"] = int(max(256, _GEMM_CHUNK_ELEMENTS // max(width, 1)))
        return out

    def _triu(self, n_features: int) -> tuple[Any, Any, Any]:
        """Device indices of the upper triangle and the weights (1 diagonal, 2 off) of x_i x_j."""
        key = ("triu", n_features, cupy.cuda.Device().id)
        if key not in self._buffers:
            iu0, iu1 = np.triu_indices(n_features)
            self._buffers[key] = (
                cupy.asarray(iu0),
                cupy.asarray(iu1),
                cupy.asarray(np.where(iu0 == iu1, 1.0, 2.0)),
            )
        return self._buffers[key]

    @staticmethod
    def _full_features(x: Any, triu: tuple[Any, Any]) -> Any:
        """``[x_i x_j (i <= j), x]`` of a row chunk, shape (rows, D(D+1)/2 + D)."""
        return cupy.concatenate([x[:, triu[0]] * x[:, triu[1]], x], axis=1)

    def _log_prob_chunk(self, x: Any, c: dict[str, Any], features: Any = None) -> Any:
        """Weighted log-densities of a row chunk, shape (rows, R, K)."""
        n = x.shape[0]
        R, K = c["R"], c["K"]
        if c["cov"] == "full":
            if features is None:
                features = self._full_features(x, c["triu"])
            return (features @ c["M"]).reshape(n, R, K) + c["const"]
        if c["cov"] == "tied":
            y = cupy.matmul(x[None], c["U"])  # (R, n, D)
            cross = cupy.matmul(y, c["muU_T"])  # (R, n, K)
            sq = (y * y).sum(-1)[..., None] - 2 * cross + c["muU_sq"]
            return c["const"] - 0.5 * sq.transpose(1, 0, 2)
        lin = (x * x) @ c["Wq"] + x @ c["Wl"]
        return lin.reshape(n, R, K) + c["const"]

    def _accumulate_gemm(self, data: CupyData, params: Params) -> Stats:
        c = self._gemm_constants(data, params)
        R, K, D = c["R"], c["K"], c["D"]
        cov = data.covariance_type
        loglik = cupy.zeros(R)
        nk = cupy.zeros((R, K))
        sx = cupy.zeros((R * K, D))
        sxx: Any
        cached = None
        if cov == "full":
            n_tri = D * (D + 1) // 2
            s_feat = cupy.zeros((R * K, n_tri + D))
            cached = self._full_feature_cache(data, c["triu"])
        elif cov == "tied":
            sxx = self._xtx(data)
        elif cov == "diag":
            sxx = cupy.zeros((R * K, D))
        else:
            sxx = cupy.zeros(R * K)
        rows = c["rows"]
        if cov == "full" and cached is not None:  # the only wide temporary is (rows, R*K)
            rows = max(rows, _GEMM_CHUNK_ELEMENTS // (R * K))
        for i_chunk, chunk in enumerate(self.device_chunks(data)):
            start = 0
            while start < chunk.shape[0]:
                x = chunk[start : start + rows]
                try:
                    feats = None
                    if cov == "full":
                        feats = (
                            cached[i_chunk][start : start + rows]
                            if cached is not None
                            else self._full_features(x, c["triu"])
                        )
                    lp = self._log_prob_chunk(x, c, feats)
                    amax = lp.max(axis=2, keepdims=True)
                    lp -= amax
                    cupy.exp(lp, out=lp)
                    norm = lp.sum(axis=2, keepdims=True)
                    lp /= norm
                    resp = lp.reshape(x.shape[0], R * K)
                    lse = cupy.log(norm[..., 0].astype(cupy.float64)) + amax[..., 0]  # (n, R)
                    # column sums as GEMMs: CuPy's axis-0 reductions are slow for few columns;
                    # every product first, the sums after: an out-of-memory error part-way
                    # must not leave this chunk half added before it is retried smaller
                    chunk_ll = cupy.ones(x.shape[0]) @ lse
                    ones = cupy.ones((x.shape[0], 1), dtype=resp.dtype)
                    chunk_nk = _resp_t_dot(resp, ones).reshape(R, K)
                    if cov == "full":
                        chunk_feat = _resp_t_dot(resp, feats)
                    else:
                        chunk_sx = _resp_t_dot(resp, x)
                        if cov == "diag":
                            chunk_sxx = _resp_t_dot(resp, x * x)
                        elif cov == "spherical":
                            chunk_sxx = _resp_t_dot(resp, (x * x).sum(axis=1)[:, None])[:, 0]
                except cupy.cuda.memory.OutOfMemoryError:
                    if rows <= 256:
                        raise
                    cupy.get_default_memory_pool().free_all_blocks()
                    rows //= 2
                    logger.warning("GPU out of memory in a pass; retrying with %d-row chunks", rows)
                    continue
                loglik += chunk_ll
                nk += chunk_nk
                if cov == "full":
                    s_feat += chunk_feat
                else:
                    sx += chunk_sx
                    if cov in ("diag", "spherical"):
                        sxx += chunk_sxx
                start += x.shape[0]
        if cov == "full":
            sx = s_feat[:, n_tri:]
            tri = s_feat[:, :n_tri].reshape(R, K, n_tri)
            sxx = cupy.empty((R, K, D, D))
            iu0, iu1 = c["triu"]
            sxx[..., iu0, iu1] = tri
            sxx[..., iu1, iu0] = tri
        sx = cupy.ascontiguousarray(sx).reshape(R, K, D)
        if cov in ("diag", "spherical"):
            sxx = sxx.reshape((R, K, D) if cov == "diag" else (R, K))
        return Stats(loglik, nk, sx, sxx, data.n_samples)


def drive_launches(
    launch: Any, steps: int, max_iter: int, flags: Any, host_flags: list[Any], stream: Any
) -> int:
    """Call ``launch()`` (``steps`` iterations each) until ``max_iter`` or every restart stopped.

    The restart flags (``_DeviceLoopState.flags``, on ``stream``) of launch i are copied into
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
            failed, running = _DeviceLoopState.read_flags(previous[1])
            if failed or not running:
                break
        previous = (event, host)
    return done


def _resp_t_dot(resp: Any, feats: Any) -> Any:
    """``resp.T @ feats`` in float64: float32 GEMMs over row blocks, summed in float64.

    Blocks of ``_STATS_ROWS`` rows keep each float32 sum short; a batched GEMM over the blocks
    measured 2.4x slower on an H100 than this loop (its operand is a transposed view).
    """
    n_rows = resp.shape[0]
    if resp.dtype == cupy.float64:
        return resp.T @ feats
    out = cupy.zeros((resp.shape[1], feats.shape[1]))
    for start in range(0, n_rows, _STATS_ROWS):
        out += resp[start : start + _STATS_ROWS].T @ feats[start : start + _STATS_ROWS]
    return out


class _DeviceLoop:
    """The device EM loop of one data set and shape: state, buffers, launches, CUDA graph.

    The M-step kernels take their many arguments as one table of 17 words (``MStepArgs`` in
    ``em_diag.cu``); the graph captures ``graph_steps`` iterations once and is replayed, with
    the state reset in place, by every later fit of the same shape.
    """

    def __init__(
        self,
        engine: CupyEngine,
        data: CupyData,
        plans: list[_DiagPlan],
        n_restarts: int,
        n_components: int,
        max_iter: int,
    ) -> None:
        _, _, _, ps = engine._layout(data)
        rk = n_restarts * n_components
        d = data.n_features
        rk_shape = (n_restarts, n_components)
        var_shape = rk_shape if data.covariance_type == "spherical" else (*rk_shape, d)
        flags = cupy.zeros((4, n_restarts), dtype=cupy.int32)
        self.state = _DeviceLoopState(
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
        self.plans = plans
        self.partials = [cupy.empty((p.n_blocks, p.pstride), dtype=cupy.float64) for p in plans]
        self.outs = [cupy.empty(p.pstride, dtype=cupy.float64) for p in plans]
        self.counters = [cupy.zeros(1, dtype=cupy.uint32) for _ in plans]
        self.tables = [cupy.zeros(17, dtype=cupy.uint64) for _ in plans]
        self.n_components = n_components
        self.max_iter = max_iter
        self.engine = engine
        self.data = data
        self.kern_mstep = engine._diag_kernels(data, 1)[1]
        self.steps = max(1, min(engine.graph_steps, max_iter))
        #: diag_em_small: the kernel and its flags (arrivals, step done, timed out)
        self.kern_small: Any = None
        self.sync: Any = None
        if plans[0].small_kmax:
            self.kern_small = engine._small_kernel(data, plans[0].small_kmax)
            self.sync = cupy.zeros(3, dtype=cupy.uint32)
            self.launches_per_iteration = 1 / self.steps
        else:
            for plan in plans:  # compile and configure outside any graph capture
                engine._pass_kernel(data, plan, engine._tail_reduce(plan))
            self.launches_per_iteration = sum(1 if engine._tail_reduce(p) else 3 for p in plans)
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.graph: Any = None
        self.graph_error: str | None = None
        self.capture_s = 0.0
        self._captured = False

    def reset(
        self,
        engine: CupyEngine,
        data: CupyData,
        params: Params,
        reg_covar: float,
        eps: float,
        tol: float,
        first_bound: float,
        synchronize: bool = True,
    ) -> None:
        """Load initial parameters and settings into the buffers the graph reads.

        ``synchronize=False`` leaves the copies queued on ``self.stream`` (whatever runs next
        on that stream sees them; the multi-GPU loop resets every device before waiting).
        """
        st = self.state
        with self.stream:
            for name in ("weights", "means", "covariances", "precisions_cholesky"):
                cupy.copyto(getattr(st.params, name), getattr(params, name), casting="unsafe")
            st.bound.fill(first_bound)
            st.history.fill(np.nan)
            st.active.fill(1)
            st.converged.fill(0)
            st.n_iter.fill(0)
            st.failed.fill(0)
            if self.sync is not None:
                self.sync.fill(0)
            engine._kernel_params(data, st.params, out=self.kparams)
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
                words += [int(np.float64(x).view(np.uint64)) for x in (reg_covar, eps, tol)]
                words += [self.max_iter, data.n_samples]
                table.set(np.array(words, dtype=np.uint64))
            if synchronize:
                self.stream.synchronize()
        if not self._captured:
            self._captured = True
            self._capture(engine)

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
        st = self.state
        for plan, partial, out, counter, table in zip(
            self.plans, self.partials, self.outs, self.counters, self.tables, strict=True
        ):
            r0, r1 = plan.r0, plan.r1
            self.engine._launch_pass(
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
            )
            if not self.engine._tail_reduce(plan):
                self.kern_mstep((r1 - r0,), (128,), (out, np.int32(self.n_components), table))

    def _capture(self, engine: CupyEngine) -> None:
        if not engine.use_graphs or self.kern_small is not None:
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


@dataclass
class _DeviceLoopState:
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
