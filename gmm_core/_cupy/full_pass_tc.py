"""``full_pass_tc``: the fused full-covariance pass on tensor cores (3xTF32), float32 data.

One launch per row chunk (``cuda/em_full.cu``) for data with up to 32 features and 32
components: ``y = x U_k - mu_k U_k`` for the log-densities, the softmax in shared memory,
``(r_k (x - m_k))^T (x - m_k)`` about each component's mean for the statistics, float64 across
tiles; ``reduce_partials`` sums the block partials. U sits in shared memory where it fits (on an
H100/H200 up to 23 components with 32 features), else it is read through L1.

The pass's float32 operands (U's fragments, mu U, constants) come from ``full_tc_params``, or,
inside the estimator's loop, from the M-step kernel that made the parameters
(:meth:`FullPassTC.mstep_operands`): one launch less per iteration. Restarts that stopped
iterating (``active``) read no data.
"""

from __future__ import annotations

import logging
from typing import Any

import cupy
import numpy as np

from .._gaussian import Params, Stats
from .config import LaunchConfig
from .copies import add_into
from .data import CupyData, Scratch, weighted_chunks
from .diag_common import REDUCE_REF
from .kernels import KernelRef, allow_dynamic_smem, kernel_ref, load_kernel, max_carveout

logger = logging.getLogger("gmm_core")

SOURCE = "em_full.cu"
#: widest data, components per block group, samples per tile, M-step components per warp,
#: warps per block (``fulltc`` constants in the source)
FULL_TC_MAX_FEATURES = 32
FULL_TC_GROUP = 16
FULL_TC_TILE = 128
FULL_TC_CW = 2
FULL_TC_WARPS = 8
#: most component groups: every group of 16 repeats the E-step, so beyond two the GEMM path is
#: faster (H200, D=32, one pass: K=32 3.8 vs 4.0 ms, K=48 7.6 vs 6.8 ms, K=64 12.8 vs 7.1 ms;
#: ``benchmarks/results/tune_full_h200_k.txt``)
FULL_TC_MAX_GROUPS = 2
#: largest float64 block-partial buffer (bytes)
FULL_TC_PARTIAL_BYTES = 1 << 28


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
    doubles = FULL_TC_WARPS * FULL_TC_CW * nfrag * 4 * 32 + FULL_TC_WARPS
    u_floats = k * npair * 64 if u_in_smem else 0
    floats = u_floats + k * (8 * ntd + dm) + 2 * _round4(k) + 2 * FULL_TC_TILE * (xs + (k | 1))
    return 8 * doubles + 4 * floats


class FullPassTC:
    """``full_tc_params<D>`` + ``full_pass_tc<D, U_IN_SMEM>``; see the module docstring."""

    name = "full_pass_tc"

    def __init__(self, config: LaunchConfig, scratch: Scratch) -> None:
        self.config = config
        self.scratch = scratch
        #: extra compiler options of both kernels (``-D`` defines of tuning variants)
        self.defines: tuple[str, ...] = ()
        self._declined: set[tuple[int, int]] = set()
        #: (R, K, D) of the last pass this served (the M-step writes operands of that shape) and
        #: that pass's ``active`` mask (the estimator's loop passes the same array every time)
        self._served: tuple[int, int, int] | None = None
        self._served_active: Any = None
        #: what the operand buffers were computed from: (weights, means, precision factors,
        #: the mask they serve, the buffers), held, so that no array is freed and reused while
        #: the tuple stands for it (see :meth:`_operands`)
        self._operands_of: tuple[Any, ...] | None = None
        #: ``full_tc_params`` launches (tests count them)
        self.params_launches = 0

    def u_in_smem(self, n_features: int, n_components: int) -> bool | None:
        """Where the E-step's U fragments live.

        Shared memory (True), global memory through L1 (False: more components than shared
        memory holds), or None where even the rest does not fit (the GEMM path serves).
        """
        for u_in_smem in (True, False):
            if self.config.full_tc_force_global_u and u_in_smem:
                continue
            if full_tc_smem(n_features, n_components, u_in_smem) <= self.config.smem_optin:
                return u_in_smem
        return None

    def supports(
        self, data: CupyData, n_restarts: int, n_components: int, *, quiet: bool = False
    ) -> bool:
        """Whether ``full_pass_tc`` serves this data (see ``CupyEngine(tensor_cores=...)``).

        Says once per shape (unless ``quiet``) when only shared memory stands in the way.
        """
        ok = (
            self.config.tensor_cores
            and data.covariance_type == "full"
            and data.dtype == np.float32
            and data.n_features <= FULL_TC_MAX_FEATURES
            and n_components <= FULL_TC_GROUP * FULL_TC_MAX_GROUPS
        )
        if not ok:
            return False
        if self.u_in_smem(data.n_features, n_components) is None:
            key = (data.n_features, n_components)
            if not quiet and key not in self._declined:  # say it once per shape
                self._declined.add(key)
                logger.info(
                    "full covariance, %d features, %d components: the tensor-core pass's "
                    "operands exceed shared memory; using the GEMM path",
                    data.n_features,
                    n_components,
                )
            return False
        return True

    def kernel_refs(
        self, n_features: int, u_in_smem: bool, weighted: bool = False
    ) -> list[KernelRef]:
        """The parameter kernel, the pass (``WEIGHTED`` for weighted data), the reduction."""
        return [
            kernel_ref(SOURCE, "full_tc_params", n_features),
            kernel_ref(SOURCE, "full_pass_tc", n_features, u_in_smem, *[True][: int(weighted)]),
            REDUCE_REF,
        ]

    def kernels(
        self, n_features: int, u_in_smem: bool, smem: int, weighted: bool = False
    ) -> tuple[Any, Any, Any]:
        """(full_tc_params, full_pass_tc allowed ``smem`` bytes, reduce_partials), compiled."""
        ref_params, ref_pass, ref_reduce = self.kernel_refs(n_features, u_in_smem, weighted)
        kern_params = load_kernel(ref_params, self.defines)
        kern_pass = allow_dynamic_smem(max_carveout(load_kernel(ref_pass, self.defines)), smem)
        kern_reduce = load_kernel(ref_reduce)
        return kern_params, kern_pass, kern_reduce

    def operand_buffers(
        self, n_restarts: int, n_components: int, n_features: int
    ) -> dict[str, Any]:
        """The pass's float32 operands of (R, K, D) parameters: scratch buffers, kernel order."""
        rk, ntd = n_restarts * n_components, -(-n_features // 8)
        buffer = self.scratch.get
        return {
            "ufrag": buffer("full-tc-u", (rk, ntd * (ntd + 1) // 2, 32, 2), cupy.float32),
            "bvec": buffer("full-tc-b", (rk, 8 * ntd), cupy.float32),
            "lconst": buffer("full-tc-c", (rk,), cupy.float32),
            "mvec": buffer("full-tc-m", (rk, 16 * -(-n_features // 16)), cupy.float32),
            "far": buffer("full-tc-far", (rk,), cupy.int32),
        }

    def mstep_operands(
        self, n_restarts: int, n_components: int, n_features: int
    ) -> dict[str, Any] | None:
        """Buffers for the M-step to write the next pass's operands into, or None.

        Only where this pass served the last pass of that shape (the estimator's loop: the
        next pass is this one again); :meth:`operands_written` records what they then hold.
        """
        if self._served != (n_restarts, n_components, n_features):
            return None
        self._operands_of = None  # about to be overwritten
        return self.operand_buffers(n_restarts, n_components, n_features)

    def operands_written(self, params: Params, buffers: dict[str, Any]) -> None:
        """The M-step wrote ``buffers`` from ``params``, for the next pass of the same loop."""
        self._operands_of = (
            params.weights,
            params.means,
            params.precisions_cholesky,
            self._served_active,
            buffers,
        )

    def forget(self) -> None:
        """Another pass served the last call: the M-step writes no operands for this one."""
        self._served = self._served_active = self._operands_of = None

    def _operands(self, params: Params, kern_params: Any, active: Any) -> dict[str, Any]:
        """The operands of ``params``: as written by the M-step that made them, else computed.

        Those already in the buffers serve only a pass with the same ``active`` mask object
        and the same parameter arrays (the estimator's loop: its tracker's mask, the M-step's
        arrays). The loop puts the old parameters of restarts that stopped back in place, so
        their operands stand for the discarded ones; such restarts never become active again
        in that loop, and its mask skips them. Any other call (another mask, no mask, other
        arrays) computes them. Arrays changed in place between two passes of one loop (which
        the loop does not do for restarts still iterating) would not be noticed.
        """
        R, K, D = params.means.shape
        buffers = self.operand_buffers(R, K, D)
        held = self._operands_of
        if (
            active is not None
            and held is not None
            and held[0] is params.weights
            and held[1] is params.means
            and held[2] is params.precisions_cholesky
            and held[3] is active
            and all(held[4][name] is buf for name, buf in buffers.items())
        ):
            return buffers
        f64 = cupy.float64
        kern_params(
            (R * K,),
            (256,),
            (
                cupy.ascontiguousarray(params.weights, dtype=f64),
                cupy.ascontiguousarray(params.means, dtype=f64),
                cupy.ascontiguousarray(params.precisions_cholesky, dtype=f64),
                *buffers.values(),
            ),
        )
        self.params_launches += 1
        self._operands_of = (
            params.weights,
            params.means,
            params.precisions_cholesky,
            active,
            buffers,
        )
        return buffers

    def accumulate(self, data: CupyData, params: Params, active: Any = None) -> Stats:
        """One ``full_pass_tc`` launch per row chunk; float64 statistics as the GEMM path's.

        ``active`` (R,) bool/int or None: restarts whose statistics are computed; the others
        read no data and get zeros.
        """
        R, K, D = params.means.shape
        rk = R * K
        u_in_smem = self.u_in_smem(D, K)
        assert u_in_smem is not None  # supports() checked it
        smem = full_tc_smem(D, K, u_in_smem)
        weighted = data.weights is not None
        kern_params, kern_pass, kern_reduce = self.kernels(D, u_in_smem, smem, weighted)
        f64 = cupy.float64
        buffer = self.scratch.get
        operands = self._operands(params, kern_params, active)
        self._served, self._served_active = (R, K, D), active
        act: Any = np.intp(0)  # no mask: every restart
        if active is not None:  # the tracker's int32 flags as they are (no copy), else converted
            act = cupy.ascontiguousarray(cupy.asarray(active), dtype=cupy.int32)
        groups = -(-K // FULL_TC_GROUP)
        pstride = rk * (1 + D + D * D) + R
        longest = max(chunk.shape[0] for chunk in data.chunks)
        n_blocks = max(1, min(self.config.n_sm, -(-longest // FULL_TC_TILE)))
        # many restarts: fewer blocks per restart keep the partials within FULL_TC_PARTIAL_BYTES
        # (the grid's R * groups rows of blocks still fill the device)
        n_blocks = max(1, min(n_blocks, FULL_TC_PARTIAL_BYTES // (8 * pstride)))
        partial = buffer("full-tc-partial", (n_blocks, pstride), f64)
        total: Any = None
        for chunk, weights in weighted_chunks(data):
            blocks = max(1, min(n_blocks, -(-chunk.shape[0] // FULL_TC_TILE)))
            kern_pass(  # restarts (and component groups) fastest: a tile is read from HBM once
                (R * groups, blocks),
                (FULL_TC_WARPS * 32,),
                (
                    chunk,
                    np.int64(chunk.shape[0]),
                    np.int32(K),
                    *operands.values(),
                    np.int32(pstride),
                    partial,
                    np.intp(0) if weights is None else weights,
                    act,
                ),
                shared_mem=smem,
            )
            out = cupy.empty(pstride, dtype=f64)
            kern_reduce(
                (-(-pstride // 32),), (32, 8), (partial, np.int32(blocks), np.int32(pstride), out)
            )
            if total is None:
                total = out
            else:
                add_into(total, out)  # cuBLAS: no generated kernel
        nk = total[:rk].reshape(R, K)
        sx = total[rk : rk * (1 + D)].reshape(R, K, D)
        sxx = total[rk * (1 + D) : rk * (1 + D + D * D)].reshape(R, K, D, D)
        loglik = total[rk * (1 + D + D * D) :]
        return Stats(loglik, nk, sx, sxx, data.n_samples, data.total_weight)
