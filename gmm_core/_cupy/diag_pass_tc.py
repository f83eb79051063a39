"""``diag_pass_tc``: the fused diag pass on tensor cores (3xTF32), float32 data.

Both GEMMs of the pass (log-densities and statistics) run on tensor cores for float32 diag data
with 4, 8, 12 or 16 features and up to 32 components, on compute capability 8.0 or newer; one
restart per warp, restart groups dividing the warps of a block.
"""

from __future__ import annotations

import numpy as np

from .data import CupyData
from .diag_common import SOURCE, DiagPlan, FusedDiagPass
from .kernels import KernelRef, kernel_ref

#: geometry of ``diag_pass_tc`` (``tc::Geo`` in ``em_diag.cu``): samples per warp step
TC_SLAB = 16


class DiagPassTC(FusedDiagPass):
    """``diag_pass_tc<D, MT, MSTEP, THREADS>``; see the module docstring."""

    name = "diag_pass_tc"

    def supports(self, data: CupyData, n_restarts: int, n_components: int) -> bool:
        """Whether ``diag_pass_tc`` serves this data (see ``CupyEngine(tensor_cores=...)``)."""
        d = data.n_features
        return (
            self.config.tensor_cores
            and data.covariance_type == "diag"
            and data.dtype == np.float32
            and d % 4 == 0
            and d <= 16
            and n_components <= 32
        )

    def pass_ref(
        self, data: CupyData, plan: DiagPlan, mstep_in_pass: bool, guard: bool = True
    ) -> KernelRef:
        """``diag_pass_tc`` for the plan's m-tiles and threads per block.

        ``guard=False``: the variant that does not recompute far components' logits exactly
        (Lloyd's passes, see ``GUARD`` in ``em_diag.cu``). Weighted data (``data.weights``) get
        the ``WEIGHTED`` variant.
        """
        args = (data.n_features, plan.tc_mt, mstep_in_pass, plan.threads)
        if data.weights is not None:
            return kernel_ref(SOURCE, "diag_pass_tc", *args, guard, True)
        return kernel_ref(SOURCE, "diag_pass_tc", *args, *(() if guard else (False,)))

    def plans(
        self, data: CupyData, n_restarts: int, n_components: int, *, fit_grid: bool = True
    ) -> list[DiagPlan] | None:
        """Plans of ``diag_pass_tc``, or None where it does not serve this data or device.

        The 256-thread kernel with 17-32 components needs 110 KiB of shared memory per block:
        GPUs with less (sm_86/89/120: 99 KiB) get the 128-thread variant, else the SIMT pass.
        """
        if not self.supports(data, n_restarts, n_components):
            return None
        for threads in dict.fromkeys((self.config.tc_threads, 128)):
            plans = self.geometry(data, n_restarts, n_components, threads)
            if all(plan.smem_bytes <= self.config.smem_optin for plan in plans):
                if fit_grid:
                    self.fit_grid(data, plans)
                return plans
        return None

    @staticmethod
    def geometry(
        data: CupyData, n_restarts: int, n_components: int, threads: int
    ) -> list[DiagPlan]:
        """Launch geometry of ``diag_pass_tc`` with ``threads`` per block.

        Restart groups of 1, 2, 4 (8 with 256 threads): one restart per warp, so the group size
        divides the warps of a block. Shared memory as the kernel lays it out.
        """
        d = data.n_features
        mt = -(-n_components // 16)
        cp_ = 2 * d  # statistic columns [x, x^2] (tc::Geo)
        xs = cp_ + 4
        nw = threads // 32
        n_slabs = -(-data.n_samples // TC_SLAB)
        plans = []
        r0 = 0
        while r0 < n_restarts:
            rg = 1 << min(nw.bit_length() - 1, (n_restarts - r0).bit_length() - 1)
            # slabs (hi, lo) + per-warp float64 accumulators + log-likelihoods + tail buffer
            smem = 2 * nw * TC_SLAB * xs * 4 + (nw * mt * (cp_ * 16 + 64) + nw + threads) * 8
            if threads == 128:  # + W^T fragments (hi, lo) of every restart of the group
                smem += 2 * rg * mt * (d // 4) * 32 * 16
            n_blocks = -(-n_slabs // (nw // rg))
            pstride = rg * n_components * (1 + 2 * d) + rg
            plans.append(DiagPlan(r0, r0 + rg, TC_SLAB, 1, smem, n_blocks, pstride, mt, threads))
            r0 += rg
        return plans
