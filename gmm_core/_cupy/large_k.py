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
"""

from __future__ import annotations

from typing import Any

import cupy
import numpy as np

from .._gaussian import Params, Stats
from .config import LaunchConfig
from .data import CupyData, Scratch, scratch_bytes, weighted_chunks
from .kernels import KernelRef, kernel_ref, load_kernel

SOURCE = "em_largek.cu"
KERNELS = ("lk_features", "lk_weights", "lk_rows", "lk_flush")
#: fewest components (restarts x components) the large-K pass takes: below, the fused passes
#: (or, past their limits, the float32 GEMM path) serve
MIN_COMPONENTS = 64
#: bytes of the (rows x components) temporary per chunk: about the L2 cache of an H100/H200
CHUNK_BYTES = 64 << 20
#: rows summed in float32 by the statistics GEMM before ``lk_flush`` adds them into float64
STATS_ROWS = 1 << 16
#: cuBLAS constants (``cublas_api.h``; the bindings load cuBLAS, so they are imported at use)
_COMPUTE_32F = 68  # CUBLAS_COMPUTE_32F: float32 products and sums (no TF32 unless forced)
_R_32F = 0  # cudaDataType CUDA_R_32F
_OP_N, _OP_T = 0, 1
_ONE = np.ones(1, dtype=np.float32)
_ZERO = np.zeros(1, dtype=np.float32)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def geometry(n_features: int, covariance_type: str) -> tuple[int, int, int]:
    """``(F, FP, LDB)``: features per row, padded to a multiple of 8, and the row stride.

    A feature row holds ``FP`` features, a column of ones and padding.
    """
    f = 2 * n_features if covariance_type == "diag" else n_features + 1
    fp = _round_up(f, 8)
    return f, fp, fp + 8


def sgemm(
    transa: int, transb: int, m: int, n: int, k: int, a: Any, lda: int, b: Any, ldb: int,
    c: Any, ldc: int, *, accumulate: bool = False,
) -> None:  # fmt: skip
    """``C = op(A) op(B) (+ C)``, column-major, float32 (cuBLAS ``gemmEx``, ``COMPUTE_32F``).

    ``a``, ``b``, ``c``: device pointers (ints) on the current stream.
    """
    from cupy_backends.cuda.libs import cublas

    handle = cupy.cuda.device.get_cublas_handle()
    beta = _ONE if accumulate else _ZERO
    cublas.gemmEx(
        handle, transa, transb, m, n, k, _ONE.ctypes.data, a, _R_32F, lda, b, _R_32F, ldb,
        beta.ctypes.data, c, _R_32F, ldc, _COMPUTE_32F, -1,
    )  # fmt: skip


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

    def kernel_refs(self) -> list[KernelRef]:
        """The ``em_largek.cu`` kernels of a pass."""
        return [kernel_ref(SOURCE, name) for name in KERNELS]

    def chunk_rows(self, data: CupyData, n_cols: int, ldb: int) -> int:
        """Rows per chunk: ``CHUNK_BYTES`` of log-densities, within the scratch allowance."""
        rows = CHUNK_BYTES // (4 * n_cols)
        rows = min(rows, scratch_bytes(data, self.budget()) // (4 * (n_cols + ldb)))
        return int(min(max(rows // 256 * 256, 256), STATS_ROWS))

    def accumulate(self, data: CupyData, params: Params, active: Any = None) -> Stats:
        """One pass over the data: log-likelihood and statistics of every restart.

        ``active`` (R,) bool or None: restarts whose responsibilities are computed (the others'
        statistics come back zero).
        """
        R, K, D = params.means.shape
        rk = R * K
        diag = data.covariance_type == "diag"
        f, fp, ldb = geometry(D, data.covariance_type)
        kp = _round_up(rk, 8)
        blocks = 4 * self.config.n_sm
        kern = {ref.expr: load_kernel(ref) for ref in self.kernel_refs()}

        f64 = cupy.float64
        w_mat = self.scratch.get("lk_w", (kp, fp), cupy.float32)
        const = self.scratch.get("lk_c", (kp,), cupy.float32)
        pc = params.precisions_cholesky
        kern["lk_weights"](
            (max(1, min(-(-kp * fp // 256), blocks)),),
            (256,),
            (
                cupy.ascontiguousarray(params.weights, dtype=f64).reshape(-1),
                cupy.ascontiguousarray(params.means, dtype=f64).reshape(-1),
                cupy.ascontiguousarray(pc, dtype=f64).reshape(-1),
                np.int32(rk), np.int32(kp), np.int32(D), np.bool_(diag), np.int32(fp),
                w_mat, const,
            ),
        )  # fmt: skip
        groups = cupy.asarray(np.arange(R + 1, dtype=np.int32) * K)
        act = np.intp(0) if active is None else cupy.asarray(active).astype(cupy.int32)
        rows_max = self.chunk_rows(data, kp, ldb)
        feats = self.scratch.get("lk_b", (rows_max, ldb), cupy.float32)
        logits = self.scratch.get("lk_l", (rows_max, kp), cupy.float32)
        s32 = self.scratch.get("lk_s", (ldb, kp), cupy.float32, zero=True)  # column-major S
        warps = blocks * 8
        ll_part = self.scratch.get("lk_ll", (warps, R), f64)
        ll_part.data.memset_async(0, ll_part.nbytes)
        nk = cupy.zeros(rk)
        sf = cupy.zeros((rk, f))
        since_flush = 0

        def flush() -> None:
            kern["lk_flush"](
                (max(1, min(-(-rk * (f + 1) // 256), blocks)),),
                (256,),
                (s32, np.int32(rk), np.int32(kp), np.int32(fp), np.int32(f), sf, nk),
            )

        for chunk, weights in weighted_chunks(data):
            chunk = cupy.ascontiguousarray(chunk)
            for start in range(0, chunk.shape[0], rows_max):
                x = chunk[start : start + rows_max]
                rows = x.shape[0]
                if since_flush + rows > STATS_ROWS:
                    flush()
                    since_flush = 0
                kern["lk_features"](
                    (max(1, min(-(-rows // 8), blocks)),),
                    (256,),
                    (
                        x, np.int64(rows), np.int32(D), np.int32(fp), np.int32(ldb),
                        np.bool_(diag), feats,
                    ),
                )  # fmt: skip
                # E-step: L (rows x kp) = f . W^T (column-major: W f^T)
                sgemm(
                    _OP_T, _OP_N, kp, rows, fp,
                    w_mat.data.ptr, fp, feats.data.ptr, ldb, logits.data.ptr, kp,
                )  # fmt: skip
                w = np.intp(0) if weights is None else weights[start : start + rows]
                kern["lk_rows"](
                    (blocks,),
                    (256,),
                    (
                        logits, np.int64(rows), np.int32(kp), const, groups, np.int32(R), act,
                        w, ll_part,
                    ),
                )  # fmt: skip
                # statistics: S (kp x ldb, column-major) += R^T [f, 1]; this orientation (the
                # components as the GEMM's rows) measured 1.5x faster than S^T for spherical
                sgemm(
                    _OP_N, _OP_T, kp, ldb, rows,
                    logits.data.ptr, kp, feats.data.ptr, ldb, s32.data.ptr, kp,
                    accumulate=True,
                )  # fmt: skip
                since_flush += rows
        flush()
        loglik = ll_part.sum(axis=0)
        sf = sf.reshape(R, K, f)
        sx = cupy.ascontiguousarray(sf[..., :D])
        sxx = cupy.ascontiguousarray(sf[..., D : 2 * D] if diag else sf[..., D])
        return Stats(loglik, nk.reshape(R, K), sx, sxx, data.n_samples, data.total_weight)
