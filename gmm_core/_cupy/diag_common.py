"""What the fused diag/spherical passes share: plans, layout, parameter prep, launch, M-step.

``diag_pass`` (:mod:`.diag_pass`) and ``diag_pass_tc`` (:mod:`.diag_pass_tc`) read every sample
once for all restarts of a group and leave float64 block partials that ``reduce_partials`` sums
(or the pass's last block itself, see :func:`tail_reduce`); their launches take the same
arguments, so :class:`FusedDiagPass` launches either. The M-step (``diag_mstep``) and the
parameter preparation (``prepare_params``) are the same for both and for ``diag_em_small``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cupy
import numpy as np

from .._gaussian import Params, Stats
from .config import NT, LaunchConfig
from .copies import add_into, copy_rows
from .data import CupyData, Scratch, weighted_chunks
from .kernels import KernelRef, allow_dynamic_smem, kernel_ref, load_kernel, max_carveout

#: widest feature count compiled into the fused diag/spherical kernel (registers hold a row)
MAX_FUSED_FEATURES = 32
#: block partials (float64 values) up to which the pass's last block reduces them itself
TAIL_REDUCE_MAX = 1 << 16
SOURCE = "em_diag.cu"


@dataclass
class DiagPlan:
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


def round4(n: int) -> int:
    """``n`` rounded up to a multiple of 4."""
    return (n + 3) // 4 * 4


def layout(data: CupyData) -> tuple[int, int, int, int]:
    """(Q, C, XS, PS) of ``gmm::Layout`` in ``em_diag.cu``."""
    d = data.n_features
    q = 1 if data.covariance_type == "spherical" else d
    return q, 1 + d + q, round4(d + q), round4(2 * d)


def tail_reduce(plan: DiagPlan) -> bool:
    """Small problems: the pass's last block reduces the partials (one launch fewer)."""
    return plan.n_blocks * plan.pstride <= TAIL_REDUCE_MAX


def fused_ok(data: CupyData, n_components: int) -> bool:
    """Whether the fused diag/spherical kernels take this data at all (``diag_pass``'s limits)."""
    return (
        data.covariance_type in ("diag", "spherical")
        and data.n_features <= MAX_FUSED_FEATURES
        and n_components <= NT
    )


def _template_args(data: CupyData) -> tuple[Any, ...]:
    """Template arguments of ``diag_mstep`` and ``prepare_params``: (dtype, D, spherical)."""
    return (data.dtype, data.n_features, data.covariance_type == "spherical")


def mstep_ref(data: CupyData) -> KernelRef:
    """``diag_mstep``: the M-step of every restart of a group from its reduced pass output."""
    return kernel_ref(SOURCE, "diag_mstep", *_template_args(data))


def prepare_ref(data: CupyData) -> KernelRef:
    """``prepare_params``: the passes' per-component rows from the parameters."""
    return kernel_ref(SOURCE, "prepare_params", *_template_args(data))


REDUCE_REF = kernel_ref(SOURCE, "reduce_partials")


def mstep_kernel(data: CupyData) -> Any:
    """The compiled ``diag_mstep`` of this data's dtype, width and covariance type."""
    return max_carveout(load_kernel(mstep_ref(data)))


def reduce_kernel() -> Any:
    """``reduce_partials``: the sum of a pass's block partials."""
    return max_carveout(load_kernel(REDUCE_REF))


def reduce_plan(plan: DiagPlan, partial: Any, out: Any) -> None:
    """``out`` = the sum of ``plan``'s block partials (``reduce_partials``)."""
    reduce_kernel()(
        (-(-plan.pstride // 32),),
        (32, 8),
        (partial, np.int32(plan.n_blocks), np.int32(plan.pstride), out),
    )


def kernel_params(
    data: CupyData, params: Params, out: tuple[Any, Any] | None = None
) -> tuple[Any, Any]:
    """Per (restart, component) rows of (s_d, -mu_d s_d) and log constants, fit dtype."""
    n_restarts, n_components, _ = params.means.shape
    _, _, _, ps = layout(data)
    rk = n_restarts * n_components
    if out is None:
        out = (cupy.empty((rk, ps), dtype=data.dtype), cupy.empty(rk, dtype=data.dtype))
    kparams, log_const = out
    prep = max_carveout(load_kernel(prepare_ref(data)))
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


class FusedDiagPass:
    """A fused diag/spherical pass strategy: plans, kernels and launches.

    Subclasses say which data they serve (:meth:`supports`), how restarts are grouped and the
    grid laid out (:meth:`plans`) and which kernel runs a plan (:meth:`pass_ref`).
    """

    #: the kernel family's name (``last_run_info``, logs)
    name = ""

    def __init__(self, config: LaunchConfig, scratch: Scratch) -> None:
        self.config = config
        self.scratch = scratch

    def supports(self, data: CupyData, n_restarts: int, n_components: int) -> bool:
        """Whether this strategy serves the data (before shared-memory limits)."""
        raise NotImplementedError

    def plans(
        self, data: CupyData, n_restarts: int, n_components: int, *, fit_grid: bool = True
    ) -> list[DiagPlan] | None:
        """Launch plans of every restart group (None or ``MemoryError``: tiles do not fit).

        ``fit_grid=False`` leaves each grid at one block per tile (nothing is compiled): the
        shape of the plans, for :meth:`kernel_refs`.
        """
        raise NotImplementedError

    def pass_ref(
        self, data: CupyData, plan: DiagPlan, mstep_in_pass: bool, guard: bool = True
    ) -> KernelRef:
        """The plan's pass kernel.

        ``mstep_in_pass``: the variant whose last block runs the M-step after reducing the
        partials. ``guard=False``: a variant for Lloyd's passes, which need only the winning
        component of each sample (the tensor-core pass then skips its exact recomputation of
        far components' logits).
        """
        raise NotImplementedError

    def launches_per_pass(self, plan: DiagPlan) -> int:
        """Kernel launches of one device-loop iteration of ``plan``.

        The pass (whose last block reduces and runs the M-step), or the pass,
        ``reduce_partials`` and ``diag_mstep``.
        """
        return 1 if tail_reduce(plan) else 3

    # -- kernels --------------------------------------------------------------------------------
    def pass_kernel(
        self, data: CupyData, plan: DiagPlan, mstep_in_pass: bool, guard: bool = True
    ) -> Any:
        """The plan's compiled pass kernel, allowed the plan's dynamic shared memory."""
        kern = max_carveout(load_kernel(self.pass_ref(data, plan, mstep_in_pass, guard)))
        return allow_dynamic_smem(kern, plan.smem_bytes)

    def kernel_refs(
        self, data: CupyData, plans: list[DiagPlan], *, device_loop: bool
    ) -> list[KernelRef]:
        """Kernels a pass (and, with ``device_loop``, the device loop) over ``plans`` launches.

        ``plans`` as :meth:`plans` makes them with ``fit_grid=False``: where the grid's cap on
        resident blocks decides whether the pass reduces its partials itself, both variants.
        """
        refs = [prepare_ref(data)]
        for plan in plans:
            refs.append(self.pass_ref(data, plan, False))
            capped = min(plan.n_blocks, self.config.n_sm)  # at least one block per SM resident
            if not tail_reduce(plan):
                refs.append(REDUCE_REF)
            if device_loop and capped * plan.pstride <= TAIL_REDUCE_MAX:
                refs.append(self.pass_ref(data, plan, True))
        if device_loop:
            refs.append(mstep_ref(data))
        return list(dict.fromkeys(refs))

    def fit_grid(self, data: CupyData, plans: list[DiagPlan]) -> None:
        """Persistent grids: at most the blocks that are resident at once on the device."""
        for plan in plans:
            kern = self.pass_kernel(data, plan, False)
            try:
                per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
                    kern.kernel.ptr, plan.threads, plan.smem_bytes
                )
            except Exception:  # pragma: no cover - older CuPy
                per_sm = 1
            per_sm = min(per_sm, self.config.max_blocks_per_sm or per_sm)
            plan.n_blocks = max(1, min(plan.n_blocks, self.config.n_sm * max(1, per_sm)))

    # -- launches -------------------------------------------------------------------------------
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
        """One pass (+ reduction) of a restart group; with ``mstep_table`` also its M-step.

        With ``reduce=False`` a pass that does not reduce its block partials itself (see
        :func:`tail_reduce`) leaves them in ``partial`` for the caller. ``weights``: the chunk's
        sample weights, required exactly when the data are weighted (the weighted kernel).
        """
        if (weights is None) != (data.weights is None):
            raise ValueError("launch_pass: pass the chunk's weights exactly for weighted data")
        tail = tail_reduce(plan)
        kern_pass = self.pass_kernel(data, plan, tail and mstep_table is not None, guard)
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
                np.intp(0) if weights is None else weights,
            ),
            shared_mem=plan.smem_bytes,
        )
        if tail or not reduce:
            return
        reduce_plan(plan, partial, out)

    def accumulate(
        self, data: CupyData, params: Params, plans: list[DiagPlan], guard: bool = True
    ) -> Stats:
        """One pass over the data (every chunk) with ``plans``: statistics of every restart.

        ``guard=False``: Lloyd's passes (see :meth:`pass_ref`). The statistics are split out of
        the passes' outputs by 2-D memcpy (C-contiguous arrays, no CuPy copy kernels); the
        outputs of streamed chunks are summed by cuBLAS.
        """
        n_restarts, n_components, n_features = params.means.shape
        q, n_stats, _, _ = layout(data)
        kparams, log_const = kernel_params(data, params)
        null = np.intp(0)  # no active mask: every restart is computed
        rk_shape = (n_restarts, n_components)
        loglik = cupy.empty(n_restarts)
        nk = cupy.empty(rk_shape)
        sx = cupy.empty((*rk_shape, n_features))
        sxx = cupy.empty(rk_shape if data.covariance_type == "spherical" else (*rk_shape, q))
        for plan in plans:
            partial = self.scratch.get("partial", (plan.n_blocks, plan.pstride), cupy.float64)
            total: Any = None
            for chunk, weights in weighted_chunks(data):
                out = cupy.empty(plan.pstride, dtype=cupy.float64)
                self.launch_pass(
                    data, plan, chunk, n_components, kparams, log_const, null, partial, out,
                    guard=guard, weights=weights,
                )  # fmt: skip
                if total is None:
                    total = out
                else:
                    add_into(total, out)
            split_stats(total, plan.r0, plan.r1, n_features, q, loglik, nk, sx, sxx)
        return Stats(loglik, nk, sx, sxx, data.n_samples, data.total_weight)


def split_stats(
    total: Any, r0: int, r1: int, n_features: int, q: int, loglik: Any, nk: Any, sx: Any, sxx: Any
) -> None:
    """Copy restarts ``r0:r1`` of a pass output into C-contiguous statistics arrays.

    ``total`` is ``[(r1 - r0) * K rows of (nk, sx (D), sxx (Q))][(r1 - r0) log-likelihoods]``
    (float64), the layout of the fused passes; ``nk`` (R, K), ``sx`` (R, K, D), ``sxx`` (R, K, Q)
    or (R, K) and ``loglik`` (R,) take rows ``r0:r1``.
    """
    n_components = nk.shape[1]
    rows = (r1 - r0) * n_components
    f8 = 8
    pitch = (1 + n_features + q) * f8
    copy_rows(nk[r0:r1], f8, total, pitch, f8, rows)
    copy_rows(sx[r0:r1], n_features * f8, total, pitch, n_features * f8, rows, offset=f8)
    copy_rows(sxx[r0:r1], q * f8, total, pitch, q * f8, rows, offset=(1 + n_features) * f8)
    copy_rows(loglik[r0:r1], (r1 - r0) * f8, total, pitch, (r1 - r0) * f8, 1, offset=rows * pitch)
