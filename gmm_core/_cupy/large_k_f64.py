"""The large-K pass with a float64 E-step: exact log-densities on float64 tensor cores.

Where float64 runs on tensor cores (``config.FAST_FLOAT64``: A100, H100/H200, B200) a row chunk
takes four kernels and two cuBLAS calls (``cuda/em_largek.cu``, "The float64 E-step"):

1. ``lk_features64``: the chunk's float64 features ``[x, x^2]`` (diag) or ``[x, |x|^2]``
   (spherical), and float32 split features ``[hi(x), lo(x), hi(s), lo(s), 1]`` (TF32 hi + lo);
2. one cuBLAS float64 GEMM (``COMPUTE_64F``) with the components' float64 weights
   (``lk_weights64``, once per pass): the log-densities of the expanded quadratic form with no
   digit lost to its cancelling terms (the float32 GEMM's error, and a truncating TF32 sum's
   bias, are what the other paths fight);
3. ``lk_rows64``: per row and restart the float64 log-sum-exp (the log-likelihood) and the
   responsibilities rounded to the nearest TF32 once, ``r~``;
4. one strided-batched cuBLAS TF32 GEMM ``R~^T F``: a slot of float32 sums per slice of
   ``SLICE_ROWS`` rows (a tensor core's float32 sum truncates; over a slice that stays within
   float32's rounding of the statistic), ``lk_flush64`` adding every slot into float64 with
   each moment's hi and lo columns together. N_k (the column of ones) and every moment weigh a
   row by the same ``r~``: the weights of one weighted mean.

Nothing of size (samples x components) outlives a chunk: ``CHUNK_BYTES`` of float64
log-densities, near the L2 cache, so step 3 and 4 read what step 2 wrote from it.
"""

from __future__ import annotations

from typing import Any

import cupy
import numpy as np

from .._gaussian import Params, Stats
from .data import CupyData, scratch_bytes, weighted_chunks
from .kernels import KernelRef, kernel_ref, load_kernel

SOURCE = "em_largek.cu"
KERNELS = ("lk_features64", "lk_weights64", "lk_rows64", "lk_flush64")
#: bytes of float64 log-densities per chunk (the TF32 responsibilities take half as much)
CHUNK_BYTES = 32 << 20
#: rows a float32 slot of the statistics sums (a slice of the strided-batched TF32 GEMM)
SLICE_ROWS = 2048
#: cuBLAS constants (``cublas_api.h``, ``library_types.h``)
_OP_N, _OP_T = 0, 1
#: ``gemm``'s precisions: (cudaDataType of A, B, C; cublasComputeType; alpha = 1 in that type)
_PRECISIONS: dict[str, tuple[int, int, np.ndarray]] = {
    "float32": (0, 68, np.ones(1, np.float32)),  # CUBLAS_COMPUTE_32F: FMA, no TF32
    "tf32": (0, 77, np.ones(1, np.float32)),  # CUBLAS_COMPUTE_32F_FAST_TF32
    "float64": (1, 70, np.ones(1, np.float64)),  # CUBLAS_COMPUTE_64F
    # bfloat16 operands and product (CUDA_R_16BF), float32 sums (CUBLAS_COMPUTE_32F)
    "bf16": (14, 68, np.ones(1, np.float32)),
}


#: cublasMath_t flag: reductions in the compute type, never in a reduced-precision output type
_DISALLOW_REDUCED_PRECISION_REDUCTION = 16


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def geometry(n_features: int, covariance_type: str) -> tuple[int, int, int]:
    """``(f, fp, ldf)``: statistics per component beside N_k, and two row strides.

    The float64 feature row's (``f`` rounded up to 8) and the split float32 row's (``2 f + 1``
    rounded up to 8).
    """
    f = n_features + (n_features if covariance_type == "diag" else 1)
    return f, _round_up(f, 8), _round_up(2 * f + 1, 8)


def kernel_refs() -> list[KernelRef]:
    """The kernels of a float64 E-step pass."""
    return [kernel_ref(SOURCE, name) for name in KERNELS]


def chunk_rows(data: CupyData, budget: int, kp: int, fp: int, ldf: int) -> int:
    """Rows per chunk: ``CHUNK_BYTES`` of float64 log-densities.

    Whole slices where more than one fits; the temporaries within the scratch allowance beside
    the data.
    """
    per_row = 12 * kp + 8 * fp + 4 * ldf + -(-4 * kp * ldf // SLICE_ROWS)
    rows = min(CHUNK_BYTES // (8 * kp), scratch_bytes(data, budget) // per_row)
    rows = max(rows, 32)
    return rows // SLICE_ROWS * SLICE_ROWS if rows >= SLICE_ROWS else rows // 32 * 32


def gemm(
    transa: int, transb: int, m: int, n: int, k: int, a: int, lda: int, b: int, ldb: int,
    c: int, ldc: int, *, precision: str, batch: int = 1,
    strides: tuple[int, int, int] = (0, 0, 0), accumulate: bool = False,
) -> None:  # fmt: skip
    """``C = op(A) op(B)`` (``accumulate``: ``C += ...``), column-major, cuBLAS ``gemmEx``.

    ``precision``: ``"float32"`` (float32 FMA products and sums), ``"tf32"`` (float32 operands
    read as TF32 by the tensor cores, float32 sums), ``"bf16"`` (bfloat16 operands and
    product, float32 sums) or ``"float64"``. ``a``, ``b``, ``c``: device
    pointers on the current stream. ``batch`` > 1: strided batched (element strides of A, B, C).
    """
    from cupy_backends.cuda.libs import cublas

    handle = cupy.cuda.device.get_cublas_handle()
    dtype, compute, one = _PRECISIONS[precision]
    zero = one if accumulate else np.zeros_like(one)
    if batch == 1:
        # a bfloat16 product: cuBLAS may otherwise add split-K partial sums in the output type
        # (each a bfloat16 rounding, outside the screen's bound); the flag keeps every
        # reduction in the compute type (float32), on this call only
        mode = cublas.getMathMode(handle) if precision == "bf16" else None
        if mode is not None:
            cublas.setMathMode(handle, mode | _DISALLOW_REDUCED_PRECISION_REDUCTION)
        try:
            cublas.gemmEx(
                handle, transa, transb, m, n, k, one.ctypes.data, a, dtype, lda, b, dtype, ldb,
                zero.ctypes.data, c, dtype, ldc, compute, -1,
            )  # fmt: skip
        finally:
            if mode is not None:
                cublas.setMathMode(handle, mode)
        return
    sa, sb, sc = strides
    cublas.gemmStridedBatchedEx(
        handle, transa, transb, m, n, k, one.ctypes.data, a, dtype, lda, sa, b, dtype, ldb, sb,
        zero.ctypes.data, c, dtype, ldc, sc, batch, compute, -1,
    )  # fmt: skip


def accumulate(lk: Any, data: CupyData, params: Params, active: Any = None) -> Stats:
    """One pass over the data (``LargeKPass.accumulate`` where ``config.large_k_f64``)."""
    R, K, D = params.means.shape
    rk = R * K
    diag = data.covariance_type == "diag"
    ns = D if diag else 1
    f, fp, ldf = geometry(D, data.covariance_type)
    kp = _round_up(rk, 8)
    blocks = 4 * lk.config.n_sm
    kern = {ref.expr: load_kernel(ref) for ref in kernel_refs()}
    f64 = cupy.float64
    w_mat = lk.scratch.get("lk_w64", (kp, fp), f64)
    const = lk.scratch.get("lk_c64", (kp,), f64)
    kern["lk_weights64"](
        (max(1, min(-(-kp * fp // 256), blocks)),),
        (256,),
        (
            cupy.ascontiguousarray(params.weights, dtype=f64).reshape(-1),
            cupy.ascontiguousarray(params.means, dtype=f64).reshape(-1),
            cupy.ascontiguousarray(params.precisions_cholesky, dtype=f64).reshape(-1),
            np.int32(rk), np.int32(kp), np.int32(D), np.bool_(diag), np.int32(fp), w_mat, const,
        ),
    )  # fmt: skip
    groups = cupy.asarray(np.arange(R + 1, dtype=np.int32) * K)
    act = np.intp(0) if active is None else cupy.asarray(active).astype(cupy.int32)
    rows_max = chunk_rows(data, lk.budget(), kp, fp, ldf)
    feats = lk.scratch.get("lk_b64", (rows_max, fp), f64)
    split = lk.scratch.get("lk_f2", (rows_max, ldf), cupy.float32)
    logits = lk.scratch.get("lk_l64", (rows_max, kp), f64)
    resp = lk.scratch.get("lk_r32", (rows_max, kp), cupy.float32)
    slots = lk.scratch.get("lk_s2", (-(-rows_max // SLICE_ROWS), ldf, kp), cupy.float32)
    warps = blocks * 8
    ll_part = lk.scratch.get("lk_ll", (warps, R), f64)
    ll_part.data.memset_async(0, ll_part.nbytes)
    nk = cupy.zeros(rk)
    sf = cupy.zeros((rk, f))
    slot = kp * ldf  # elements of one slot
    pending = 0  # rows summed in slot 0 since its last flush (chunks shorter than a slice)

    def flush(n_slots: int) -> None:
        kern["lk_flush64"](
            (max(1, min(-(-rk * (f + 1) // 256), blocks)),),
            (256,),
            (slots, np.int32(n_slots), np.int32(rk), np.int32(kp), np.int32(ldf), np.int32(D),
             np.int32(ns), sf, nk),
        )  # fmt: skip

    for chunk, weights in weighted_chunks(data):
        chunk = cupy.ascontiguousarray(chunk)
        for start in range(0, chunk.shape[0], rows_max):
            x = chunk[start : start + rows_max]
            rows = x.shape[0]
            kern["lk_features64"](
                (max(1, min(-(-rows // 8), blocks)),),
                (256,),
                (x, np.int64(rows), np.int32(D), np.int32(fp), np.bool_(diag), np.int32(ldf),
                 feats, split),
            )  # fmt: skip
            # E-step: L (rows x kp, row-major) = B W^T, in float64
            gemm(
                _OP_T, _OP_N, kp, rows, fp, w_mat.data.ptr, fp, feats.data.ptr, fp,
                logits.data.ptr, kp, precision="float64",
            )  # fmt: skip
            w = np.intp(0) if weights is None else weights[start : start + rows]
            kern["lk_rows64"](
                (blocks,),
                (256,),
                (logits, np.int64(rows), np.int32(kp), const, groups, np.int32(R), act, w,
                 ll_part, resp),
            )  # fmt: skip
            # statistics: slot b (kp x ldf, column-major) = R~^T F over slice b's rows; chunks
            # shorter than a slice (thousands of components) add into slot 0 up to a slice's
            # rows, so the slots' traffic stays a fraction of the log-densities'
            if rows_max < SLICE_ROWS:
                if pending and pending + rows > SLICE_ROWS:
                    flush(1)
                    pending = 0
                gemm(
                    _OP_N, _OP_T, kp, ldf, rows, resp.data.ptr, kp, split.data.ptr, ldf,
                    slots.data.ptr, kp, precision="tf32", accumulate=pending > 0,
                )  # fmt: skip
                pending += rows
                continue
            full, rest = divmod(rows, SLICE_ROWS)
            if full:
                gemm(
                    _OP_N, _OP_T, kp, ldf, SLICE_ROWS, resp.data.ptr, kp, split.data.ptr, ldf,
                    slots.data.ptr, kp, precision="tf32", batch=full,
                    strides=(kp * SLICE_ROWS, ldf * SLICE_ROWS, slot),
                )  # fmt: skip
            if rest:
                at = full * SLICE_ROWS
                gemm(
                    _OP_N, _OP_T, kp, ldf, rest, resp.data.ptr + 4 * at * kp, kp,
                    split.data.ptr + 4 * at * ldf, ldf, slots.data.ptr + 4 * full * slot, kp,
                    precision="tf32",
                )  # fmt: skip
            flush(full + (rest > 0))
    if pending:
        flush(1)
    loglik = ll_part.sum(axis=0)
    sf = sf.reshape(R, K, f)
    sx = cupy.ascontiguousarray(sf[..., :D])
    sxx = cupy.ascontiguousarray(sf[..., D:] if diag else sf[..., D])
    return Stats(loglik, nk.reshape(R, K), sx, sxx, data.n_samples, data.total_weight)
