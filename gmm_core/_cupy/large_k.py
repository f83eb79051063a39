"""``LargeKPass``: diag and spherical passes for many components, as two GEMMs per row chunk.

The fused passes keep a restart's components in registers and stop at 32 of them (256 for the
SIMT pass, 32 features); beyond that (hundreds to thousands of components, restarts side by
side, up to hundreds of features) a pass is two matrix products per row chunk around row-wise
kernels (``cuda/em_largek.cu``), and nothing of size (samples x components) outlives a chunk:

1. ``lk_features``: the chunk's features ``[x, x^2]`` (diag) or ``[x, |x|^2]`` (spherical)
   and a column of ones;
2. one cuBLAS float32 GEMM with the components' weights (``lk_weights``, once per pass): the
   log-densities as the expanded quadratic form of centred data;
3. ``lk_rows``: per row and restart the log-sum-exp (log-likelihood, float64 per warp) and the
   responsibilities, written over the log-densities;
4. one cuBLAS float32 GEMM ``R^T [f, 1]`` accumulating the statistics over a few chunks, which
   ``lk_flush`` adds into float64 (``STATS_ROWS`` rows at most per float32 sum).

Float32 GEMMs, not TF32 tensor cores: see ``em_largek.cu`` for the measured bias of cuBLAS's
TF32 accumulation at these inner dimensions. Chunks are sized so the (rows x components)
temporary stays near the L2 cache (``CHUNK_BYTES``) while the launches per pass stay few.

With ``LaunchConfig.large_k_f64`` (devices whose float64 runs on tensor cores) the
log-densities are a float64 GEMM and the statistics TF32 GEMMs of split features instead
(``large_k_f64``: exact log-densities; its speed against the float32 GEMMs is measured by
``benchmarks/large_k_f64.py``).

By default (``LaunchConfig.large_k_sparse``; up to 256 features and 32 restarts) the pass is
screened (``large_k_sparse``): a BF16 (or TF32) product with a proven error bound picks the few
components per sample whose responsibilities can count, computed exactly in float64, and only
rows with many candidates run the float32 GEMMs above (``DensePass``).

Up to ``FUSED_MAX_FEATURES`` features (and ``LaunchConfig.large_k_fused``, on unless
``GMM_CORE_LARGE_K_FUSED=0``) the pass is instead two fused tensor-core kernels per row chunk
(``cuda/em_largek_tc.cu``, whose header says how): ``lkt_lse`` (3xTF32 log-densities, online
log-sum-exp per row and restart) and ``lkt_stats`` (the log-densities recomputed per component
tile, responsibilities and the statistics as one TF32 GEMM), with nothing of size
(samples x components) in global memory.
"""

from __future__ import annotations

from typing import Any

import cupy
import numpy as np

from .._gaussian import Params, Stats
from . import large_k_f64, large_k_sparse
from .config import LaunchConfig
from .data import CupyData, Scratch, scratch_bytes, weighted_chunks
from .kernels import KernelRef, allow_dynamic_smem, kernel_ref, load_kernel
from .large_k_f64 import _round_up, gemm

SOURCE = "em_largek.cu"
KERNELS = ("lk_features", "lk_weights", "lk_rows", "lk_flush")
#: fewest components (restarts x components) the large-K pass takes: below, the fused passes
#: (or, past their limits, the float32 GEMM path) serve
MIN_COMPONENTS = 64
#: bytes of the (rows x components) temporary per chunk: about the L2 cache of an H100/H200
CHUNK_BYTES = 64 << 20
#: rows summed in float32 by the statistics GEMM before ``lk_flush`` adds them into float64
STATS_ROWS = 1 << 16
_OP_N, _OP_T = 0, 1  # cuBLAS operations
#: the fused kernels (``em_largek_tc.cu``)
FUSED_SOURCE = "em_largek_tc.cu"
#: most features the fused kernels take (their shared-memory tiles hold rows of 256)
FUSED_MAX_FEATURES = 256
#: the fused kernels' tiles: features per weight chunk, components per weight tile, rows per
#: ``lkt_lse`` block and per ``lkt_stats`` row tile (``KC``, ``TN``, ``BM1``, ``BM2`` there)
FUSED_CHUNK, FUSED_TILE, LSE_ROWS, STATS_TILE_ROWS = 32, 64, 128, 64
#: bytes of per-row log-sum-exps (restarts x rows, float32) one fused launch writes
LSE_BYTES = 64 << 20
_LN2 = 0.6931471805599453


def geometry(n_features: int, covariance_type: str) -> tuple[int, int, int]:
    """``(F, FP, LDB)``: features per row, padded to a multiple of 8, and the row stride.

    A feature row holds ``FP`` features, a column of ones and padding.
    """
    f = 2 * n_features if covariance_type == "diag" else n_features + 1
    fp = _round_up(f, 8)
    return f, fp, fp + 8


def fused_geometry(n_features: int, covariance_type: str) -> tuple[int, int, int]:
    """``(dp, fi, bn)`` of the fused kernels.

    Features padded to a chunk, the inner products' length (``[x, x^2]`` for diag) and the
    components per ``lkt_stats`` block (64, or 32 where 64 components' weights would not fit
    its shared memory).
    """
    dp = _round_up(n_features, FUSED_CHUNK)
    fi = 2 * dp if covariance_type == "diag" else dp
    return dp, fi, 64 if fi <= 256 else 32


def fused_smem(n_features: int, covariance_type: str, nbuf: int = 1) -> tuple[int, int]:
    """Dynamic shared memory (bytes) of ``lkt_lse`` and ``lkt_stats`` (their layouts).

    ``nbuf``: row tiles ``lkt_stats`` holds (2: the next one arrives while one is computed).
    """
    dp, fi, bn = fused_geometry(n_features, covariance_type)
    rows1, rows2 = LSE_ROWS, STATS_TILE_ROWS
    lse = 2 * FUSED_TILE * 256 + (rows1 * (dp + 4) + 3 * rows1) * 4
    stats = (fi // FUSED_CHUNK) * bn * 256 + (nbuf * rows2 * (dp + 4) + bn * (rows2 + 4)) * 4
    return lse, stats + (6 * rows2 + 8 * bn) * 4


class LargeKPass:
    """The large-K diag/spherical pass; see the module docstring.

    Parameters
    ----------
    config : LaunchConfig
    scratch : Scratch
        The engine's reusable device buffers.
    budget : callable
        Returns the device memory budget (bytes): the chunk temporaries stay within the
        scratch allowance beside the data.
    """

    name = "large_k"

    def __init__(self, config: LaunchConfig, scratch: Scratch, budget: Any) -> None:
        self.config = config
        self.scratch = scratch
        self.budget = budget
        #: extra compiler options of the fused kernels (tuning variants, ``-D`` defines)
        self.options: tuple[str, ...] = ()

    def supports(self, data: CupyData, n_restarts: int, n_components: int) -> bool:
        """Float32 diag/spherical data with ``MIN_COMPONENTS`` or more components in all.

        Also gated on ``config.tensor_cores`` (compute capability 8.0+, the fast paths' switch),
        although its GEMMs are float32 since the TF32 version was dropped (module docstring).
        """
        return (
            self.config.tensor_cores
            and data.covariance_type in ("diag", "spherical")
            and data.dtype == np.float32
            and n_restarts * n_components >= MIN_COMPONENTS
        )

    def fused(self, data: CupyData) -> bool:
        """Whether the pass runs as the fused kernels (``FUSED_MAX_FEATURES``, shared memory)."""
        return (
            self.config.large_k_fused
            and data.n_features <= FUSED_MAX_FEATURES
            and max(fused_smem(data.n_features, data.covariance_type)) <= self.config.smem_optin
        )

    def sparse(self, data: CupyData, n_restarts: int | None = None) -> bool:
        """Whether the pass runs screened (``large_k_sparse``; ``config.large_k_sparse``)."""
        return self.config.large_k_sparse and large_k_sparse.supports(
            data.n_features, 1 if n_restarts is None else n_restarts
        )

    def kernel_refs(self, data: CupyData | None = None) -> list[KernelRef]:
        """The kernels of a pass over ``data``.

        The fused ones where they serve (opt-in), else the float64 E-step's where the config
        says (opt-in), else the screened pass's with the float32 ones it sends listed rows
        through (the default), else the ``em_largek.cu`` float32 ones (also without ``data``).
        """
        dense = [kernel_ref(SOURCE, name) for name in KERNELS]
        if data is not None and self.fused(data):
            return fused_kernel_refs(data.covariance_type, data.n_features)
        if data is not None and self.config.large_k_f64:
            return large_k_f64.kernel_refs()
        if data is not None and self.sparse(data):
            screened = large_k_sparse.kernel_refs(self.config.large_k_screen, data.covariance_type)
            return screened + dense
        return dense

    def chunk_rows(
        self, data: CupyData, n_cols: int, ldb: int, chunk_bytes: int | None = None
    ) -> int:
        """Rows per chunk: ``chunk_bytes`` (``CHUNK_BYTES``) of log-densities, in budget."""
        rows = (CHUNK_BYTES if chunk_bytes is None else chunk_bytes) // (4 * n_cols)
        rows = min(rows, scratch_bytes(data, self.budget()) // (4 * (n_cols + ldb)))
        return int(min(max(rows // 256 * 256, 256), STATS_ROWS))

    def accumulate(self, data: CupyData, params: Params, active: Any = None) -> Stats:
        """One pass over the data: log-likelihood and statistics of every restart.

        ``active`` (R,) bool or None: restarts whose responsibilities are computed (the others'
        statistics come back zero).
        """
        if self.fused(data):
            return self._accumulate_fused(data, params, active)
        if self.config.large_k_f64:
            return large_k_f64.accumulate(self, data, params, active)
        if self.sparse(data, params.means.shape[0]):
            # every pass screened: which rows take the dense pass depends on the data and the
            # parameters alone, never on what the engine ran before (a back-off kept between
            # passes made dask partitions' paths depend on scheduling)
            return large_k_sparse.accumulate(self, data, params, active)
        dense = DensePass(self, data, params, active)
        for chunk, weights in weighted_chunks(data):
            dense.add(cupy.ascontiguousarray(chunk), weights)
        return dense.stats()

    def _accumulate_fused(self, data: CupyData, params: Params, active: Any) -> Stats:
        """:meth:`accumulate` as the fused kernels (``em_largek_tc.cu``)."""
        R, K, D = params.means.shape
        cov = data.covariance_type
        diag = cov == "diag"
        dp, fi, bn = fused_geometry(D, cov)
        kpr = _round_up(K, FUSED_TILE)  # a restart's components, padded to whole tiles
        n_comp = R * kpr
        refs = fused_kernel_refs(cov, D)
        kern = {ref.expr.split("<")[0]: load_kernel(ref, self.options) for ref in refs}
        # two row tiles of lkt_stats in flight where shared memory holds them
        nbuf = 2 if fused_smem(D, cov, 2)[1] <= self.config.smem_optin else 1
        smem_lse, smem_stats = fused_smem(D, cov, nbuf)
        allow_dynamic_smem(kern["lkt_lse"], smem_lse)
        allow_dynamic_smem(kern["lkt_stats"], smem_stats)

        f64 = cupy.float64
        w_t = self.scratch.get("lkt_w", (n_comp * fi * 2,), cupy.float32)
        cst = self.scratch.get("lkt_c", (n_comp,), cupy.float32)
        hp = self.scratch.get("lkt_h", (n_comp,), cupy.float32)
        total = n_comp * fi
        kern["lkt_weights"](
            (max(1, min(-(-total // 256), 8 * self.config.n_sm)),),
            (256,),
            (
                cupy.ascontiguousarray(params.weights, dtype=f64).reshape(-1),
                cupy.ascontiguousarray(params.means, dtype=f64).reshape(-1),
                cupy.ascontiguousarray(params.precisions_cholesky, dtype=f64).reshape(-1),
                np.int32(R), np.int32(K), np.int32(kpr), np.int32(D), np.int32(dp),
                np.bool_(diag), w_t, cst, hp,
            ),
        )  # fmt: skip
        act = np.intp(0) if active is None else cupy.asarray(active).astype(cupy.int32)
        # row splits of lkt_stats: one wave of blocks (one per SM) over the component tiles,
        # each split a run of whole row tiles; the partials are per (split, component), summed
        # at the end
        blocks_x = n_comp // bn
        n = data.n_samples
        splits = max(1, min(self.config.n_sm // blocks_x, -(-n // STATS_TILE_ROWS)))
        part = cupy.zeros((splits, n_comp, fi), dtype=f64)
        partd = cupy.zeros((splits, n_comp, 2), dtype=f64)
        rows_max = max(LSE_ROWS, LSE_BYTES // (4 * R) // LSE_ROWS * LSE_ROWS)
        rows_max = min(rows_max, _round_up(n, LSE_ROWS))
        lse2 = self.scratch.get("lkt_lse", (R, rows_max), cupy.float32)
        sqn = self.scratch.get("lkt_sq", (rows_max,), cupy.float32)
        loglik = cupy.zeros(R, dtype=f64)
        for chunk, weights in weighted_chunks(data):
            chunk = cupy.ascontiguousarray(chunk)
            for start in range(0, chunk.shape[0], rows_max):
                x = chunk[start : start + rows_max]
                rows = x.shape[0]
                w = None if weights is None else weights[start : start + rows]
                kern["lkt_lse"](
                    (-(-rows // LSE_ROWS),),
                    (256,),
                    (
                        x, np.int64(rows), np.int32(D), np.int32(dp), w_t, cst, hp, np.int32(R),
                        np.int32(kpr // FUSED_TILE), act, lse2, np.int64(rows_max), sqn,
                    ),
                    shared_mem=smem_lse,
                )  # fmt: skip
                lse = lse2[:, :rows]
                loglik += (lse.sum(axis=1, dtype=f64) if w is None else lse @ w.astype(f64)) * _LN2
                per_split = _round_up(-(-rows // splits), STATS_TILE_ROWS)
                kern["lkt_stats"](
                    (blocks_x, splits),
                    (256,),
                    (
                        x, np.intp(0) if w is None else w, np.int64(rows), np.int32(D),
                        np.int32(dp), w_t, cst, hp, np.int32(kpr // FUSED_TILE), act, lse2,
                        np.int64(rows_max), sqn, np.int64(per_split), np.int64(n_comp),
                        np.int32(nbuf),
                        part, partd,
                    ),
                    shared_mem=smem_stats,
                )  # fmt: skip
        if active is not None:  # inactive restarts' lse2 rows were never written
            loglik = cupy.where(cupy.asarray(active).astype(bool), loglik, 0.0)
        sums = part.sum(axis=0).reshape(R, kpr, fi)[:, :K]
        sd = partd.sum(axis=0).reshape(R, kpr, 2)[:, :K]
        sx = cupy.ascontiguousarray(sums[..., :D])
        sxx = cupy.ascontiguousarray(sums[..., dp : dp + D] if diag else sd[..., 1])
        return Stats(
            loglik, cupy.ascontiguousarray(sd[..., 0]), sx, sxx, data.n_samples,
            data.total_weight,
        )  # fmt: skip


class DensePass:
    """One float32 GEMM pass (module docstring, steps 1-4) as rows arrive.

    :meth:`add` takes row chunks (centred, device, any length) and their weights;
    :meth:`stats` returns the pass's statistics. The sparse pass (``large_k_sparse``) reads its
    weights (``w_mat``, ``const``), its buffers and its float64 sums, and sends it the rows it
    lists.
    """

    def __init__(
        self, lk: LargeKPass, data: CupyData, params: Params, active: Any,
        chunk_bytes: int | None = None,
    ) -> None:  # fmt: skip
        R, K, D = params.means.shape
        self.R, self.K, self.D, self.rk = R, K, D, R * K
        self.data = data
        self.diag = data.covariance_type == "diag"
        self.f, self.fp, self.ldb = geometry(D, data.covariance_type)
        self.kp = _round_up(self.rk, 8)
        self.blocks = 4 * lk.config.n_sm
        self.kern = {ref.expr: load_kernel(ref) for ref in lk.kernel_refs()}
        f64 = cupy.float64
        scratch = lk.scratch
        self.w_mat = scratch.get("lk_w", (self.kp, self.fp), cupy.float32)
        self.const = scratch.get("lk_c", (self.kp,), cupy.float32)
        self.kern["lk_weights"](
            (max(1, min(-(-self.kp * self.fp // 256), self.blocks)),),
            (256,),
            (
                cupy.ascontiguousarray(params.weights, dtype=f64).reshape(-1),
                cupy.ascontiguousarray(params.means, dtype=f64).reshape(-1),
                cupy.ascontiguousarray(params.precisions_cholesky, dtype=f64).reshape(-1),
                np.int32(self.rk), np.int32(self.kp), np.int32(D), np.bool_(self.diag),
                np.int32(self.fp), self.w_mat, self.const,
            ),
        )  # fmt: skip
        self.groups = cupy.asarray(np.arange(R + 1, dtype=np.int32) * K)
        self.act = np.intp(0) if active is None else cupy.asarray(active).astype(cupy.int32)
        self.rows_max = lk.chunk_rows(data, self.kp, self.ldb, chunk_bytes)
        self.feats = scratch.get("lk_b", (self.rows_max, self.ldb), cupy.float32)
        self.logits = scratch.get("lk_l", (self.rows_max, self.kp), cupy.float32)
        self.s32 = scratch.get("lk_s", (self.ldb, self.kp), cupy.float32, zero=True)  # col-major
        self.ll_part = scratch.get("lk_ll", (self.blocks * 8, R), f64)
        self.ll_part.data.memset_async(0, self.ll_part.nbytes)
        self.nk = cupy.zeros(self.rk)
        self.sf = cupy.zeros((self.rk, self.f))
        self.since_flush = 0

    def features(self, x: Any) -> None:
        """``lk_features`` of the rows ``x`` (at most ``rows_max``) into ``feats``."""
        rows = x.shape[0]
        self.kern["lk_features"](
            (max(1, min(-(-rows // 8), self.blocks)),),
            (256,),
            (
                x, np.int64(rows), np.int32(self.D), np.int32(self.fp), np.int32(self.ldb),
                np.bool_(self.diag), self.feats,
            ),
        )  # fmt: skip

    def flush(self) -> None:
        """Add the float32 statistics sums into float64 (``lk_flush``) and zero them."""
        rk, f = self.rk, self.f
        self.kern["lk_flush"](
            (max(1, min(-(-rk * (f + 1) // 256), self.blocks)),),
            (256,),
            (self.s32, np.int32(rk), np.int32(self.kp), np.int32(self.fp), np.int32(f), self.sf,
             self.nk),
        )  # fmt: skip
        self.since_flush = 0

    def add(self, chunk: Any, weights: Any) -> None:
        """Steps 1-4 over the rows of ``chunk`` (contiguous), ``weights`` (rows,) or None."""
        kp, fp, ldb = self.kp, self.fp, self.ldb
        for start in range(0, chunk.shape[0], self.rows_max):
            x = chunk[start : start + self.rows_max]
            rows = x.shape[0]
            if self.since_flush + rows > STATS_ROWS:
                self.flush()
            self.features(x)
            # E-step: L (rows x kp) = f . W^T (column-major: W f^T)
            gemm(
                _OP_T, _OP_N, kp, rows, fp,
                self.w_mat.data.ptr, fp, self.feats.data.ptr, ldb, self.logits.data.ptr, kp,
                precision="float32",
            )  # fmt: skip
            w = np.intp(0) if weights is None else weights[start : start + rows]
            self.kern["lk_rows"](
                (self.blocks,),
                (256,),
                (
                    self.logits, np.int64(rows), np.int32(kp), self.const, self.groups,
                    np.int32(self.R), self.act, w, self.ll_part,
                ),
            )  # fmt: skip
            # statistics: S (kp x ldb, column-major) += R^T [f, 1]; this orientation (the
            # components as the GEMM's rows) measured 1.5x faster than S^T for spherical
            gemm(
                _OP_N, _OP_T, kp, ldb, rows,
                self.logits.data.ptr, kp, self.feats.data.ptr, ldb, self.s32.data.ptr, kp,
                precision="float32", accumulate=True,
            )  # fmt: skip
            self.since_flush += rows

    def stats(self) -> Stats:
        """The pass's statistics (after the last :meth:`add`)."""
        self.flush()
        R, K, D, f = self.R, self.K, self.D, self.f
        loglik = self.ll_part.sum(axis=0)
        sf = self.sf.reshape(R, K, f)
        sx = cupy.ascontiguousarray(sf[..., :D])
        sxx = cupy.ascontiguousarray(sf[..., D : 2 * D] if self.diag else sf[..., D])
        data = self.data
        return Stats(loglik, self.nk.reshape(R, K), sx, sxx, data.n_samples, data.total_weight)


def fused_kernel_refs(covariance_type: str, n_features: int) -> list[KernelRef]:
    """The fused kernels a pass over data of this type and width launches."""
    diag = covariance_type == "diag"
    _, _, bn = fused_geometry(n_features, covariance_type)
    return [
        kernel_ref(FUSED_SOURCE, "lkt_weights"),
        kernel_ref(FUSED_SOURCE, "lkt_lse", diag),
        kernel_ref(FUSED_SOURCE, "lkt_stats", diag, bn),
    ]


#: every fused instance a build makes (spherical never needs 32-component blocks)
FUSED_KERNELS = sorted(
    {ref.expr for cov, d in (("diag", 32), ("diag", 256), ("spherical", 256))
     for ref in fused_kernel_refs(cov, d)}
)  # fmt: skip
