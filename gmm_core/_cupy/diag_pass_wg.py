"""``diag_pass_wg``: the fused diag pass on Hopper's warp-group MMA (``wgmma``, sm_90a).

Serves 5 to 8 restarts per group (``n_init=8`` fits) of float32 diag data with 16 features and
up to 32 components on compute capability 9.0, unless ``GMM_CORE_WGMMA=0`` (or
``engine.config.wgmma = False``): one pass for 8 restarts in 42% of ``diag_pass_tc``'s time
(2.97 vs 7.06 ms over 10M rows on an H200; ``benchmarks/probe_wgmma_pass.py``; the research
version is ``benchmarks/wgmma_pass_rows.py``). Samples along the MMA's M: a restart's softmax
stays within four lanes; both products on ``wgmma``, the statistics' in two TF32 products with
the responsibilities rounded stochastically (see ``cuda/em_diag_wg.cu``). The pass leaves
float64 block partials in the fused passes' layout, summed by ``reduce_partials``; the M-step
is ``diag_mstep``.

Accuracy: the E-step is ``diag_pass_tc``'s expanded 3xTF32 form in the same order (the constant
first, then the x terms, then the x^2 ones), so that ``wgmma``'s float32 accumulation, which
loses digits one-sidedly in proportion to the partial sums, loses them in both directions.
1M-row fits 15 iterations from one start ended +2.6e-7 (|p|^2 ~ 100), -2.3e-5 (~ 450) and
+2.4e-6 (~ 1,100) nats per sample from the float64 fit, against +1.8e-6, -3.0e-5 and -5.7e-6
for ``diag_pass_tc`` (H200, 2026-12-04, ``benchmarks/wgmma_accuracy.py``). The constant added
after the products instead (the first form) left the first case 4.1e-5 low.
"""

from __future__ import annotations

from typing import Any

import cupy
import numpy as np

from .data import CupyData
from .diag_common import (
    REDUCE_REF,
    DiagPlan,
    FusedDiagPass,
    mstep_kernel,
    mstep_ref,
    prepare_ref,
    reduce_plan,
    tail_reduce,
)
from .kernels import KernelRef, allow_dynamic_smem, kernel_ref, load_kernel, max_carveout

FILE = "em_diag_wg.cu"
#: restarts per CTA row (two warp groups of four); groups of fewer than MIN_GROUP restarts are
#: left to ``diag_pass_tc`` (the kernel computes all eight)
GROUP = 8
MIN_GROUP = 5
#: samples per tile, threads per block, shared memory per block (``gwg::SMEM_WORDS``)
TILE = 64
THREADS = 256
#: E-step B operand: 4 k-steps x (hi, lo), then the constant's, each 256 positions x 8
W_WORDS = (4 * 2 + 1) * 256 * 8
SMEM_BYTES = 4 * (W_WORDS + 2 * 8 * (128 * 8 + 16) + 2 * 8 * (64 * 8 + 16) + 2 * 32 * 128 + 64 * 8)
#: rows below which the pass is not worth its fixed cost (one tile per SM)
MIN_SAMPLES = 1 << 16
PARAMS_REF = kernel_ref(FILE, "diag_wg_params")
PASS_REF = kernel_ref(FILE, "diag_pass_wg")


class DiagPassWG(FusedDiagPass):
    """``diag_pass_wg`` and ``diag_wg_params``; see the module docstring."""

    name = "diag_pass_wg"
    #: compiler options of the pass (tuning defines, e.g. ``("-DGMM_WG_FLUSH=4",)``)
    options: tuple[str, ...] = ()

    def supports(self, data: CupyData, n_restarts: int, n_components: int) -> bool:
        """Float32 diag data, 16 features, <= 32 components, groups of 5-8 restarts, sm_90."""
        config = self.config
        return (
            config.wgmma
            and config.tensor_cores
            and config.compute_capability == 90
            and config.smem_optin >= SMEM_BYTES
            and data.covariance_type == "diag"
            and data.dtype == np.float32
            and data.n_features == 16
            and n_components <= 32
            and data.weights is None
            and data.n_samples >= MIN_SAMPLES
            and (n_restarts % GROUP == 0 or n_restarts % GROUP >= MIN_GROUP)
        )

    def plans(
        self, data: CupyData, n_restarts: int, n_components: int, *, fit_grid: bool = True
    ) -> list[DiagPlan] | None:
        """One plan per group of up to 8 restarts; a block per SM (one per tile at most)."""
        if not self.supports(data, n_restarts, n_components):
            return None
        n_tiles = -(-data.n_samples // TILE)
        plans = []
        for r0 in range(0, n_restarts, GROUP):
            r1 = min(r0 + GROUP, n_restarts)
            rg = r1 - r0
            # + 32 words: each warp's log-likelihoods, summed in order by the block (em_diag_wg.cu)
            pstride = rg * n_components * (1 + 2 * data.n_features) + rg + 32
            n_blocks = min(self.config.n_sm, n_tiles)
            plans.append(DiagPlan(r0, r1, TILE, 1, SMEM_BYTES, n_blocks, pstride, 0, THREADS))
        return plans

    def pass_ref(
        self, data: CupyData, plan: DiagPlan, mstep_in_pass: bool, guard: bool = True
    ) -> KernelRef:
        """``diag_pass_wg``, always guarded, with no M-step variant.

        Lloyd's unguarded passes take ``diag_pass_tc`` (the engine's ``lloyd_pass``); the
        M-step is its own launch.
        """
        return PASS_REF

    def pass_kernel(
        self, data: CupyData, plan: DiagPlan, mstep_in_pass: bool, guard: bool = True
    ) -> Any:
        """The pass kernel, allowed its shared memory.

        Also makes the operand buffers, outside any graph capture (the device loop asks for
        its kernels before it captures).
        """
        self._operands()
        load_kernel(PARAMS_REF)
        ref = self.pass_ref(data, plan, mstep_in_pass, guard)
        kern = max_carveout(load_kernel(ref, self.options))
        return allow_dynamic_smem(kern, SMEM_BYTES)

    def kernel_refs(
        self, data: CupyData, plans: list[DiagPlan], *, device_loop: bool
    ) -> list[KernelRef]:
        """The parameter, pass, reduction and M-step kernels (and ``prepare_params``)."""
        refs = [prepare_ref(data), PARAMS_REF, self.pass_ref(data, plans[0], False), REDUCE_REF]
        if device_loop:
            refs.append(mstep_ref(data))
        return refs

    def launches_per_pass(self, plan: DiagPlan) -> int:
        """``diag_wg_params``, the pass, ``reduce_partials``, ``diag_mstep``."""
        return 4

    def fit_grid(self, data: CupyData, plans: list[DiagPlan]) -> None:
        """The grid is one block per SM already (227 KiB of shared memory each)."""

    def _operands(self) -> tuple[Any, Any]:
        """(W image with the constants, |p|^2) of ``diag_wg_params``, reused by every pass."""
        return (
            self.scratch.get("wg_weights", (W_WORDS,), cupy.float32),
            self.scratch.get("wg_p2", (256,), cupy.float32),
        )

    def launch_pass(
        self,
        data: CupyData,
        plan: DiagPlan,
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
        guard: bool = True,
        weights: Any = None,
    ) -> None:
        """Parameters to operands, the pass, the reduction.

        With ``mstep_table``, for a plan the device loop counts as reducing in its pass
        (:func:`tail_reduce`), the M-step too.
        """
        if weights is not None:
            raise ValueError("diag_pass_wg takes unweighted data only")
        w_img, p2 = self._operands()
        k0, k1 = plan.r0 * n_components, plan.r1 * n_components
        rg = plan.r1 - plan.r0
        load_kernel(PARAMS_REF)(
            (256 * 32 // THREADS,),  # a thread per (position, column of [x | x^2])
            (THREADS,),
            (kparams[k0:k1], log_const[k0:k1], np.int32(rg), np.int32(n_components), w_img, p2),
        )  # fmt: skip
        self.pass_kernel(data, plan, False, guard)(
            (plan.n_blocks,),
            (THREADS,),
            (chunk, np.int64(chunk.shape[0]), np.int32(rg), np.int32(n_components),
             w_img, p2, kparams[k0:k1], log_const[k0:k1], active, partial, np.int32(plan.pstride)),
            shared_mem=SMEM_BYTES,
        )  # fmt: skip
        tail = tail_reduce(plan)
        if not (reduce or tail):
            return
        reduce_plan(plan, partial, out)
        if tail and mstep_table is not None:  # the device loop launches no M-step for it
            mstep_kernel(data)((rg,), (128,), (out, np.int32(n_components), mstep_table))
