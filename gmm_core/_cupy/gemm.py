"""The GEMM path: full and tied covariance, and diag/spherical beyond the fused kernels' limits.

full
    Two GEMMs over row chunks of quadratic features ``[x_i x_j (i <= j), x]``: log-densities,
    then ``resp^T features`` (float64 data, more than 32 features, ``tensor_cores`` off, or more
    components than ``full_pass_tc`` takes). Up to 48 features the M-step (``full_mstep``) and
    the pass constants (``full_constants``) run as ``em_full.cu`` kernels.
tied
    The Cholesky-precision formulation as GEMMs over row chunks: ``X @ U_r`` for the
    log-densities, ``resp^T X`` and ``X^T X`` for the statistics.
diag, spherical
    ``x^2 . w_q + x . w_l`` per chunk, responsibilities, ``resp^T [x, x^2]``.

A ``cupy`` out-of-memory error during a pass retries the chunk with half the rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import cupy
import numpy as np

from .._gaussian import ROW_REDUCTIONS, Params, RowReduction, Stats, log_det_cholesky
from .config import LaunchConfig
from .data import CupyData, device_chunks, scratch_bytes, weighted_chunks
from .kernels import KernelRef, kernel_ref, load_kernel

logger = logging.getLogger("gmm_core")

SOURCE = "em_full.cu"
#: the row-wise kernels around the GEMMs (features in, per-sample reductions out)
ROWS_SOURCE = "gemm_rows.cu"
_LOG_2PI = math.log(2 * math.pi)
#: elements of the widest temporary of one GEMM-path chunk (float32: 256 MiB)
GEMM_CHUNK_ELEMENTS = 1 << 26
#: rows summed by one float32 statistics GEMM before float64 accumulation takes over
STATS_ROWS = 1 << 16
#: widest full covariance whose M-step and pass constants run as ``em_full.cu`` kernels (two
#: float64 D x D matrices per block in static shared memory)
FULL_KERNEL_MAX_FEATURES = 48


def resp_t_dot(resp: Any, feats: Any) -> Any:
    """``resp.T @ feats`` in float64: float32 GEMMs over row blocks, summed in float64.

    Blocks of ``STATS_ROWS`` rows keep each float32 sum short; a batched GEMM over the blocks
    measured 2.4x slower on an H100 than this loop (its operand is a transposed view).
    """
    n_rows = resp.shape[0]
    if resp.dtype == cupy.float64:
        return resp.T @ feats
    out = cupy.zeros((resp.shape[1], feats.shape[1]))
    for start in range(0, n_rows, STATS_ROWS):
        out += resp[start : start + STATS_ROWS].T @ feats[start : start + STATS_ROWS]
    return out


def full_features(x: Any, triu: tuple[Any, Any]) -> Any:
    """``[x_i x_j (i <= j), x]`` of a row chunk, shape (rows, D(D+1)/2 + D)."""
    return quad_features(x, triu[0], triu[1])


def quad_features(x: Any, pi: Any, pj: Any) -> Any:
    """``[x_pi[p] x_pj[p] for every pair p, x]`` of a row chunk, in x's dtype.

    ``pi``, ``pj``: int64 device arrays of feature indices (the upper triangle for full
    covariance, ``(j, j)`` for diag). One ``quad_features`` launch (``cuda/gemm_rows.cu``)
    instead of fancy indexing, a product and a concatenation.
    """
    from .checks import n_sm

    x = cupy.ascontiguousarray(x)
    n, d = x.shape
    n_pairs = int(pi.shape[0])
    out = cupy.empty((n, n_pairs + d), dtype=x.dtype)
    if n:
        kern = load_kernel(kernel_ref(ROWS_SOURCE, "quad_features", x.dtype))
        blocks = max(1, min(-(-n // 8), 32 * n_sm(x.device.id)))
        kern(
            (blocks,),
            (32, 8),
            (x, np.int64(n), np.int32(d), pi, pj, np.int32(n_pairs), out),
        )
    return out


def _host_triu(n_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    iu0, iu1 = np.triu_indices(n_features)
    return iu0, iu1, np.where(iu0 == iu1, 1.0, 2.0)


class GemmPass:
    """The GEMM path (serves every covariance type); see the module docstring.

    Parameters
    ----------
    config : LaunchConfig
    budget : callable
        Returns the device memory budget (bytes): quadratic features of resident full data are
        kept for the fit when they take at most half of it.
    """

    name = "gemm"

    def __init__(self, config: LaunchConfig, budget: Callable[[], int]) -> None:
        self.config = config
        self.budget = budget
        self._triu: dict[tuple[int, int], tuple[Any, Any, Any]] = {}
        self._squares: dict[tuple[int, int], Any] = {}

    def supports(self, data: CupyData, n_restarts: int, n_components: int) -> bool:
        """Every covariance type, dtype and size: the fallback of the other strategies."""
        return True

    def full_on_device_ok(self, n_features: int) -> bool:
        """Whether the full-covariance M-step and constants run as ``em_full.cu`` kernels."""
        return self.config.full_on_device and n_features <= FULL_KERNEL_MAX_FEATURES

    def kernel_refs(self, data: CupyData) -> list[KernelRef]:
        """``em_full.cu`` kernels of a fit (constants, M-step); none but for full covariance."""
        d = data.n_features
        if data.covariance_type != "full" or not self.full_on_device_ok(d):
            return []
        return [
            kernel_ref(SOURCE, "full_constants", data.dtype, d),
            kernel_ref(SOURCE, "full_mstep", d),
        ]

    # -- M-step -----------------------------------------------------------------------------------
    def m_step(
        self,
        stats: Stats,
        covariance_type: str,
        reg_covar: float,
        eps: float,
        *,
        operands: dict[str, Any] | None = None,
        defines: tuple[str, ...] = (),
        shift: Any = None,
    ) -> Params | None:
        """Full covariance: the M-step as one kernel launch (``full_mstep``); else None.

        Same formulas as :func:`gmm_core._gaussian.m_step` (``shift`` as it takes it); a
        covariance that is not positive definite gives NaN precision factors (the estimator's
        loop raises at its next check).
        ``operands``: ``full_pass_tc``'s operand buffers (:meth:`FullPassTC.operand_buffers`)
        to fill from the new parameters as well (up to 32 features), built with that pass's
        tuning ``defines``.
        """
        if covariance_type != "full":
            return None
        n_restarts, n_components, n_features = stats.sx.shape
        if not self.full_on_device_ok(n_features):
            return None
        rk = n_restarts * n_components
        f64 = cupy.float64
        shape = (n_restarts, n_components, n_features)
        out = Params(
            cupy.empty(shape[:2]),
            cupy.empty(shape),
            cupy.empty((*shape, n_features)),
            cupy.empty((*shape, n_features)),
        )
        load_kernel(kernel_ref(SOURCE, "full_mstep", n_features), defines if operands else ())(
            (rk,),
            (256,),
            (
                cupy.ascontiguousarray(stats.nk, dtype=f64),
                cupy.ascontiguousarray(stats.sx, dtype=f64),
                cupy.ascontiguousarray(stats.sxx, dtype=f64),
                np.int32(n_components),
                np.float64(reg_covar),
                np.float64(eps),
                # the estimator's loop passes a device array already (no copy per iteration)
                np.intp(0) if shift is None else cupy.asarray(shift, dtype=cupy.float64),
                out.weights,
                out.means,
                out.covariances,
                out.precisions_cholesky,
                *(operands.values() if operands is not None else [np.intp(0)] * 5),
            ),
        )
        return out

    # -- pass constants ---------------------------------------------------------------------------
    def constants(self, data: CupyData, params: Params, *, stacked: bool = False) -> dict[str, Any]:
        """Everything a chunk needs, in the fit dtype, computed once per pass.

        ``params`` may be device or host (NumPy) arrays: host parameters (scoring) are turned
        into the constants by NumPy, and only the results are copied to the device (parameter
        math as CuPy operations would compile a kernel each on a process's first call).
        ``stacked`` (diag/spherical): also ``W = [Wq; Wl]``, the weights of the features
        ``[x^2, x]`` (:func:`quad_features`).
        """
        xp = cupy.get_array_module(params.means)
        cov = data.covariance_type
        dt = data.dtype
        n_restarts, n_components, n_features = params.means.shape
        rk = n_restarts * n_components
        pc = params.precisions_cholesky
        out: dict[str, Any] = {"cov": cov, "R": n_restarts, "K": n_components, "D": n_features}
        full_on_device = cov == "full" and self.full_on_device_ok(n_features)
        if not full_on_device:
            log_det = log_det_cholesky(pc, cov, n_features, xp)
            if cov == "tied":
                log_det = log_det[:, None]
            const = -0.5 * n_features * _LOG_2PI + log_det + xp.log(params.weights)
            out["const"] = const.reshape(1, n_restarts, n_components).astype(dt)
        if full_on_device:
            # full_constants (em_full.cu): M and the constants below, one launch
            n_tri = n_features * (n_features + 1) // 2
            M = cupy.empty((n_tri + n_features, rk), dtype=dt)
            const_k = cupy.empty(rk, dtype=dt)
            load_kernel(kernel_ref(SOURCE, "full_constants", dt, n_features))(
                (rk,),
                (256,),
                (
                    cupy.ascontiguousarray(cupy.asarray(params.weights), dtype=cupy.float64),
                    cupy.ascontiguousarray(cupy.asarray(params.means), dtype=cupy.float64),
                    cupy.ascontiguousarray(cupy.asarray(pc), dtype=cupy.float64),
                    np.int32(rk),
                    M,
                    const_k,
                ),
            )
            iu0, iu1, _ = self.triu(n_features)
            out["M"] = M
            out["const"] = const_k.reshape(1, n_restarts, n_components)
            out["triu"] = (iu0, iu1)
            width = n_tri + n_features + rk
        elif cov == "full":
            # |(x - mu) U|^2 = phi(x) . w + x . v + mu^T P mu with P = U U^T and phi(x) the
            # upper-triangular products x_i x_j: one GEMM over resp-independent features
            iu0, iu1, scale = self.triu(n_features) if xp is cupy else _host_triu(n_features)
            prec = xp.matmul(pc, pc.swapaxes(-1, -2))  # (R, K, D, D)
            w_quad = prec[..., iu0, iu1] * scale  # (R, K, T)
            v_lin = -2.0 * xp.matmul(prec, params.means[..., None])[..., 0]  # -2 P mu
            c_quad = -0.5 * (v_lin * params.means).sum(-1)  # mu^T P mu
            weights = xp.concatenate([w_quad, v_lin], axis=-1).reshape(rk, -1)
            out["M"] = (-0.5 * weights).T.astype(dt)  # (T + D, RK)
            out["const"] = (const - 0.5 * c_quad).reshape(1, n_restarts, n_components).astype(dt)
            out["triu"] = self.triu(n_features)[:2]
            width = len(iu0) + n_features + rk
        elif cov == "tied":
            out["U"] = pc.astype(dt)  # (R, D, D)
            mu_u = xp.matmul(params.means, pc)  # (R, K, D)
            out["muU_T"] = mu_u.transpose(0, 2, 1).astype(dt)  # (R, D, K)
            out["muU_sq"] = (mu_u**2).sum(-1).reshape(n_restarts, 1, n_components).astype(dt)
            width = n_restarts * max(n_features, n_components)
        else:
            prec = pc**2
            if cov == "spherical":
                prec = xp.broadcast_to(prec[..., None], params.means.shape)
            # log N = x^2 . (-prec/2) + x . (mu prec) - (mu^2 prec)/2 (+ const); x is centred
            out["Wq"] = (-0.5 * prec).reshape(rk, n_features).T.astype(dt)
            out["Wl"] = (params.means * prec).reshape(rk, n_features).T.astype(dt)
            if stacked:
                out["W"] = xp.concatenate([out["Wq"], out["Wl"]])  # (2 D, RK)
            quad = (params.means**2 * prec).sum(-1)
            out["const"] = (const - 0.5 * quad).reshape(1, n_restarts, n_components).astype(dt)
            width = rk + (2 if stacked else 1) * n_features
        if xp is not cupy:  # host constants: to the device, C-contiguous
            for key, value in out.items():
                if isinstance(value, np.ndarray):
                    out[key] = cupy.asarray(np.ascontiguousarray(value))
        # a chunk's widest temporaries (a few of them) within the scratch allowance
        scratch = scratch_bytes(data, self.budget())
        elements = min(GEMM_CHUNK_ELEMENTS, scratch // (4 * np.dtype(dt).itemsize))
        out["rows"] = int(max(256, elements // max(width, 1)))
        return out

    def squares(self, n_features: int) -> tuple[Any, Any]:
        """Device pairs ``(j, j)`` of :func:`quad_features` for diag/spherical: ``[x^2, x]``."""
        key = (n_features, cupy.cuda.Device().id)
        if key not in self._squares:
            self._squares[key] = cupy.asarray(np.arange(n_features, dtype=np.int64))
        j = self._squares[key]
        return j, j

    def triu(self, n_features: int) -> tuple[Any, Any, Any]:
        """Device indices of the upper triangle and the weights (1 diagonal, 2 off) of x_i x_j."""
        key = (n_features, cupy.cuda.Device().id)
        if key not in self._triu:
            iu0, iu1 = np.triu_indices(n_features)
            self._triu[key] = (
                cupy.asarray(iu0),
                cupy.asarray(iu1),
                cupy.asarray(np.where(iu0 == iu1, 1.0, 2.0)),
            )
        return self._triu[key]

    def log_prob_chunk(self, x: Any, c: dict[str, Any], features: Any = None) -> Any:
        """Weighted log-densities of a row chunk, shape (rows, R, K)."""
        n = x.shape[0]
        R, K = c["R"], c["K"]
        if c["cov"] == "full":
            if features is None:
                features = full_features(x, c["triu"])
            return (features @ c["M"]).reshape(n, R, K) + c["const"]
        if c["cov"] == "tied":
            y = cupy.matmul(x[None], c["U"])  # (R, n, D)
            cross = cupy.matmul(y, c["muU_T"])  # (R, n, K)
            sq = (y * y).sum(-1)[..., None] - 2 * cross + c["muU_sq"]
            return c["const"] - 0.5 * sq.transpose(1, 0, 2)
        lin = (x * x) @ c["Wq"] + x @ c["Wl"]
        return lin.reshape(n, R, K) + c["const"]

    # -- data-derived caches ----------------------------------------------------------------------
    def xtx(self, data: CupyData) -> Any:
        """``X^T X`` of the centred data in float64 (tied covariance), once per fit.

        Weighted data: ``X^T diag(w) X``.
        """
        if data._xtx is None:
            xtx = cupy.zeros((data.n_features, data.n_features))
            for chunk, weights in weighted_chunks(data):
                c64 = chunk.astype(cupy.float64, copy=False)
                left = c64 if weights is None else c64 * weights.astype(cupy.float64)[:, None]
                xtx += left.T @ c64
            data._xtx = xtx
        return data._xtx

    def feature_cache(self, data: CupyData, triu: tuple[Any, Any]) -> list[Any] | None:
        """Quadratic features of resident data, computed once per fit when they are small.

        They take (D + 3) / 2 times the data's memory, so they are kept only within half the
        scratch allowance (small data sets, where recomputing them per pass would dominate);
        otherwise every pass recomputes them per chunk.
        """
        if not data.resident:
            return None
        if data._features is None:
            n_cols = data.n_features * (data.n_features + 3) // 2
            nbytes = data.n_samples * n_cols * data.dtype.itemsize
            if nbytes > scratch_bytes(data, self.budget()) // 2:
                return None
            try:
                data._features = [full_features(chunk, triu) for chunk in data.chunks]
            except cupy.cuda.memory.OutOfMemoryError:
                cupy.get_default_memory_pool().free_all_blocks()
                return None
        return data._features

    # -- passes -----------------------------------------------------------------------------------
    def weighted_log_prob(self, data: CupyData, params: Params) -> Any:
        """``log w_k + log N(x | k)`` of one mixture, shape (n_samples, n_components)."""
        return self.reduce_log_prob(data, params, RowReduction("none", cupy))

    def reduce_log_prob(self, data: CupyData, params: Params, reduce: Callable[[Any], Any]) -> Any:
        """``reduce`` of the weighted log-densities (rows, K) of every row chunk, concatenated.

        One mixture; no (N, K) temporary unless ``reduce`` keeps one. ``reduce`` may return host
        arrays (each chunk's result leaves the device at once). A
        :class:`~gmm_core._gaussian.RowReduction` runs fused (:meth:`score`), but for tied
        covariance.
        """
        if isinstance(reduce, RowReduction) and data.covariance_type != "tied":
            return self.score(data, params, reduce)
        consts = self.constants(data, params)
        parts = []
        for chunk in device_chunks(data):
            for start in range(0, chunk.shape[0], consts["rows"]):
                lp = self.log_prob_chunk(chunk[start : start + consts["rows"]], consts)
                parts.append(reduce(lp[:, 0, :]))
        if len(parts) == 1:
            return parts[0]
        return (cupy if isinstance(parts[0], cupy.ndarray) else np).concatenate(parts)

    def score(self, data: CupyData, params: Params, reduce: RowReduction) -> Any:
        """A named reduction of one mixture's weighted log-densities, row chunk by row chunk.

        Per chunk: :func:`quad_features`, one cuBLAS GEMM with the constants' weights (computed
        on the host from the parameters, a few KB), and ``score_rows`` (``cuda/gemm_rows.cu``)
        adding the constants and reducing each row. The result is written in place (no
        concatenation); with ``reduce.to_host`` each chunk's result goes to a host array.
        Full, diag and spherical covariance.
        """
        host = params.map(cupy.asnumpy)
        c = self.constants(data, host, stacked=True)
        if c["cov"] == "full":
            pi, pj = c["triu"]
            weights = c["M"]
        else:
            pi, pj = self.squares(data.n_features)
            weights = c["W"]
        n, k = data.n_samples, c["R"] * c["K"]
        mode = ROW_REDUCTIONS.index(reduce.how)  # score_rows' modes: the same order
        rows_out = reduce.how in ("proba", "none")
        shape = (n, k) if rows_out else (n,)
        dtype = np.dtype(np.int64) if reduce.how == "argmax" else data.dtype
        on_host = reduce.to_host is not None
        out = np.empty(shape, dtype=dtype) if on_host else cupy.empty(shape, dtype=dtype)
        const = c["const"].reshape(-1)
        kern = load_kernel(kernel_ref(ROWS_SOURCE, "score_rows", data.dtype))
        null = np.intp(0)
        row0 = 0
        for chunk in device_chunks(data):
            for start in range(0, chunk.shape[0], c["rows"]):
                x = chunk[start : start + c["rows"]]
                rows = x.shape[0]
                lp = quad_features(x, pi, pj) @ weights  # (rows, K)
                part = cupy.empty((rows, *shape[1:]), dtype=dtype) if on_host else None
                if part is None:
                    part = out[row0 : row0 + rows]
                kern(
                    (max(1, min(-(-rows // 256), 32 * self.config.n_sm)),),
                    (256,),
                    (
                        lp,
                        np.int64(rows),
                        np.int32(k),
                        const,
                        np.int32(mode),
                        part if reduce.how == "argmax" else null,
                        part if reduce.how == "logsumexp" else null,
                        part if rows_out else null,
                    ),
                )
                if on_host:
                    out[row0 : row0 + rows] = reduce.to_host(part)
                row0 += rows
        return out

    def accumulate(self, data: CupyData, params: Params) -> Stats:
        """One pass over the data: log-likelihood and sufficient statistics of every restart."""
        c = self.constants(data, params)
        R, K, D = c["R"], c["K"], c["D"]
        cov = data.covariance_type
        loglik = cupy.zeros(R)
        nk = cupy.zeros((R, K))
        sx = cupy.zeros((R * K, D))
        sxx: Any
        cached = None
        if cov == "full":
            n_tri = D * (D + 1) // 2
            s_feat = cupy.zeros((R * K, n_tri + D))
            cached = self.feature_cache(data, c["triu"])
        elif cov == "tied":
            sxx = self.xtx(data)
        elif cov == "diag":
            sxx = cupy.zeros((R * K, D))
        else:
            sxx = cupy.zeros(R * K)
        rows = c["rows"]
        if cov == "full" and cached is not None:  # the only wide temporary is (rows, R*K)
            rows = max(rows, GEMM_CHUNK_ELEMENTS // (R * K))
        for i_chunk, (chunk, weights) in enumerate(weighted_chunks(data)):
            start = 0
            while start < chunk.shape[0]:
                x = chunk[start : start + rows]
                w = None if weights is None else weights[start : start + rows]
                try:
                    feats = None
                    if cov == "full":
                        feats = (
                            cached[i_chunk][start : start + rows]
                            if cached is not None
                            else full_features(x, c["triu"])
                        )
                    lp = self.log_prob_chunk(x, c, feats)
                    amax = lp.max(axis=2, keepdims=True)
                    lp -= amax
                    cupy.exp(lp, out=lp)
                    norm = lp.sum(axis=2, keepdims=True)
                    lp /= norm
                    if w is not None:  # weighted: every responsibility times its row's weight
                        lp *= w[:, None, None]
                    resp = lp.reshape(x.shape[0], R * K)
                    lse = cupy.log(norm[..., 0].astype(cupy.float64)) + amax[..., 0]  # (n, R)
                    # column sums as GEMMs: CuPy's axis-0 reductions are slow for few columns;
                    # every product first, the sums after: an out-of-memory error part-way
                    # must not leave this chunk half added before it is retried smaller
                    row_w = cupy.ones(x.shape[0]) if w is None else w.astype(cupy.float64)
                    chunk_ll = row_w @ lse
                    ones = cupy.ones((x.shape[0], 1), dtype=resp.dtype)
                    chunk_nk = resp_t_dot(resp, ones).reshape(R, K)
                    if cov == "full":
                        chunk_feat = resp_t_dot(resp, feats)
                    else:
                        chunk_sx = resp_t_dot(resp, x)
                        if cov == "diag":
                            chunk_sxx = resp_t_dot(resp, x * x)
                        elif cov == "spherical":
                            chunk_sxx = resp_t_dot(resp, (x * x).sum(axis=1)[:, None])[:, 0]
                except cupy.cuda.memory.OutOfMemoryError:
                    if rows <= 256:
                        raise
                    cupy.get_default_memory_pool().free_all_blocks()
                    rows //= 2
                    logger.warning("GPU out of memory in a pass; retrying with %d-row chunks", rows)
                    continue
                loglik += chunk_ll
                nk += chunk_nk
                if cov == "full":
                    s_feat += chunk_feat
                else:
                    sx += chunk_sx
                    if cov in ("diag", "spherical"):
                        sxx += chunk_sxx
                start += x.shape[0]
        if cov == "full":
            sx = s_feat[:, n_tri:]
            tri = s_feat[:, :n_tri].reshape(R, K, n_tri)
            sxx = cupy.empty((R, K, D, D))
            iu0, iu1 = c["triu"]
            sxx[..., iu0, iu1] = tri
            sxx[..., iu1, iu0] = tri
        sx = cupy.ascontiguousarray(sx).reshape(R, K, D)
        if cov in ("diag", "spherical"):
            sxx = sxx.reshape((R, K, D) if cov == "diag" else (R, K))
        return Stats(loglik, nk, sx, sxx, data.n_samples, data.total_weight)
