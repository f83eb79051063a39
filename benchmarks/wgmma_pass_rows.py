"""A second experimental diag EM pass on Hopper's ``wgmma``: samples along M (research).

``benchmarks/wgmma_pass.py`` put components along M, so a restart's 32 components were two
warps' rows and every softmax exchanged maxima and sums between warps (2.9 of its 7.47 ms at
8 restarts). Here the tile's 64 samples are the rows, so a restart's 32 components of one sample
are 8 values in each of 4 lanes of one quad: its softmax is 2 shuffles, no shared memory. Two
warp groups per CTA, one per 4 restarts (128 components); no producer, no staging of the E-step
operand:

  E-step   logits (64 samples x 128 components) = [x | x^2] W: A from registers, each thread
           loading its two rows' 4 features as one float4 straight from global memory (a
           permuted feature order makes the m64nNk8 A fragment of features 4q .. 4q + 3 one
           float4), B = W from shared memory (built once on the host, 3xTF32 hi and lo);
           3 x 4 wgmma m64n128k8 RS
  softmax  per sample and restart, in registers (quad shuffles); responsibilities rounded to
           TF32 (round to nearest), written transposed to shared memory (the B operand of the
           statistics), conflict-free through a permuted component order and padded slabs
  M-step   statistics^T (64 feature rows: x hi, x^2 hi, x lo, x^2 lo, by 128 components)
           += X^T R: A = the tile's features staged from the E-step fragments (the same
           permutations), B = R^T; 8 wgmma m64n128k8 SS, 2 products (R is one TF32 operand)
  schedule the warp groups take turns issuing their wgmmas (two named barriers, FlashAttention
           3's "ping-pong"): one's softmax runs while the other's products do

float32 statistics accumulate FLUSH tiles in the wgmma accumulator (scale-d 0 starts a period),
then into float32 in shared memory (LONG 1; LONG 0: the accumulator holds the whole pass); N_k
in float32 registers; the CTA adds its sums to its row of the production pass's block-partial
layout ([R K (1 + 2D)] statistics, [R] log-likelihoods) in float64.

Scope: D = 16, K <= 32, R <= 8 (one CTA row of 8 restarts; absent restarts/components padded).
Not here (the production pass has them): the exact E-step of components far from the data mean
(GMM_TC_GUARD), sample weights, the M-step in the last block, inactive restarts, and the E-step's
order: the production pass puts the constant in the accumulator first (a wgmma against columns
of ones), then x, then x^2, which its accuracy needs (``gmm_core/cuda/em_diag_wg.cu``); this
form adds the constant after the products and, measured in a fit, sits 4e-5 nats low.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.wgmma import REPO, BlockPartialPass, build_module, preamble, wgmma_function

TS = 64  # samples per tile (the wgmma M)
D_ONLY = 16
NWG = 2  # warp groups per CTA, 4 restarts each
WORDS = {"W": 4 * 2 * 256 * 8, "R": NWG * 8 * (128 * 8 + 16), "X": NWG * 8 * (64 * 8 + 16)}

KERNEL = r"""
#define XF (2 * D)            // features [x | x^2]
#define KT (XF / 8)           // E-step k-steps (2 of x, 2 of x^2)
#define NW 128                // components per warp group (4 restarts x 32)
#define SK (TS / 8)           // statistics k-steps
#define W_SLAB (256 * 8)      // words of one W slab (256 components x 8 k)
#define R_SLAB (NW * 8 + 16)  // words of one R^T slab (128 components x 8 samples), padded
#define X_SLAB (64 * 8 + 16)  // words of one X^T slab (64 feature rows x 8 samples), padded
#define T_BAR 1               // turn barriers 1, 2; warp-group barriers 3, 4

using tc::ex2;
using tc::lg2;
using tc::round_tf32;
using tc::split;

__device__ __forceinline__ void bar_sync(int id, int count) {
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void bar_arrive(int id, int count) {
    asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(count) : "memory");
}

// X (n, D) float32 centred. Wimg: the E-step B operand as shared memory holds it ([KT][hi, lo]
// slabs of 256 components x 8 k, see weights_image); cimg (256): log2-unit constants (absent
// components -inf). partial (gridDim.x, pstride) float64 zeros; rows for restarts < R and
// components < K are added to.
extern "C" __global__ void __launch_bounds__(256, 1)
wg_rows(const float* __restrict__ X, long long n, int R, int K, const float* __restrict__ Wimg,
        const float* __restrict__ cimg, double* __restrict__ partial, int pstride) {
    extern __shared__ __align__(128) float smem[];
    float* sW = smem;
    float* sR = sW + KT * 2 * W_SLAB;
    float* sX = sR + 2 * SK * R_SLAB;
    float* sC = sX + 2 * SK * X_SLAB;
    float* sL = sC + 256;  // LONG: [wg][64 registers][128 threads]
    const int t = threadIdx.x, wg = t >> 7, tw = t & 127, w = tw >> 5, lane = t & 31;
    const int g = lane >> 2, q = lane & 3;
    for (int i = t; i < KT * 2 * W_SLAB / 4; i += 256)
        reinterpret_cast<float4*>(sW)[i] = __ldg(reinterpret_cast<const float4*>(Wimg) + i);
    for (int i = t; i < 256; i += 256) sC[i] = cimg[i];
#if LONG
    for (int i = t; i < 2 * 64 * 128; i += 256) sL[i] = 0.0f;
#endif
    fence_proxy_async();
    __syncthreads();
    float* myR = sR + wg * SK * R_SLAB;
    float* myX = sX + wg * SK * X_SLAB;
    const float* myC = sC + wg * NW;

    const long long n_tiles = (n + TS - 1) / TS;
    const long long n_my =
        (long long)blockIdx.x < n_tiles ? (n_tiles - 1 - blockIdx.x) / gridDim.x + 1 : 0;

    float4 pre[2];
    auto fetch = [&](long long k) {  // rows 16 w + g + 8 h of my k-th tile, features 4q..4q+3
        const long long tile = blockIdx.x + k * gridDim.x;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const long long row = tile * TS + 16 * w + g + 8 * h;
            pre[h] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (k < n_my && row < n)
                pre[h] = __ldg(reinterpret_cast<const float4*>(X + row * D) + q);
        }
    };
    // E-step A fragments, k-step ks: (row g, k q) <- feature 4q + 2 (ks & 1) of x (ks < 2) or
    // x^2, (g, q + 4) <- the next feature; [1], [3]: row g + 8
    unsigned ah[KT][4], al[KT][4];
    auto build = [&]() {
        const float v[2][4] = {{pre[0].x, pre[0].y, pre[0].z, pre[0].w},
                               {pre[1].x, pre[1].y, pre[1].z, pre[1].w}};
#pragma unroll
        for (int ks = 0; ks < KT; ++ks)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float x = v[i & 1][2 * (ks & 1) + (i >> 1)];
                split(ks >= 2 ? x * x : x, ah[ks][i], al[ks][i]);
            }
    };
    // X^T (statistics A): feature row m = 16 type + 8 (c >> 1) + 4 (c & 1) + q for feature
    // 4q + c (types x hi, x^2 hi, x lo, x^2 lo); sample 16 w + g + 8 h at k-slab 2 w + g / 4,
    // k 4 h + g % 4 (the R^T order)
    auto stage_x = [&]() {
        float* base = myX + (2 * w + (g >> 2)) * X_SLAB + (g & 3);
#pragma unroll
        for (int c = 0; c < 4; ++c)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int i = h + 2 * (c & 1), ks = c >> 1;
                const unsigned v[4] = {ah[ks][i], ah[ks + 2][i], al[ks][i], al[ks + 2][i]};
#pragma unroll
                for (int type = 0; type < 4; ++type)
                    base[(2 * type + (c >> 1)) * 64 + h * 32 + (4 * (c & 1) + q) * 4] =
                        __uint_as_float(v[type]);
            }
    };

    float S[64], T[64];  // E-step logits; statistics^T (wgmma accumulators)
    float nk[32];
    double ll[4];
#if SR
    unsigned lcg = 2654435761u * (blockIdx.x * 256u + t + 1u);
#endif
#pragma unroll
    for (int i = 0; i < 32; ++i) nk[i] = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) ll[j] = 0.0;

    auto e_step = [&]() {
        const float* wb = sW + wg * (NW / 8) * 64;
#pragma unroll
        for (int ks = 0; ks < KT; ++ks) {
            const unsigned long long dh = make_desc(wb + (2 * ks) * W_SLAB, DESC_LBO, DESC_SBO);
            const unsigned long long dl =
                make_desc(wb + (2 * ks + 1) * W_SLAB, DESC_LBO, DESC_SBO);
            wgmma_rs_n128(S, al[ks], dh, ks > 0);
            wgmma_rs_n128(S, ah[ks], dl, 1);
            wgmma_rs_n128(S, ah[ks], dh, 1);
        }
    };
    auto stats = [&](int fresh) {
#pragma unroll
        for (int j = 0; j < SK; ++j) {
            const unsigned long long da = make_desc(myX + j * X_SLAB, DESC_LBO, DESC_SBO);
            const unsigned long long db = make_desc(myR + j * R_SLAB, DESC_LBO, DESC_SBO);
            wgmma_ss_n128(T, da, db, !(fresh && j == 0));
        }
    };
    // softmax of tile k's logits (S, waited for) -> R^T (rounded to TF32), nk, ll.
    // S[i]: sample row 16 w + g + 8 ((i >> 1) & 1), component 8 (i >> 2) + 2 q + (i & 1); R^T
    // component position 8 (i >> 2) + q + 4 (i & 1) (bank-conflict-free stores)
    auto softmax = [&](long long k) {
        const long long tile = blockIdx.x + k * gridDim.x;
        float* base = myR + (2 * w + (g >> 2)) * R_SLAB + (g & 3);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            float2 cc[4];  // constants of this thread's 8 components of restart j
#pragma unroll
            for (int cb = 0; cb < 4; ++cb)
                cc[cb] = *reinterpret_cast<const float2*>(myC + 8 * (4 * j + cb) + 2 * q);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float v[8];
#pragma unroll
                for (int cb = 0; cb < 4; ++cb) {
                    v[2 * cb] = S[16 * j + 4 * cb + 2 * h] + cc[cb].x;
                    v[2 * cb + 1] = S[16 * j + 4 * cb + 2 * h + 1] + cc[cb].y;
                }
                float m = v[0];
#pragma unroll
                for (int e = 1; e < 8; ++e) m = fmaxf(m, v[e]);
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
                float s = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    v[e] = ex2(v[e] - m);
                    s += v[e];
                }
                s += __shfl_xor_sync(0xffffffffu, s, 1);
                s += __shfl_xor_sync(0xffffffffu, s, 2);
                const bool valid = tile * TS + 16 * w + g + 8 * h < n;
                const float inv = valid ? __fdividef(1.0f, s) : 0.0f;
                if (valid && q == 0) ll[j] += (double)(m + lg2(s));
#pragma unroll
                for (int cb = 0; cb < 4; ++cb)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
#if SR
                        // stochastic rounding to TF32: 13 random bits added below the kept
                        // mantissa (an LCG per thread; its top bits), so no r rounds one way
                        lcg = lcg * 1664525u + 1013904223u;
                        const float r = __uint_as_float(
                            (__float_as_uint(v[2 * cb + e] * inv) + (lcg >> 19)) & 0xffffe000u);
#else
                        const float r = round_tf32(v[2 * cb + e] * inv);
#endif
                        nk[2 * (4 * j + cb) + e] += r;
                        base[(4 * j + cb) * 64 + h * 32 + (q + 4 * e) * 4] = r;
                    }
            }
        }
    };

    // the warp groups take turns issuing (turn barrier T_BAR + wg: this group's 128 threads
    // wait, the other group's arrive); warp group 1 lets warp group 0 go first
    const int my_turn = T_BAR + wg, their_turn = T_BAR + (wg ^ 1);
    if (TURN && wg == 1) bar_arrive(T_BAR, 256);
    fetch(0);
    build();
    fetch(1);
    if (TURN) bar_sync(my_turn, 256);
    fence_acc(S);
    wg_fence();
    e_step();
    wg_commit();
    if (TURN) bar_arrive(their_turn, 256);
    int fresh = 1, since = 0;
    for (long long k = 0; k < n_my; ++k) {
        wg_wait<0>();  // E-step k and statistics k - 1
        fence_acc(S);
        fence_acc(T);
#if LONG
        if (since == FLUSH) {
            float* mine = sL + wg * 64 * 128 + tw;
#pragma unroll
            for (int i = 0; i < 64; ++i) mine[i * 128] += T[i];
            fresh = 1;
            since = 0;
        }
#endif
        stage_x();
        softmax(k);
        fence_proxy_async();
        bar_sync(3 + wg, 128);  // this group's X^T and R^T written
        build();                // tile k + 1 (zeros past the end: its E-step is discarded)
        fetch(k + 2);
        if (TURN) bar_sync(my_turn, 256);
        fence_acc(S);
        fence_acc(T);
        wg_fence();
        stats(fresh);
        e_step();
        wg_commit();
        if (TURN && !(wg == 1 && k == n_my - 1)) bar_arrive(their_turn, 256);
        fresh = 0;
        ++since;
    }
    wg_wait<0>();
    fence_acc(S);
    fence_acc(T);

    // float64 sums into this CTA's partial row
    constexpr int C = 1 + XF;
    double* out = partial + (size_t)blockIdx.x * pstride;
#if LONG
    const float* mine = sL + wg * 64 * 128 + tw;
#endif
#pragma unroll
    for (int i = 0; i < 64; ++i) {
        const int m = 16 * w + g + 8 * ((i >> 1) & 1), pos = 8 * (i >> 2) + 2 * q + (i & 1);
        const int comp = wg * NW + 8 * (pos >> 3) + 2 * (pos & 3) + ((pos >> 2) & 1);
        const int type = m >> 4, f = 4 * (m & 3) + 2 * ((m >> 3) & 1) + ((m >> 2) & 1);
        const int r = comp >> 5, kk = comp & 31;
        double v = (double)T[i];
#if LONG
        v += (double)mine[i * 128];
#endif
        if (r < R && kk < K) atomicAdd(out + (size_t)(r * K + kk) * C + 1 + (type & 1) * D + f, v);
    }
#pragma unroll
    for (int i = 0; i < 32; ++i) {  // nk[2 cb + e]: component 8 cb + 2 q + e of this group
        double v = (double)nk[i];
        v += __shfl_xor_sync(0xffffffffu, v, 4);
        v += __shfl_xor_sync(0xffffffffu, v, 8);
        v += __shfl_xor_sync(0xffffffffu, v, 16);
        const int comp = wg * NW + 8 * (i >> 1) + 2 * q + (i & 1), r = comp >> 5, kk = comp & 31;
        if (g == 0 && r < R && kk < K) atomicAdd(out + (size_t)(r * K + kk) * C, v);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        double v = ll[j] * 0.6931471805599453;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
        const int r = wg * 4 + j;
        if (lane == 0 && r < R) atomicAdd(out + (size_t)R * K * C + r, v);
    }
}
"""


def source(flush: int = 16, long: int = 1, turn: int = 1, sr: int = 0) -> str:
    """The pass's CUDA source (D = 16); turn 0: the warp groups issue without taking turns;
    sr 1: responsibilities rounded to TF32 stochastically (else to nearest)."""
    defines = (
        f"#define D {D_ONLY}\n#define TS {TS}\n#define FLUSH {flush}\n#define LONG {long}\n"
        f"#define TURN {turn}\n#define SR {sr}\n"
    )
    tc_cuh = (REPO / "gmm_core" / "cuda" / "tc.cuh").read_text()  # split, ex2, lg2, round_tf32
    tc_cuh = tc_cuh.replace("#pragma once\n", "")  # inlined: NVRTC warns in a main file
    wrappers = wgmma_function("rs", 128) + wgmma_function("ss", 128)
    return defines + preamble() + tc_cuh + wrappers + KERNEL


def smem_bytes(long: int = 1) -> int:
    return 4 * (WORDS["W"] + WORDS["R"] + WORDS["X"] + 256 + (NWG * 64 * 128 if long else 0))


def tile_word(r: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Word offset of element (row r, k) of a rows x 8 K-major tile (wgmma.py's tile_offset)."""
    return (r >> 3) * 64 + (k >> 2) * 32 + (r & 7) * 4 + (k & 3)


def weights_image(means: np.ndarray, var: np.ndarray, w: np.ndarray) -> tuple[Any, Any]:
    """(W image (KT, 2, 256 x 8) float32, c (256,) float32) of up to 8 restarts of K <= 32.

    Slab (ks, hl) holds, for component position n (restart n // 32) and k, the hi (hl 0) or lo
    part of the log2-unit weight of feature 4 (k % 4) + 2 (ks % 2) + k // 4 of x (ks < 2) or
    x^2 (ks >= 2), in the layout of ``tile_word``; absent components: weight 0, constant -inf;
    absent restarts: 0 and 0.
    """
    from benchmarks.wgmma_pass import weights

    r, k, d = means.shape
    assert d == D_ONLY and k <= 32 and r <= 8
    Wf, c = weights(means, var, w, 4)  # (8, 32, 2D), (8, 32): restarts padded to 8
    Wf = Wf.reshape(256, 2 * d).astype(np.float64)
    hi = _round_tf32(Wf.astype(np.float32))
    lo = (Wf.astype(np.float32) - hi).astype(np.float32)
    kt = 2 * d // 8
    img = np.zeros((kt, 2, 256 * 8), np.float32)
    n_idx, k_idx = np.meshgrid(np.arange(256), np.arange(8), indexing="ij")
    words = tile_word(n_idx, k_idx)
    for ks in range(kt):
        f = 4 * (k_idx & 3) + 2 * (ks & 1) + (k_idx >> 2)
        col = f + (d if ks >= 2 else 0)
        for hl, part in enumerate((hi, lo)):
            img[ks, hl, words] = part[n_idx, col]
    return img, c.reshape(256).astype(np.float32)


def _round_tf32(a: np.ndarray) -> np.ndarray:
    """float32 rounded to the nearest TF32 as tc.cuh's round_tf32 does."""
    bits = a.astype(np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


class RowsPass(BlockPartialPass):
    """One compiled variant; ``launch``/``stats`` as ``wgmma_pass.WgPass``'s."""

    def __init__(self, flush: int = 16, long: int = 1, turn: int = 1, sr: int = 0) -> None:
        import cupy as cp

        self.module, self.backend = build_module("nvrtc", source(flush, long, turn, sr))
        self.kernel = self.module.get_function("wg_rows")
        self.smem = smem_bytes(long)
        self.kernel.max_dynamic_shared_size_bytes = self.smem
        self.n_sm = cp.cuda.Device().attributes["MultiProcessorCount"]
        self.registers = int(self.kernel.num_regs)
        self.spill = int(self.kernel.local_size_bytes)

    def launch(self, Xc: Any, params: tuple) -> tuple[Any, Any]:
        import cupy as cp

        w, means, var = params
        r, k, d = means.shape
        img, c = weights_image(means, var, w)
        W, cd = cp.asarray(img), cp.asarray(c)
        C = 1 + 2 * d
        pstride = r * k * C + r
        n_tiles = -(-Xc.shape[0] // TS)
        blocks = max(1, min(self.n_sm, n_tiles))
        partial = cp.zeros((blocks, pstride), cp.float64)
        args = (
            Xc,
            np.int64(Xc.shape[0]),
            np.int32(r),
            np.int32(k),
            W,
            cd,
            partial,
            np.int32(pstride),
        )

        def run() -> None:
            partial.fill(0)
            self.kernel((blocks,), (256,), args, shared_mem=self.smem)

        return run, partial
