"""Which pass serves a fit, and which kernels a fit compiles (the CuPy engine's choices).

:class:`StrategySelection` is a mixin of :class:`gmm_core._cupy.CupyEngine`: it reads the
engine's strategies (``diag_pass_wg``, ``diag_pass_tc``, ``diag_pass``, ``diag_em_small``,
``full_pass_tc``, ``large_k``, ``gemm``), its ``config`` and its plan cache, and holds no state
of its own. The engine runs what it chooses (``gmm_core/_cupy/engine.py``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

import cupy

from .._kmeans import LLOYD_KERNELS
from .._kmeans_seeding import SAMPLING_KERNELS, SEEDING_KERNELS
from .data import CupyData, retype
from .diag_common import DiagPlan, FusedDiagPass
from .kernels import KernelRef, compile_kernels, kernel_ref
from .tracker import LOOP_MSTEP_REF, TRACKER_REFS

if TYPE_CHECKING:
    from .config import LaunchConfig
    from .diag_em_small import DiagEmSmall
    from .diag_pass import DiagPass
    from .diag_pass_tc import DiagPassTC
    from .diag_pass_wg import DiagPassWG
    from .full_pass_tc import FullPassTC
    from .gemm import GemmPass
    from .large_k import LargeKPass

logger = logging.getLogger("gmm_core")


class FusedDiag(NamedTuple):
    """The fused diag/spherical pass chosen for a data set and shape, and its plans."""

    strategy: FusedDiagPass
    plans: list[DiagPlan]


class StrategySelection:
    """The engine's choice of pass strategy and its list of kernels (see the module docstring)."""

    config: LaunchConfig
    full_pass_tc: FullPassTC
    diag_em_small: DiagEmSmall
    diag_pass_wg: DiagPassWG
    diag_pass_tc: DiagPassTC
    diag_pass: DiagPass
    gemm: GemmPass
    large_k: LargeKPass
    _diag_plans_cache: dict[tuple, FusedDiag]
    _compiled: set[tuple]

    def fused_diag(self, data: CupyData, n_restarts: int, n_components: int) -> FusedDiag | None:
        """The fused diag/spherical pass for this data and its plans (cached per shape).

        ``diag_pass_wg`` or ``diag_pass_tc`` where one serves the data and its tiles fit, else
        ``diag_pass``; None
        where neither takes the data. Raises ``MemoryError`` where ``diag_pass``'s tiles do not
        fit shared memory (the GEMM path serves).
        """
        if not self.diag_pass.supports(data, n_restarts, n_components):
            return None
        return self._fused_diag(data, n_restarts, n_components)

    def _fused_diag(self, data: CupyData, n_restarts: int, n_components: int) -> FusedDiag:
        key = self._diag_key(data, n_restarts, n_components)
        fused = self._diag_plans_cache.get(key)
        if fused is None:
            # the first strategy that serves the data (diag_pass serves what reaches it)
            for strategy in (self.diag_pass_wg, self.diag_pass_tc, self.diag_pass):
                plans = strategy.plans(data, n_restarts, n_components)
                if plans is not None:
                    fused = FusedDiag(strategy, plans)
                    break
            assert fused is not None  # fused_diag checked diag_pass.supports
            self._diag_plans_cache[key] = fused
        return fused

    def _lloyd_diag(self, data: CupyData, n_restarts: int, n_components: int) -> FusedDiag:
        """The fused pass of Lloyd's passes: :meth:`_fused_diag`'s, or ``diag_pass_tc``.

        Where the always-guarded ``diag_pass_wg`` serves, ``diag_pass_tc`` (whose unguarded
        variant Lloyd's hard mixture needs) with its own plans, made once per shape.
        """
        fused = self._fused_diag(data, n_restarts, n_components)
        if fused.strategy is not self.diag_pass_wg:
            return fused
        key = ("lloyd", *self._diag_key(data, n_restarts, n_components))
        lloyd = self._diag_plans_cache.get(key)
        if lloyd is None:
            plans = self.diag_pass_tc.plans(data, n_restarts, n_components)
            lloyd = fused if plans is None else FusedDiag(self.diag_pass_tc, plans)
            self._diag_plans_cache[key] = lloyd
        return lloyd

    def _diag_key(self, data: CupyData, n_restarts: int, n_components: int) -> tuple:
        config = self.config
        return (
            config.shared_accumulators,
            config.tensor_cores,
            config.wgmma,
            config.tc_threads,
            data.covariance_type,
            data.dtype.str,
            data.n_features,
            data.n_samples,
            data.weights is not None,
            n_restarts,
            n_components,
        )

    def kernel_refs(
        self,
        data: CupyData,
        n_restarts: int,
        n_components: int,
        init_params: str | None = None,
    ) -> list[KernelRef]:
        """The kernels a fit of this data and shape compiles: the one place that knows.

        Mirrors :meth:`accumulate`, :meth:`run_em`, :meth:`m_step` and
        :meth:`weighted_log_prob`, and for ``init_params`` the seeding kernels (``init.cu``,
        :mod:`gmm_core._init`) and the Lloyd passes (diag layout); compiles nothing and needs
        no GPU (``config=``). Where the device's occupancy decides between two variants
        (whether a pass reduces its own partials), both are listed.
        """
        refs = self._em_kernel_refs(data, n_restarts, n_components)
        if not self._device_loop_serves(data, n_restarts, n_components):
            refs += TRACKER_REFS  # the estimator's loop: its bookkeeping kernels
            if data.covariance_type in ("diag", "spherical"):
                refs.append(LOOP_MSTEP_REF)  # and its M-step (full: full_mstep, listed above)
        if init_params in ("kmeans", "k-means++"):
            refs += [kernel_ref("init.cu", name, data.dtype) for name in SEEDING_KERNELS]
            refs += [kernel_ref("init.cu", name, of) for name, of in SAMPLING_KERNELS]
        elif init_params == "random_from_data":
            refs.append(kernel_ref("init.cu", "gather_rows", data.dtype))
        if init_params == "kmeans":
            refs += [kernel_ref("init.cu", name, of) for name, of in LLOYD_KERNELS]
            diag = retype(data, "diag")
            refs += self._em_kernel_refs(diag, n_restarts, n_components)
            if self.diag_pass_tc.supports(diag, n_restarts, n_components):  # Lloyd's passes
                plans = self.diag_pass_tc.plans(diag, n_restarts, n_components, fit_grid=False)
                refs += [self.diag_pass_tc.pass_ref(diag, p, False, False) for p in plans or []]
                if self.diag_pass_wg.supports(diag, n_restarts, n_components):
                    # their plans' occupancy query loads the guarded variant (_lloyd_diag)
                    refs += [self.diag_pass_tc.pass_ref(diag, p, False) for p in plans or []]
        return list(dict.fromkeys(refs))

    def _device_loop_serves(self, data: CupyData, n_restarts: int, n_components: int) -> bool:
        """Whether :meth:`run_em` runs the whole loop (as its checks; ``chunks`` may be empty)."""
        if not (data.resident and len(data.chunks) <= 1):
            return False
        if not self.diag_pass.supports(data, n_restarts, n_components):
            return False
        if self.diag_em_small.supports(data, n_restarts, n_components):
            return True
        try:
            if self.diag_pass_tc.plans(data, n_restarts, n_components, fit_grid=False) is None:
                self.diag_pass.plans(data, n_restarts, n_components, fit_grid=False)
        except MemoryError:
            return False
        return True

    def _em_kernel_refs(
        self, data: CupyData, n_restarts: int, n_components: int
    ) -> list[KernelRef]:
        refs: list[KernelRef] = []
        fused = True  # whether a fused pass serves (else the large-K or GEMM path)
        full_tc = self.full_pass_tc
        if full_tc.supports(data, n_restarts, n_components, quiet=True):
            u_in_smem = full_tc.u_in_smem(data.n_features, n_components)
            assert u_in_smem is not None
            refs += full_tc.kernel_refs(data.n_features, u_in_smem, data.weights is not None)
        elif self.diag_pass.supports(data, n_restarts, n_components):
            device_loop = data.resident and len(data.chunks) <= 1
            small = self.diag_em_small
            if device_loop and small.supports(data, n_restarts, n_components):
                refs += small.kernel_refs(data, n_restarts, n_components)
            else:
                strategy: FusedDiagPass = self.diag_pass_wg
                plans = strategy.plans(data, n_restarts, n_components, fit_grid=False)
                if plans is None:
                    strategy = self.diag_pass_tc
                    plans = strategy.plans(data, n_restarts, n_components, fit_grid=False)
                try:
                    if plans is None:
                        strategy = self.diag_pass
                        plans = strategy.plans(data, n_restarts, n_components, fit_grid=False)
                    refs += strategy.kernel_refs(data, plans, device_loop=device_loop)
                except MemoryError:  # the tiles do not fit shared memory
                    fused = False
        else:
            fused = False
        if not fused and self.large_k.supports(data, n_restarts, n_components):
            refs += self.large_k.kernel_refs(data)
        refs += self.gemm.kernel_refs(data)
        return refs

    def compile_for_fit(
        self,
        data: CupyData,
        n_restarts: int,
        n_components: int,
        init_params: str | None = None,
    ) -> list[str]:
        """Compile, concurrently and before anything runs, every kernel a fit needs.

        The kernels of :meth:`kernel_refs`: one batch of NVRTC compiles instead of several in a
        row. Once per engine, device and shape (:meth:`accumulate` and :meth:`run_em` ask too,
        for callers that did not); kernels already compiled (memoised, or in CuPy's disk cache)
        cost nothing. A kernel that fails to compile here is compiled again, and its error
        raised, where it is launched.
        """
        key = (
            cupy.cuda.Device().id,
            data.covariance_type,
            data.dtype.str,
            data.n_features,
            data.n_samples,
            data.resident and len(data.chunks) <= 1,
            data.weights is not None,
            n_restarts,
            n_components,
            init_params,
        )
        if key in self._compiled:
            return []
        self._compiled.add(key)
        try:  # only ahead of use: the launches compile (and raise) themselves
            return compile_kernels(self.kernel_refs(data, n_restarts, n_components, init_params))
        except Exception as exc:
            logger.debug("compiling the kernels of %s ahead of use failed: %s", key, exc)
            return []
