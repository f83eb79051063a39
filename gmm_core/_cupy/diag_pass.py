"""``diag_pass``: the fused diag/spherical pass on the SIMT cores (float32 and float64).

One kernel per pass (``cuda/em_diag.cu``) reads every sample once for all restarts of a group,
computes log-densities, log-sum-exp and responsibilities in shared memory and accumulates the
sufficient statistics per block (float64 across tiles). Serves every diag/spherical fit with up
to :data:`~.diag_common.MAX_FUSED_FEATURES` features and 256 components whose tiles fit shared
memory; ``diag_pass_tc`` takes the float32 diag shapes it serves.
"""

from __future__ import annotations

from .config import NT
from .data import CupyData
from .diag_common import SOURCE, DiagPlan, FusedDiagPass, fused_ok, layout, round4
from .kernels import KernelRef, kernel_ref

#: work items (sample, restart) per thread in phase A of the fused kernel
MAX_ITEMS_PER_THREAD = 4


def items_per_thread(tile_n: int, n_restarts: int) -> int:
    """Phase-A work items per thread compiled into ``diag_pass`` for a tile: 1, 2 or 4."""
    needed = -(-tile_n * n_restarts // NT)
    return 1 if needed <= 1 else 2 if needed <= 2 else 4


class DiagPass(FusedDiagPass):
    """``diag_pass<T, D, IPT, SPHERICAL, SHARED_ACC, MSTEP[, WEIGHTED]>``; see the module doc."""

    name = "diag_pass"

    def supports(self, data: CupyData, n_restarts: int, n_components: int) -> bool:
        """diag/spherical data with at most 32 features and 256 components."""
        return fused_ok(data, n_components)

    def pass_ref(
        self, data: CupyData, plan: DiagPlan, mstep_in_pass: bool, guard: bool = True
    ) -> KernelRef:
        """``diag_pass`` compiled for the plan's items per thread (always exact: no ``guard``).

        Weighted data (``data.weights``) get the ``WEIGHTED`` variant.
        """
        return kernel_ref(
            SOURCE,
            "diag_pass",
            data.dtype,
            data.n_features,
            plan.items_per_thread,
            data.covariance_type == "spherical",
            bool(self.config.shared_accumulators),
            mstep_in_pass,
            *(() if data.weights is None else (True,)),
        )

    def plans(
        self, data: CupyData, n_restarts: int, n_components: int, *, fit_grid: bool = True
    ) -> list[DiagPlan]:
        """Split restarts into groups whose (restart, component) rows fit one block.

        Raises ``MemoryError`` where even the smallest tile does not fit shared memory (the
        caller falls back to the GEMM path).
        """
        config = self.config
        _, n_stats, xs, ps = layout(data)
        itemsize = data.dtype.itemsize
        group = max(1, min(n_restarts, NT // n_components, NT * MAX_ITEMS_PER_THREAD // 32))
        plans = []
        for r0 in range(0, n_restarts, group):
            r1 = min(n_restarts, r0 + group)
            rg = r1 - r0
            rk = rg * n_components
            groups = NT // rk
            # samples per statistics thread per tile: long enough to amortise the float64 flush,
            # short enough to keep the tile (and with it shared memory per block) small
            per_thread = config.tile_per_thread or (16 if config.shared_accumulators else 32)
            tile_n = min(
                max(32, -(-per_thread * groups // 32) * 32),
                (NT * MAX_ITEMS_PER_THREAD // rg) // 32 * 32,
            )
            tile_n = max(32, tile_n)

            def smem(tile: int, rk: int = rk, rg: int = rg) -> int:
                rs = rk if rk % 2 else rk + 1
                ipt = items_per_thread(tile, rg)  # the kernel's IPT (1, 2 or 4), not 3
                body = (rk * ps + round4(rk) + tile * xs + tile * rs) * itemsize
                acc = rk * n_stats if config.shared_accumulators else 0
                return (body + 15) // 16 * 16 + (NT + ipt * (NT // 32) + acc) * 8

            while smem(tile_n) > config.smem_optin and tile_n > 32:
                tile_n -= 32
            if smem(tile_n) > config.smem_optin:
                raise MemoryError("fused kernel does not fit shared memory")  # caller falls back
            ipt = items_per_thread(tile_n, rg)
            n_tiles = -(-data.n_samples // tile_n)
            plans.append(DiagPlan(r0, r1, tile_n, ipt, smem(tile_n), n_tiles, rk * n_stats + rg))
        if fit_grid:
            self.fit_grid(data, plans)
        return plans
