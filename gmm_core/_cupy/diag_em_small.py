"""``diag_em_small``: whole EM iterations per launch for small diag/spherical problems.

One restart, up to 8 components, at most ``2**21`` rows and few statistics (e.g. Blobs 500k x 2,
K=5): every block of the grid is resident at once and the blocks order the steps of an
iteration (pass, block sums, M-step) by flags in global memory, so one launch runs
``graph_steps`` iterations. Serves :meth:`CupyEngine.run_em` only.
"""

from __future__ import annotations

from typing import Any

import cupy

from .config import LaunchConfig
from .data import CupyData
from .diag_common import SOURCE, DiagPlan, fused_ok, layout, mstep_ref, prepare_ref
from .kernels import KernelRef, kernel_ref, load_kernel

#: most rows, components (KMAX values compiled) and float64 accumulators per thread
#: (registers) it takes
SMALL_MAX_ROWS = 1 << 21
SMALL_KMAX = (2, 4, 8)
SMALL_MAX_ACC = 40


class DiagEmSmall:
    """``diag_em_small<T, D, SPHERICAL, KMAX>``; see the module docstring."""

    name = "diag_em_small"

    def __init__(self, config: LaunchConfig) -> None:
        self.config = config
        self._plans: dict[tuple, list[DiagPlan]] = {}

    def kmax(self, data: CupyData, n_restarts: int, n_components: int) -> int:
        """Components compiled into the kernel for this data, 0 where it does not apply.

        The caller has checked that the fused diag kernels take the data (:func:`fused_ok`).
        """
        _, n_stats, _, _ = layout(data)
        kmax = next((k for k in SMALL_KMAX if k >= n_components), 0)
        if not (
            self.config.small_kernel
            and n_restarts == 1
            and kmax
            and kmax * n_stats <= SMALL_MAX_ACC
            and data.n_samples <= SMALL_MAX_ROWS
            and data.weights is None  # weighted data: the fused passes (WEIGHTED variants)
        ):
            return 0
        return kmax

    def supports(self, data: CupyData, n_restarts: int, n_components: int) -> bool:
        """One restart, few components, rows and statistics (see the module docstring)."""
        return fused_ok(data, n_components) and self.kmax(data, n_restarts, n_components) > 0

    def kernel_ref(self, data: CupyData, kmax: int) -> KernelRef:
        """``diag_em_small`` for this data and ``kmax`` components."""
        spherical = data.covariance_type == "spherical"
        return kernel_ref(SOURCE, "diag_em_small", data.dtype, data.n_features, spherical, kmax)

    def kernel(self, data: CupyData, kmax: int) -> Any:
        """The compiled ``diag_em_small`` for this data and ``kmax`` components."""
        return load_kernel(self.kernel_ref(data, kmax))

    def kernel_refs(self, data: CupyData, n_restarts: int, n_components: int) -> list[KernelRef]:
        """Kernels of a device loop run by ``diag_em_small`` (none where it does not apply)."""
        if not self.supports(data, n_restarts, n_components):
            return []
        kmax = self.kmax(data, n_restarts, n_components)
        return [self.kernel_ref(data, kmax), prepare_ref(data), mstep_ref(data)]

    def plans(self, data: CupyData, n_restarts: int, n_components: int) -> list[DiagPlan] | None:
        """The one plan of ``diag_em_small`` for :meth:`run_em`, or None where it does not apply."""
        kmax = self.kmax(data, n_restarts, n_components)
        if not kmax:
            return None
        _, n_stats, _, _ = layout(data)
        key = (
            "small plan",
            data.covariance_type,
            data.dtype.str,
            data.n_features,
            data.n_samples,
            n_components,
            self.config.max_blocks_per_sm,
        )
        plans = self._plans.get(key)
        if plans is None:
            kern = self.kernel(data, kmax)
            threads = kern.max_threads_per_block  # its __launch_bounds__ (SmallNT in em_diag.cu)
            per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
                kern.kernel.ptr, threads, 0
            )
            if per_sm < 1:
                return None
            # every block must be resident at once (they wait for each other)
            per_sm = min(per_sm, self.config.max_blocks_per_sm or 1)
            n_blocks = max(1, min(-(-data.n_samples // threads), self.config.n_sm * per_sm))
            pstride = n_components * n_stats + 1
            plan = DiagPlan(0, 1, 0, 1, 0, n_blocks, pstride, threads=threads, small_kmax=kmax)
            plans = self._plans[key] = [plan]
        return plans
