"""The large-K pass with a screened E-step: only the responsibilities that count, exactly.

In many dimensions a sample's log-densities over hundreds of components spread over hundreds
of nats, so all but a few of its responsibilities are below ``exp(-T)`` and add nothing a sum
keeps. Per row chunk (``cuda/em_largek_sparse.cu``, whose header gives the bound):

1. a cuBLAS GEMM screens every component (BF16 by default, or TF32:
   ``LaunchConfig.large_k_screen``): ``[x, x^2] . W^T`` (diag) or ``x . W^T``
   (spherical), the dense pass's weights (``DensePass``), with a proven error bound per sample
   and component;
2. ``lks_select``: per row and restart, the components that may hold a responsibility of
   ``exp(-T)`` or more (``T = log(n) + 24 log 2``: what is skipped stays below a float32 ulp of
   one sample's weight in any sum over all rows), their log-densities exactly (float64, from
   ``x - mu``), the log-sum-exp and responsibilities over them, appended as
   ``(component, row, r)`` pairs;
3. after a data chunk: the pairs sorted by component then row (thrust), and ``lks_reduce`` sums
   each component's statistics in float64: deterministic.

Rows with more than 32 candidates in a restart (overlapping components, a first pass from
scattered starts) are listed and run through the dense float32 GEMM pass, and so is a whole
data chunk whose pairs overflow their capacity: which rows take which path depends on the data
and the parameters alone. The pass is ``LaunchConfig.large_k_sparse``
(``GMM_CORE_LARGE_K_SPARSE``); its speed and accuracy are measured by
``benchmarks/bench_large_k.py`` and ``tests/gpu/test_gpu_large_k.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import cupy
import numpy as np

from .._gaussian import Params, Stats
from .data import CupyData, scratch_bytes, weighted_chunks
from .kernels import KernelRef, allow_dynamic_smem, kernel_ref, load_kernel
from .large_k_f64 import _round_up, gemm

SOURCE = "em_largek_sparse.cu"
#: the kernels every screen launches, and each screen's own ("mma" also launches the BF16
#: screen's: several restarts go through it)
COMMON_KERNELS = ("lks_norms", "lks_order_keys", "lks_reduce", "lks_combine", "lks_gather")
_BF16_KERNELS = ("lks_bf16", "lks_features16", "lks_select<unsigned short>")
SCREEN_KERNELS = {
    "tf32": ("lks_select<float>",),
    "bf16": _BF16_KERNELS,
    "mma": (*_BF16_KERNELS, "lks_exact"),
}
#: lks_mma by covariance type
MMA_KERNELS = {"diag": "lks_mma<true>", "spherical": "lks_mma<false>"}
KERNELS = (
    *COMMON_KERNELS, "lks_select<float>", *SCREEN_KERNELS["mma"], *MMA_KERNELS.values(),
)  # fmt: skip
#: blocks of ``lks_select`` per SM: its launch bounds (``LKS_SELECT_BLOCKS``: 4 blocks of 256
#: threads, 64 registers, a few bytes spilled; measured 5-9% faster than 3 without spills)
SELECT_BLOCKS_PER_SM = 4
#: bytes of screened log-densities per screening chunk: one GEMM and one ``lks_select`` per
#: chunk (128 MB measured 0.5-0.8 ms faster per pass than the dense pass's 64 MB, and 256 MB no
#: faster: ``gpu_h100_select_profile.json``)
CHUNK_BYTES = 128 << 20
#: pairs per ``lks_reduce`` block (a component's pairs split into runs of this many)
ITEM_PAIRS = 256
#: bound on the screening product's relative error, |G~ - G| <= U |f| |w_k|, per screen
#: (``LaunchConfig.large_k_screen``): TF32, operands read to 2^-10 each and float32 sums, times
#: two; BF16, operands and product rounded to 2^-8 each and float32 sums (the .cu's header)
U_SCREEN = {"tf32": 2.0**-8, "bf16": 5 * 2.0**-8, "mma": 3 * 2.0**-8}
#: ``lks_mma`` (the "mma" screen): rows per tile, components per weight tile, inner indices
#: per weight stage, list entries per row (``lkm::`` in the .cu)
MMA_ROWS, MMA_TILE, MMA_KC, MMA_CAP = 128, 128, 32, 96
#: rows per ``lks_mma`` / ``lks_exact`` launch (their candidates: 68 bytes a row)
MMA_ROWS_PER_LAUNCH = 1 << 17
#: most restarts (``lks_select`` keeps a threshold per restart in shared memory) and features
#: (a row in a warp's registers)
MAX_GROUPS = 32
MAX_FEATURES = 256
#: pairs held per row and active restart (beyond, the data chunk goes through the dense pass)
PAIRS_PER_ROW = 4
#: bytes per pair: key and r, the sort's index and temporaries, the ordered row and r
PAIR_BYTES = 48
_OP_N, _OP_T = 0, 1
#: a list to append each pass's ``{"rows", "listed", "pairs"}`` to (benchmarks; None: off)
trace: list[dict[str, int]] | None = None
#: a dict to add each step's device milliseconds to (``benchmarks/profile_large_k_sparse.py``;
#: None: off)
profile: dict[str, float] | None = None


class _Steps:
    """Device time per step of a pass, by CUDA events (only where ``profile`` is a dict)."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, Any, Any]] = []
        self.name: str | None = None
        self.begin: Any = None

    def __call__(self, name: str | None) -> None:
        """End the current step and start ``name`` (None: just end)."""
        if profile is None:
            return
        now = cupy.cuda.Event()
        now.record()
        if self.name is not None:
            self.marks.append((self.name, self.begin, now))
        self.name, self.begin = name, now

    def add_to(self, out: dict[str, float] | None) -> None:
        if out is None:
            return
        self(None)
        cupy.cuda.get_current_stream().synchronize()
        for name, a, b in self.marks:
            out[name] = out.get(name, 0.0) + cupy.cuda.get_elapsed_time(a, b)


def supports(n_features: int, n_restarts: int) -> bool:
    """Whether the screened pass takes data of this width with this many restarts."""
    return n_features <= MAX_FEATURES and n_restarts <= MAX_GROUPS


def mma_serves(n_active: int, n_restarts: int, n_components: int, inner: int, smem: int) -> bool:
    """Whether ``lks_mma`` takes a pass.

    One restart, active; components numbered in 16 bits; its shared memory within the
    device's ``smem`` (bytes a block may opt into).
    """
    return (
        n_restarts == 1
        and n_active == 1
        and n_components <= 1 << 16
        and mma_smem(_round_up(inner, MMA_KC)) <= smem
    )


def margin(n_samples: int, total_weight: float) -> float:
    """``T`` (nats): a skipped responsibility is below ``exp(-T)``.

    Summed over every row (or weight) it stays below 2^-24, a float32 ulp of one sample.
    """
    return math.log(max(float(n_samples), float(total_weight), 1.0)) + 24 * math.log(2.0)


def kernel_refs(screen: str | None = None, covariance_type: str | None = None) -> list[KernelRef]:
    """The kernels of the screened pass (beside the dense pass's, which it also launches).

    Those of ``screen`` (``LARGE_K_SCREENS``) over data of ``covariance_type``; all of them
    where either is None.
    """
    if screen is None or covariance_type is None:
        names: tuple[str, ...] = KERNELS
    else:
        names = (*COMMON_KERNELS, *SCREEN_KERNELS[screen])
        if screen == "mma":
            names += (MMA_KERNELS[covariance_type],)
    return [kernel_ref(SOURCE, name) for name in names]


def accumulate(lk: Any, data: CupyData, params: Params, active: Any = None) -> Stats:
    """One pass over the data (``LargeKPass.accumulate`` where ``config.large_k_sparse``)."""
    from .large_k import DensePass  # (large_k imports this module)

    step = _Steps()
    step("setup")
    dense = DensePass(lk, data, params, active, CHUNK_BYTES)
    R, K, D = params.means.shape
    rk, kp, fp, ldb = dense.rk, dense.kp, dense.fp, dense.ldb
    diag = dense.diag
    inner = fp if diag else D  # the screening product's inner dimension ([x, x^2] or x)
    n_active = R if active is None else int(np.count_nonzero(cupy.asnumpy(active)))
    kind = lk.config.large_k_screen
    if kind == "mma" and not mma_serves(n_active, R, K, inner, lk.config.smem_optin):
        kind = "bf16"  # e.g. several restarts: the BF16 GEMM screen takes them
    refs = kernel_refs(kind, data.covariance_type)
    kern = {ref.expr: load_kernel(ref, lk.options) for ref in refs}
    blocks = dense.blocks
    bf16 = kind == "bf16"
    select = kern.get("lks_select<unsigned short>" if bf16 else "lks_select<float>")
    f64 = cupy.float64
    bnd = lk.scratch.get("lks_bnd", (6, kp), cupy.float32)
    e0 = lk.scratch.get("lks_e0", (kp,), f64)
    means = cupy.ascontiguousarray(params.means, dtype=f64).reshape(-1)
    prec_chol = cupy.ascontiguousarray(params.precisions_cholesky, dtype=f64).reshape(-1)
    kern["lks_norms"](
        (max(1, min(-(-kp // 256), blocks)),),
        (256,),
        (
            dense.w_mat, dense.const, np.int32(fp), np.int32(inner), np.int32(rk), np.int32(kp),
            cupy.ascontiguousarray(params.weights, dtype=f64).reshape(-1), prec_chol,
            np.int32(D), np.bool_(diag), bnd, e0,
        ),
    )  # fmt: skip
    # lks_select: one wave of blocks, a float64 log-likelihood partial per warp and restart
    select_blocks = SELECT_BLOCKS_PER_SM * lk.config.n_sm
    ll_sparse = lk.scratch.get("lks_ll", (select_blocks * 8, R), f64)
    loglik = cupy.zeros(R, dtype=f64)
    t = np.float32(margin(data.n_samples, data.total_weight or 0.0))
    screen = _Screen(dense, kern, lk.scratch) if bf16 else None
    mma = _Mma(dense, kern, lk, inner) if kind == "mma" else None
    model = (bnd, means, prec_chol, e0)
    u = np.float32(U_SCREEN[kind])
    rows_max = dense.rows_max
    seen = {"rows": 0, "listed": 0, "pairs": 0, "rescreened": 0}
    for chunk, weights in weighted_chunks(data):
        chunk = cupy.ascontiguousarray(chunk)
        n = chunk.shape[0]
        room = scratch_bytes(data, lk.budget()) // PAIR_BYTES
        cap = int(max(min(PAIRS_PER_ROW * n * max(n_active, 1), room), 4096))
        keys = cupy.empty(cap, dtype=cupy.uint64)
        rv = cupy.empty(cap, dtype=f64)
        # one buffer, one copy to the host: pairs reserved, rows listed (uint64), then the
        # pairs per component (int32)
        state = cupy.zeros(2 + -(-rk // 2), dtype=cupy.uint64)
        counters = state[:2]
        counts = state[2:].view(cupy.int32)[:rk]
        listed = cupy.empty(n, dtype=cupy.int32)
        ll_sparse.data.memset_async(0, ll_sparse.nbytes)
        rowbase = cupy.empty(n, dtype=cupy.int64)
        if mma is not None:  # steps 1 and 2: lks_mma, lks_exact
            step("screen and select")
            seen["rescreened"] += mma.chunk(
                chunk, weights, model, u, t,
                (keys, rv, np.int64(cap), counters, counts, listed,
                 counters[1:].view(cupy.uint32), ll_sparse, rowbase),
            )  # fmt: skip
        for start in range(0, n if mma is None else 0, rows_max):
            x = chunk[start : start + rows_max]
            rows = x.shape[0]
            step("screen")
            if screen is not None:
                logits = screen.product(x, inner)
            else:
                if diag:
                    dense.features(x)
                    operand, ld = dense.feats.data.ptr, ldb
                else:
                    operand, ld = x.data.ptr, D
                gemm(
                    _OP_T, _OP_N, kp, rows, inner,
                    dense.w_mat.data.ptr, fp, operand, ld, dense.logits.data.ptr, kp,
                    precision="tf32",
                )  # fmt: skip
                logits = dense.logits
            w = np.intp(0) if weights is None else weights[start : start + rows]
            step("select")
            assert select is not None
            select(
                (select_blocks,),
                (256,),
                (
                    logits, np.int64(rows), np.int32(kp), x, np.int32(D), np.bool_(diag),
                    bnd, means, prec_chol, e0, dense.groups, np.int32(R), dense.act, w,
                    u, t, np.int64(start), keys, rv, np.int64(cap), counters, counts,
                    listed, counters[1:].view(cupy.uint32), ll_sparse, rowbase,
                ),
            )  # fmt: skip
        step("sync")
        state_h = state.get()
        used, n_listed = int(state_h[0]), int(state_h[1])
        if used > cap:  # the pairs did not fit: the whole chunk through the dense pass
            step("overflowed chunk")
            seen["rows"] += n
            seen["listed"] += n
            dense.add(chunk, weights)
            continue
        loglik += ll_sparse.sum(axis=0)
        counts_h = state_h[2:].view(np.int32)[:rk].astype(np.int64)
        offsets = np.zeros(rk + 1, dtype=np.int64)
        np.cumsum(counts_h, out=offsets[1:])
        nnz = int(offsets[-1])
        seen["rows"] += n
        seen["listed"] += n_listed
        seen["pairs"] += nnz
        if nnz:
            step("sort")
            rows_s = cupy.empty(nnz, dtype=cupy.int32)
            r_s = cupy.empty(nnz, dtype=f64)
            grid = (max(1, min(-(-nnz // 256), blocks)),)
            # the keys alone, radix-sorted (an index sort of them measured no faster)
            ordered = cupy.sort(keys[:used])
            step("order")
            kern["lks_order_keys"](
                grid, (256,), (ordered, keys, rv, rowbase, np.int64(nnz), rows_s, r_s)
            )
            step("reduce")
            _reduce(dense, kern, rows_s, r_s, offsets, counts_h, chunk)
        if n_listed:
            step("listed rows")
            _dense_rows(dense, kern["lks_gather"], chunk, weights, listed[:n_listed])
    if trace is not None:
        trace.append(seen)
    step("stats")
    stats = dense.stats()
    stats.loglik = stats.loglik + loglik
    step.add_to(profile)
    return stats


class _Screen:
    """The BF16 screen: bfloat16 operands and product, float32 sums.

    The weights are converted once a pass, the rows per chunk; ``em_largek_sparse.cu``'s
    header gives the bound.
    """

    def __init__(self, dense: Any, kern: dict[str, Any], scratch: Any) -> None:
        self.dense, self.kern = dense, kern
        kp, fp, rows_max = dense.kp, dense.fp, dense.rows_max
        self.ld = fp if dense.diag else _round_up(dense.D, 8)
        self.w16 = scratch.get("lks_w16", (kp, fp), cupy.uint16)
        # in the dense pass's own buffers (feats: rows_max x ldb float32, logits: rows_max x kp
        # float32), which it writes only for listed rows, after the chunk's lks_select has read
        # these (one stream): the BF16 screen takes no memory beyond the chunk's budget
        self.x16 = _view(dense.feats, (rows_max, self.ld))
        self.l16 = _view(dense.logits, (rows_max, kp))
        self._convert(dense.w_mat, kp, fp, fp, self.w16, fp)

    def _convert(self, a: Any, rows: int, cols: int, lda: int, out: Any, ldo: int) -> None:
        self.kern["lks_bf16"](
            (max(1, min(-(-rows // 8), self.dense.blocks)),),
            (256,),
            (a, np.int64(rows), np.int32(cols), np.int32(lda), out, np.int32(ldo)),
        )

    def product(self, x: Any, inner: int) -> Any:
        """The screened values of the rows ``x`` (bfloat16 bits, rows x kp)."""
        dense, rows = self.dense, x.shape[0]
        if dense.diag:
            self.kern["lks_features16"](
                (max(1, min(-(-rows // 8), dense.blocks)),),
                (256,),
                (x, np.int64(rows), np.int32(dense.D), np.int32(self.ld), self.x16),
            )
        else:
            self._convert(x, rows, dense.D, dense.D, self.x16, self.ld)
        gemm(
            _OP_T, _OP_N, dense.kp, rows, inner, self.w16.data.ptr, dense.fp,
            self.x16.data.ptr, self.ld, self.l16.data.ptr, dense.kp, precision="bf16",
        )  # fmt: skip
        return self.l16


class _Mma:
    """The screen in tensor-core tiles (``lks_mma``), then the candidates (``lks_exact``).

    BF16 operands and float32 sums as the BF16 screen's, but the product is never rounded nor
    written: the .cu's header gives the bound (``U_SCREEN["mma"]``). One restart.
    """

    def __init__(self, dense: Any, kern: dict[str, Any], lk: Any, inner: int) -> None:
        self.dense, self.exact = dense, kern["lks_exact"]
        # a tuning variant's list length and stage (-DLKM_CAP=N, -DLKM_KC=N among the compile
        # options) size it too
        cap, kc = _define(lk.options, "LKM_CAP", MMA_CAP), _define(lk.options, "LKM_KC", MMA_KC)
        self.innerp = _round_up(inner, kc)
        self.smem = mma_smem(self.innerp, cap, kc)
        self.kern = allow_dynamic_smem(
            kern["lks_mma<true>" if dense.diag else "lks_mma<false>"], self.smem
        )
        kpf = _round_up(dense.kp, MMA_TILE)
        # rows past kp: a tile's padding components, zero or a former pass's (never candidates:
        # lks_mma screens components below rk only)
        self.w16 = lk.scratch.get("lkm_w16", (kpf, self.innerp), cupy.uint16, zero=True)
        kern["lks_bf16"](
            (max(1, min(-(-dense.kp // 8), dense.blocks)),),
            (256,),
            (
                dense.w_mat, np.int64(dense.kp), np.int32(inner), np.int32(dense.fp), self.w16,
                np.int32(self.innerp),
            ),
        )  # fmt: skip
        per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
            self.kern.kernel.ptr, 256, self.smem
        )
        self.grid = max(1, min(int(per_sm), SELECT_BLOCKS_PER_SM)) * lk.config.n_sm
        self.exact_grid = SELECT_BLOCKS_PER_SM * lk.config.n_sm
        self.launch_rows = min(MMA_ROWS_PER_LAUNCH, dense.data.n_samples)
        self.cand = lk.scratch.get("lkm_cand", (self.launch_rows, 32), cupy.uint16)
        self.gather = kern["lks_gather"]

    def chunk(
        self, chunk: Any, weights: Any, model: tuple[Any, ...], u: Any, t: Any,
        out: tuple[Any, ...],
    ) -> int:  # fmt: skip
        """Screen and select the rows of a data chunk, ``launch_rows`` at a time.

        Then the rows whose lists overflowed are screened again from their ``lo``, gathered
        ``rows_max`` at a time (the dense pass's chunk: within the scratch budget). Returns how
        many those were (finding them synchronises with the host).
        """
        n, step = chunk.shape[0], self.launch_rows
        ncand = cupy.empty(n, dtype=cupy.int32)
        lo = cupy.empty(n, dtype=cupy.float32)
        for start in range(0, n, step):
            x = chunk[start : start + step]
            m = x.shape[0]
            part = ncand[start : start + m]
            self._screen(x, (model, u, t), np.intp(0), lo[start : start + m], part)
            w = np.intp(0) if weights is None else weights[start : start + m]
            self._exact(x, part, w, model, start, np.intp(0), out)
        again = cupy.flatnonzero(ncand == -2).astype(cupy.int32)
        rows = _gathered(self.dense, self.gather, chunk, weights, again, self.launch_rows)
        for idx, xg, wg in rows:  # (at most launch_rows: cand's rows)
            part = cupy.empty(idx.size, dtype=cupy.int32)
            self._screen(xg, (model, u, t), lo[idx], np.intp(0), part)
            self._exact(xg, part, np.intp(0) if wg is None else wg, model, 0, idx, out)
        return int(again.size)

    def _screen(
        self, x: Any, rule: tuple[Any, ...], seed: Any, lo_out: Any, ncand: Any
    ) -> None:  # fmt: skip
        """``lks_mma`` over the rows ``x``: their candidates into ``cand`` and ``ncand``."""
        (bnd, _, _, _), u, t = rule
        dense, n = self.dense, x.shape[0]
        self.kern(
            (max(1, min(self.grid, -(-n // MMA_ROWS))),),
            (256,),
            (
                x, np.int64(n), np.int32(dense.D), np.int32(self.innerp), self.w16,
                np.int32(0), np.int32(dense.rk), bnd, np.int32(dense.kp), u, t, seed, lo_out,
                self.cand, ncand,
            ),
            shared_mem=self.smem,
        )  # fmt: skip

    def _exact(
        self, x: Any, ncand: Any, weights: Any, model: tuple[Any, ...], row0: int,
        rows_index: Any, out: tuple[Any, ...],
    ) -> None:  # fmt: skip
        """``lks_exact`` over the rows ``x``: their pairs into ``out``.

        ``x`` is rows ``row0`` on of the chunk, or the rows at ``rows_index`` (gathered).
        """
        dense, n = self.dense, x.shape[0]
        _, means, prec_chol, e0 = model
        self.exact(
            (self.exact_grid,),
            (256,),
            (
                x, np.int64(n), np.int32(dense.D), np.bool_(dense.diag), self.cand, ncand,
                np.int32(0), means, prec_chol, e0, weights, np.int64(row0), *out, rows_index,
            ),
        )  # fmt: skip


def _define(options: tuple[str, ...], name: str, default: int) -> int:
    """The value a ``-DNAME=N`` among compile ``options`` gives (the last), else ``default``."""
    values = [int(o.split("=", 1)[1]) for o in options if o.startswith(f"-D{name}=")]
    return values[-1] if values else default


def mma_smem(innerp: int, cap: int = MMA_CAP, kc: int = MMA_KC) -> int:
    """Dynamic shared memory (bytes) of ``lks_mma`` at an inner dimension of ``innerp``.

    Its ``lkm::layout``: weight stages, the rows' features, per-row values, lists and seeds.
    """
    words = (
        2 * MMA_TILE * (kc // 2 + 4) + MMA_ROWS * (innerp // 2 + 4) + 8 * MMA_ROWS
        + MMA_ROWS * cap
    )  # fmt: skip
    return 4 * words


def _view(buffer: Any, shape: tuple[int, int]) -> Any:
    """``shape`` uint16 values in the memory of the float32 ``buffer`` (at most half of it)."""
    assert 2 * shape[0] * shape[1] <= buffer.nbytes
    return cupy.ndarray(shape, dtype=cupy.uint16, memptr=buffer.data)


def _reduce(
    dense: Any, kern: dict[str, Any], rows_s: Any, r_s: Any, offsets: np.ndarray,
    counts: np.ndarray, chunk: Any,
) -> None:  # fmt: skip
    """Step 3's sums: runs of ``ITEM_PAIRS`` pairs per block, then each component's in order."""
    rk, D, f = dense.rk, dense.D, dense.f
    per = -(-counts // ITEM_PAIRS)
    item_offsets = np.zeros(rk + 1, dtype=np.int64)
    np.cumsum(per, out=item_offsets[1:])
    n_items = int(item_offsets[-1])
    comp = np.repeat(np.arange(rk), per)
    start = offsets[comp] + ITEM_PAIRS * (np.arange(n_items) - item_offsets[comp])
    end = np.minimum(start + ITEM_PAIRS, offsets[comp + 1])  # never into the next component
    part = cupy.empty((n_items, f + 1), dtype=cupy.float64)
    kern["lks_reduce"](
        (n_items,),
        (-(-D // 32) * 32,),
        (
            rows_s, r_s, cupy.asarray(start), cupy.asarray(end), chunk, np.int32(D),
            np.bool_(dense.diag), np.int32(f), part,
        ),
    )  # fmt: skip
    kern["lks_combine"](
        (max(1, min(-(-rk * (f + 1) // 256), dense.blocks)),),
        (256,),
        (part, cupy.asarray(item_offsets), np.int32(rk), np.int32(f), dense.sf, dense.nk),
    )


def _dense_rows(dense: Any, gather: Any, chunk: Any, weights: Any, listed: Any) -> None:
    """The listed rows (in row order) through the dense pass, ``rows_max`` at a time."""
    for _, xg, wg in _gathered(dense, gather, chunk, weights, cupy.sort(listed)):
        dense.add(xg, wg)


def _gathered(
    dense: Any, gather: Any, chunk: Any, weights: Any, rows: Any, batch: int | None = None
) -> Iterator[tuple[Any, Any, Any]]:  # fmt: skip
    """The chunk's ``rows`` (int32 indices) and their weights, packed by ``lks_gather``.

    Weights are None without them; ``batch`` rows at a time (at most the dense pass's
    chunk, ``rows_max``: within the scratch budget); yields (indices, rows, weights).
    """
    D = dense.D
    step = dense.rows_max if batch is None else min(batch, dense.rows_max)
    for start in range(0, rows.shape[0], step):
        idx = rows[start : start + step]
        m = idx.shape[0]
        xg = cupy.empty((m, D), dtype=cupy.float32)
        wg = None if weights is None else cupy.empty(m, dtype=cupy.float32)
        gather(
            (max(1, min(-(-m // 8), dense.blocks)),),
            (256,),
            (
                chunk, np.int32(D), np.intp(0) if weights is None else weights, idx,
                np.int64(m), xg, np.intp(0) if wg is None else wg,
            ),
        )  # fmt: skip
        yield idx, xg, wg
