"""The large-K E-step in three FP16 products: speed and accuracy of ``lkt_lse``'s FP16 form.

    PYTHONPATH=. python3 benchmarks/probe_fp16_lse.py [--out build/fp16_lse.json]

``benchmarks/tc_numerics.py`` found three power-of-two-scaled FP16 products per term as
accurate as 3xTF32 (CPU emulation checked against the device, docs/benchmarks.md) at twice
the tensor rate. This probe is the fused pass's first kernel, ``lkt_lse`` of
``gmm_core/cuda/em_largek_tc.cu``, in that arithmetic, to measure what it gains before the
engine's two kernels are rewritten:

- operands prepared on the host by ``tc_emulate``' own functions (so the device computes what
  the emulation computed): the inner columns [x, x^2] (diag) or x (spherical) scaled by powers
  of two and split into FP16 hi + lo once (the data do not change between iterations: no split
  in the hot loop), the weights scaled per row and per component, split likewise, in
  ``m16n8k16`` B-fragment order ({hi, lo} of k-step s, lane t: one uint4), swizzled in
  shared memory as ``lkt_lse`` does;
- the kernel: ``lkt_lse``'s structure (128 rows in shared memory, 64-component weight stages
  double-buffered by cp.async, 4 x 2 warps, online log-sum-exp), ``mma.sync.m16n8k16`` with the
  small products first, every k-step summed from zero and ``untruncate``d, the sum unscaled by
  the component's power of two before c_k;
- checks: the mean log-likelihood of the first 4,096 rows against float64 and against the
  emulation of this arithmetic (``tc_emulate.log_densities`` with the same scales: the
  log-densities are the same bits if the device follows the ``rz`` model, which a CPU test
  checks by replaying the kernel lane by lane; past them the kernel's ``ex2.approx`` /
  ``lg2.approx`` float32 log-sum-exp differs from the float64 one by ~1e-7 to 1e-6 nats);
  timing: 1M x 128, K = 1024 (``bench_large_k``'s case and start), spherical and diag, median
  of 5 launches (CUDA events), beside the engine's fused ``lkt_lse`` in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import tc_emulate as tce  # noqa: E402
from gmm_core._cuda_loader import CUDA_DIR  # noqa: E402

TN, KC, WQ, BM = 64, 32, 8, 128  # components per tile, features per chunk, uint4 per chunk, rows

SOURCE = r"""
#include "tc.cuh"

namespace p16 {
constexpr int NT = 256, KC = 32, TN = 64, WQ = 8, BM = 128;
constexpr float LOG2E = 1.4426950408889634f;
// uint4 q (= k-step s * 4 + lane t) of component n in a shared stage: two components' fragments
// per 256 bytes without bank conflicts
__device__ __forceinline__ int wswz(int n, int q) { return n * WQ + (q ^ ((n & 1) << 2)); }
using tc::cp16;  // cp.async, ex2/lg2, mma16, untruncate, lse_merge: tc.cuh
using tc::cp_commit;
using tc::cp_wait;
using tc::ex2;
using tc::lg2;
using tc::lse_merge;
using tc::mma16;
using tc::untruncate;
}  // namespace p16

// Xh, Xl: (n, fi / 2) words, each two FP16 halves of the scaled inner columns (lower k low);
// Wt: [tile][chunk][64 components][8 uint4 {hi(2t), hi(2t + 8), lo(2t), lo(2t + 8)}];
// cst (c_k, -inf for padding), hp (-p/2, spherical), inv_s (1 / the component's scale);
// sqn: |x|^2 per row (spherical). Writes lse2 (log2 units) per row.
template <bool DIAG>
__global__ void __launch_bounds__(p16::NT, DIAG ? 1 : 2)  // diag: 152 KB of shared memory
fp16_lse(const unsigned* __restrict__ Xh, const unsigned* __restrict__ Xl, long long n, int fi,
         const uint4* __restrict__ Wt, const float* __restrict__ cst,
         const float* __restrict__ hp, const float* __restrict__ inv_s,
         const float* __restrict__ sqn, int tiles, float* __restrict__ lse2) {
    using namespace p16;
    extern __shared__ uint4 smem[];
    uint4* Wb = smem;
    const int fw = fi / 2, xs = fw + 4;  // words per row, padded: conflict-free A fragments
    unsigned* Xhs = reinterpret_cast<unsigned*>(smem + 2 * TN * WQ);
    unsigned* Xls = Xhs + BM * xs;
    float* srow = reinterpret_cast<float*>(Xls + BM * xs);
    float* mrg = srow + BM;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wr = warp & 3, wc = warp >> 2;
    const int nc = fi / KC;
    const long long row0 = (long long)blockIdx.x * BM;
    const float neg = -3.402823466e38f;

    for (int r = warp; r < BM; r += NT / 32) {
        const long long gr = row0 + r;
        for (int c = lane; c < fw; c += 32) {
            Xhs[r * xs + c] = gr < n ? Xh[gr * fw + c] : 0u;
            Xls[r * xs + c] = gr < n ? Xl[gr * fw + c] : 0u;
        }
    }
    if (!DIAG && threadIdx.x < BM)
        srow[threadIdx.x] = row0 + threadIdx.x < n ? sqn[row0 + threadIdx.x] : 0.0f;

    float m_run[4], s_run[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) m_run[i] = neg, s_run[i] = 0.0f;
    float acc[2][4][4];
    const int nq = tiles * nc;
    for (int i = threadIdx.x; i < TN * WQ; i += NT) cp16(Wb + wswz(i >> 3, i & 7), Wt + i);
    cp_commit();
    for (int q = 0; q < nq; ++q) {
        if (q + 1 < nq) {
            uint4* dst = Wb + ((q + 1) & 1) * TN * WQ;
            const uint4* src = Wt + (long long)(q + 1) * TN * WQ;
            for (int i = threadIdx.x; i < TN * WQ; i += NT)
                cp16(dst + wswz(i >> 3, i & 7), src + i);
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        const int c = q % nc;
        if (c == 0) {
#pragma unroll
            for (int m = 0; m < 2; ++m)
#pragma unroll
                for (int j = 0; j < 4; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[m][j][e] = 0.0f;
        }
        const uint4* Ws = Wb + (q & 1) * TN * WQ;
#pragma unroll
        for (int s = 0; s < KC / 16; ++s) {
            const int kw = c * (KC / 2) + s * 8;  // word of the k-step's first column pair
            unsigned ah[2][4], al[2][4];
#pragma unroll
            for (int m = 0; m < 2; ++m) {
                const int row = wr * 32 + m * 16 + g;
                ah[m][0] = Xhs[row * xs + kw + t];
                ah[m][1] = Xhs[(row + 8) * xs + kw + t];
                ah[m][2] = Xhs[row * xs + kw + t + 4];
                ah[m][3] = Xhs[(row + 8) * xs + kw + t + 4];
                al[m][0] = Xls[row * xs + kw + t];
                al[m][1] = Xls[(row + 8) * xs + kw + t];
                al[m][2] = Xls[row * xs + kw + t + 4];
                al[m][3] = Xls[(row + 8) * xs + kw + t + 4];
            }
            float ch[2][4][4];
#pragma unroll
            for (int m = 0; m < 2; ++m)
#pragma unroll
                for (int j = 0; j < 4; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) ch[m][j][e] = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const uint4 b = Ws[wswz(wc * 32 + j * 8 + g, s * 4 + t)];
#pragma unroll
                for (int m = 0; m < 2; ++m) {  // the small products first
                    mma16(ch[m][j], al[m], b.x, b.y);
                    mma16(ch[m][j], ah[m], b.z, b.w);
                    mma16(ch[m][j], ah[m], b.x, b.y);
                }
            }
#pragma unroll
            for (int m = 0; m < 2; ++m)
#pragma unroll
                for (int j = 0; j < 4; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        acc[m][j][e] = __fadd_rn(acc[m][j][e], untruncate(ch[m][j][e]));
        }
        if (c == nc - 1) {
            const long long kb = (long long)(q / nc) * TN + wc * 32;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int m = i >> 1, h = i & 1;
                const int row = wr * 32 + m * 16 + h * 8 + g;
                float v[8];
                float vmax = neg;
#pragma unroll
                for (int j = 0; j < 4; ++j)
#pragma unroll
                    for (int o = 0; o < 2; ++o) {
                        const long long comp = kb + j * 8 + 2 * t + o;
                        const float a = __fmul_rn(acc[m][j][h * 2 + o], inv_s[comp]);  // exact
                        const float cb =
                            DIAG ? cst[comp] : __fadd_rn(cst[comp], __fmul_rn(hp[comp], srow[row]));
                        v[j * 2 + o] = __fmul_rn(__fadd_rn(a, cb), LOG2E);
                        vmax = fmaxf(vmax, v[j * 2 + o]);
                    }
                const float mn = fmaxf(m_run[i], vmax);
                float sum = s_run[i] * ex2(m_run[i] - mn);
#pragma unroll
                for (int o = 0; o < 8; ++o) sum += ex2(v[o] - mn);
                m_run[i] = mn;
                s_run[i] = sum;
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int off = 1; off <= 2; off <<= 1) {
            const float mo = __shfl_xor_sync(0xffffffffu, m_run[i], off);
            const float so = __shfl_xor_sync(0xffffffffu, s_run[i], off);
            lse_merge(m_run[i], s_run[i], mo, so);
        }
    if (wc == 1 && t == 0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int row = wr * 32 + (i >> 1) * 16 + (i & 1) * 8 + g;
            mrg[row] = m_run[i];
            mrg[BM + row] = s_run[i];
        }
    }
    __syncthreads();
    if (wc == 0 && t == 0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int row = wr * 32 + (i >> 1) * 16 + (i & 1) * 8 + g;
            lse_merge(m_run[i], s_run[i], mrg[row], mrg[BM + row]);
            if (row0 + row < n) lse2[row0 + row] = m_run[i] + lg2(s_run[i]);
        }
    }
}
"""


#: explicit instances for an nvcc build (a CPU test compiles the probe; CuPy uses name_expressions)
NVCC_INSTANCES = "".join(
    f"template __global__ void fp16_lse<{diag}>(const unsigned*, const unsigned*, long long, int, "
    "const uint4*, const float*, const float*, const float*, const float*, int, float*);\n"
    for diag in ("true", "false")
)


def smem_bytes(fi: int) -> int:
    """Dynamic shared memory of ``fp16_lse`` for ``fi`` inner columns."""
    return 2 * TN * WQ * 16 + 2 * BM * (fi // 2 + 4) * 4 + 3 * BM * 4


class Operands:
    """The kernel's inputs, made by ``tc_emulate``' functions from float32 data and a start."""

    def __init__(self, X: np.ndarray, params: Any, cov: str) -> None:
        A, B, cst, hp = tce.operands(X, params, cov)
        if A.shape[1] % KC:  # the kernel reads whole 32-column chunks (lkt pads to them)
            raise ValueError(
                f"{A.shape[1]} inner columns: the probe needs a multiple of {KC} "
                "(features a multiple of 32 spherical, of 16 diag)"
            )
        self.col_max = np.abs(A).max(axis=0)
        col_scale = tce.pow2_scale(self.col_max)
        Bs = B.astype(np.float64) / col_scale[:, None]
        comp_scale = tce.pow2_scale(np.abs(Bs).max(axis=0))
        As = (A.astype(np.float64) * col_scale).astype(np.float32)
        ah, al = tce.split(As, "fp16")
        self.Xh = ah.astype(np.float16).view(np.uint32)  # (n, fi / 2): lower k in the low half
        self.Xl = al.astype(np.float16).view(np.uint32)
        bh, bl = tce.split((Bs * comp_scale).astype(np.float32), "fp16")
        fi, k = B.shape
        tiles = -(-k // TN)
        kp = tiles * TN
        hi = np.zeros((kp, fi), np.float16)
        lo = np.zeros((kp, fi), np.float16)
        hi[:k], lo[:k] = bh.T, bl.T
        # words (two halves) per (tile, component, chunk, k-step s, word of the k-step);
        # lane t's B fragment: words t (columns 2t, 2t + 1) and t + 4 (2t + 8, 2t + 9)
        hw = hi.view(np.uint32).reshape(tiles, TN, fi // KC, KC // 16, 8)
        lw = lo.view(np.uint32).reshape(tiles, TN, fi // KC, KC // 16, 8)
        t = np.arange(4)
        words = np.stack([hw[..., t], hw[..., t + 4], lw[..., t], lw[..., t + 4]], axis=-1)
        # [tile][chunk][comp][q = s * 4 + t] uint4 {hi(2t), hi(2t + 8), lo(2t), lo(2t + 8)}
        self.Wt = np.ascontiguousarray(words.transpose(0, 2, 1, 3, 4, 5))
        self.cst = np.full(kp, -np.inf, np.float32)
        self.cst[:k] = cst
        self.hp = np.zeros(kp, np.float32)
        self.hp[:k] = hp
        self.inv_s = np.ones(kp, np.float32)
        self.inv_s[:k] = (1.0 / comp_scale).astype(np.float32)
        self.sqn = tce.sumsq(X) if cov != "diag" else np.zeros(len(X), np.float32)
        self.fi, self.tiles = fi, tiles


def launch(ops: Operands, cov: str, module: Any, n: int) -> Any:
    """``fp16_lse`` over ``n`` rows on the device; (lse2 as a CuPy array, a timing closure)."""
    import cupy as cp

    kern = module.get_function("fp16_lse<true>" if cov == "diag" else "fp16_lse<false>")
    nbytes = smem_bytes(ops.fi)
    kern.max_dynamic_shared_size_bytes = nbytes
    dev = {
        name: cp.asarray(getattr(ops, name))
        for name in ("Xh", "Xl", "Wt", "cst", "hp", "inv_s", "sqn")
    }
    lse2 = cp.empty(n, cp.float32)
    args = (
        dev["Xh"], dev["Xl"], np.int64(n), np.int32(ops.fi), dev["Wt"], dev["cst"], dev["hp"],
        dev["inv_s"], dev["sqn"], np.int32(ops.tiles), lse2,
    )  # fmt: skip

    def run() -> None:
        kern(((n + BM - 1) // BM,), (256,), args, shared_mem=nbytes)

    return lse2, run


def main() -> None:
    import cupy as cp

    from benchmarks.bench_large_k import make_data, start_of
    from benchmarks.large_k_fused import _kernel_ms, _pass_of
    from benchmarks.wgmma import timed_ms
    from gmm_core._gaussian import Params
    from tests.gpu.test_gpu_large_k import _reference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--check-rows", type=int, default=4096)
    args = parser.parse_args()
    module = cp.RawModule(
        code=SOURCE,
        options=("-std=c++17", f"-I{CUDA_DIR}"),  # tc.cuh
        name_expressions=["fp16_lse<true>", "fp16_lse<false>"],
    )
    Xd = make_data()
    X = cp.asnumpy(Xd)
    n = len(X)
    out: dict[str, Any] = {}
    for cov in ("spherical", "diag"):
        start = start_of(Xd, cov)
        prec = start["precisions_init"]
        params = Params(
            start["weights_init"][None], start["means_init"][None], 1.0 / prec[None],
            np.sqrt(prec)[None],
        )  # fmt: skip
        ops = Operands(X, params, cov)
        lse2, run = launch(ops, cov, module, n)
        fp16_ms = timed_ms(run)  # median of 5 launches after a warm-up, CUDA events
        rows = args.check_rows
        got = cp.asnumpy(lse2[:rows]).astype(np.float64) * tce.LN2
        ref = _reference(X[:rows], cov, params)[0]["loglik"] / rows
        v = tce.log_densities(X[:rows], params, cov, tce.Scheme("3xFP16", fmt="fp16"), ops.col_max)
        emu = tce.mean_loglik(v)
        # the engine's fused lkt_lse on the same data and start, in the same run
        _, _, _, one_pass = _pass_of(Xd, cov)
        engine_ms = _kernel_ms(one_pass)
        row = {
            "fp16_lse_ms": fp16_ms,
            "engine_kernels_ms": engine_ms,
            "mean_ll_minus_f64": float(got.mean() - ref),
            "mean_ll_minus_emulation": float(got.mean() - emu),
            "emulation_minus_f64": emu - ref,
            "check_rows": rows,
            "smem_bytes": smem_bytes(ops.fi),
            # diag holds hi and lo of [x, x^2]: one block (8 warps) per SM, lkt_lse two
            "blocks_per_sm": min(2, 232_448 // smem_bytes(ops.fi)),
        }
        out[cov] = row
        print(cov, json.dumps(row), flush=True)
    if args.out:
        from benchmarks.report import environment

        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"environment": environment(), **out}, indent=1))


if __name__ == "__main__":
    main()
