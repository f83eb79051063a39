// The fused diag pass on Hopper's warp-group MMA (wgmma; sm_90a only): 5 to 8 restarts of
// float32 diag data with 16 features and up to 32 components per CTA row, samples along M.
// Same block-partial layout as diag_pass / diag_pass_tc ([R K (1 + 2D)] statistics, [R]
// log-likelihoods, float64 per block), summed by reduce_partials; the M-step is diag_mstep.
// Research and measurements: benchmarks/wgmma_pass_rows.py, docs/benchmarks.md.
//
// Two warp groups per CTA, each 4 restarts (128 components); each 64-sample tile:
//   E-step   logits (64 samples x 128 components) = c + [x | x^2] W (3xTF32): A from
//            registers, each thread loading its two rows' features 4q..4q+3 as one float4 from
//            global memory (a permuted feature order makes that the m64nNk8 A fragment); B = W
//            from shared memory, written once per pass by diag_wg_params from the kernel
//            parameters (s, p = -mu s): W = [-2 s p, -s^2], c = log const - |p|^2, log2 units.
//            One wgmma SS puts c (three TF32 parts against columns of ones: exact) in the
//            accumulator, then 12 RS add the x k-steps, then the x^2 ones: diag_pass_tc's order.
//            wgmma's float32 accumulation loses digits in proportion to the partial sums
//            (about |p|^2), one-sidedly as rounding toward zero would: this order's sums run
//            from -|p|^2 through +|p|^2 to the logit, so the losses largely cancel. (Adding c
//            after the products left a fit 4e-5 nats per sample low; c first with x beside x^2,
//            every sum negative, 4e-5 high: docs/benchmarks.md.) Components far from the
//            centred origin (|p|^2 > GMM_TC_GUARD, as diag_pass_tc: the expanded form loses
//            digits there) get their logits recomputed exactly (GUARD).
//   softmax  per sample and restart in registers (a restart's 32 components of a sample are 8
//            values in each lane of one quad); responsibilities rounded to TF32 with a dither
//            (stochastic rounding: rounding to nearest sends every responsibility just below 1
//            up, a bias of 1e-5 of N_k measured; the dither averages out), written transposed
//            to shared memory in a bank-conflict-free permuted order.
//   M-step   statistics^T (64 rows: x hi, x^2 hi, x lo, x^2 lo; 128 components) += X^T R:
//            8 wgmma m64n128k8 SS; N_k from the same rounded responsibilities, in registers.
// The pass is bound by each warp's own instruction latency more than by the tensor cores (ncu,
// H200: about 4,900 cycles per tile against 2,400 issue and 2,700 tensor cycles per
// scheduler), so instructions count: the warp group index comes through a shuffle, which lets
// the compiler keep the 21 descriptors in uniform registers (3.30 -> 2.97 ms per pass of 8
// restarts over 10M rows). Making the groups take turns on the tensor cores (one group's
// products done before the other's start) was 2% faster before that and 5% slower after
// (benchmarks/results/wg_variants_h200.txt).
// float32 sums: FLUSH tiles in the wgmma accumulator (scale-d 0 starts a period), then float32
// in shared memory per statistic (its hi and lo feature rows, held by warps w and w + 2 of a
// group, add into one word in turn), float64 per block at the end; log-likelihoods float32 per
// period, then float64 (atomics into the block's own row, zeroed first). Inactive restarts
// (the loop's mask) are computed but not written: their statistics are zero.
#include "tc.cuh"
#include "wgmma.cuh"

#ifndef GMM_TC_GUARD
#define GMM_TC_GUARD 1024.0f
#endif

namespace gwg {
constexpr int D = 16;               // features
constexpr int XF = 2 * D;           // [x | x^2]
constexpr int KT = XF / 8;          // E-step k-steps (2 of x, 2 of x^2)
constexpr int TS = 64;              // samples per tile (the wgmma M)
constexpr int NW = 128;             // components per warp group (4 restarts x 32)
constexpr int SK = TS / 8;          // statistics k-steps
constexpr int W_SLAB = 256 * 8;     // words of one W slab (256 components x 8 k)
constexpr int R_SLAB = NW * 8 + 16; // words of one R^T slab (padded: conflict-free stores)
constexpr int X_SLAB = 64 * 8 + 16; // words of one X^T slab (padded likewise)
#ifdef GMM_WG_FLUSH
constexpr int FLUSH = GMM_WG_FLUSH;  // (a tuning define)
#else
constexpr int FLUSH = 16;           // tiles summed in the wgmma accumulator
#endif

constexpr int W_SLABS = 2 * KT + 1; // (hi, lo) per k-step, then the constant's slab
// W, R^T and X^T of both warp groups, the float32 sums (2 x 32 x 128), the constant's A (64 x
// 8): 208896 bytes (sm_90 allows 232448)
constexpr int SMEM_WORDS =
    W_SLABS * W_SLAB + 2 * SK * R_SLAB + 2 * SK * X_SLAB + 2 * 32 * 128 + 64 * 8;
static_assert(4 * SMEM_WORDS == 208896, "diag_pass_wg.SMEM_BYTES");
constexpr float L2E = 1.4426950408889634f;

__device__ __forceinline__ void bar_sync(int id, int count) {
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(count) : "memory");
}
}  // namespace gwg

// The E-step operands of one pass from the kernel parameters (s_d, p_d) pairs and log constants
// of a restart group (R <= 8 restarts of K <= 32 components): W (KT x [hi, lo] slabs of 256
// component positions x 8 k, position n = 32 r + k), then the constant's slab (columns 0-2: c
// in three TF32 parts, the rest 0; c in log2 units: absent components -inf, absent restarts
// 0), p2 (256, |p|^2: the GUARD test). One thread per (position, column of [x | x^2]).
extern "C" __global__ void diag_wg_params(const float* __restrict__ kparams,
                                          const float* __restrict__ log_const, int R, int K,
                                          float* __restrict__ W, float* __restrict__ p2) {
    using namespace gwg;
    constexpr int PS = 2 * D;  // gmm::Layout<16, false>::PS
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= 256 * XF) return;
    const int n = idx / XF, col = idx % XF, r = n >> 5, k = n & 31;
    const bool present = r < R && k < K;
    const float* row = kparams + (size_t)(r * K + k) * PS;
    const int f = col % D;
    float v = 0.0f;
    if (present) {
        const float s = row[2 * f], p = row[2 * f + 1];
        v = (col < D ? -2.0f * s * p : -s * s) * L2E;
    }
    const int ks = 2 * (col / D) + ((f >> 1) & 1), kk = (f >> 2) + 4 * (f & 1);
    const float hi = tc::round_tf32(v);
    W[(2 * ks) * W_SLAB + wg::tile_word(n, kk)] = hi;
    W[(2 * ks + 1) * W_SLAB + wg::tile_word(n, kk)] = v - hi;
    if (col < 8) {  // the constant's slab
        float a = 0.0f;
        if (present)
            for (int d = 0; d < D; ++d) a = fmaf(row[2 * d + 1], row[2 * d + 1], a);
        if (col == 0) p2[n] = a;
        const float cn = present ? (log_const[r * K + k] - a) * L2E
                         : r < R ? __int_as_float(0xff800000)
                                 : 0.0f;
        float part = col < 3 && !present ? (col == 0 ? cn : 0.0f) : 0.0f;
        if (present && col < 3) {  // c = c0 + c1 + c2 exactly (3 x 11 significant bits)
            const float c0 = tc::round_tf32(cn), c1 = tc::round_tf32(cn - c0);
            part = col == 0 ? c0 : col == 1 ? c1 : cn - c0 - c1;
        }
        W[2 * KT * W_SLAB + wg::tile_word(n, col)] = part;
    }
}

// X (n, 16) float32 centred; W, p2 from diag_wg_params; kparams rows of the group (GUARD's
// exact logits); active (R) int32 or null; partial (gridDim.x, pstride) float64, each block's
// row zeroed here and written: R K C statistics, R log-likelihoods, then 32 words of the
// warps' log-likelihoods (pstride = R K C + R + 32). Deterministic: no sum depends on the
// order threads run in.
extern "C" __global__ void __launch_bounds__(256, 1)
diag_pass_wg(const float* __restrict__ X, long long n, int R, int K, const float* __restrict__ Wg,
             const float* __restrict__ p2g,
             const float* __restrict__ kparams, const float* __restrict__ log_const,
             const int* __restrict__ active,
             double* __restrict__ partial, int pstride) {
    using namespace gwg;
    // k-means' Lloyd passes (a hard mixture: every component far) take diag_pass_tc's unguarded
    // variant instead (the engine's lloyd_pass); this pass always guards
    constexpr bool GUARD = true;
#if !WGMMA_OK
    __trap();  // a build without sm_90a's features: the wrappers are empty
#endif
    if (active != nullptr) {  // every restart stopped: nothing to do (a CUDA graph's later steps)
        int any = 0;
        for (int r = 0; r < R; ++r) any |= active[r];
        if (!any) return;  // uniform across the grid
    }
    extern __shared__ __align__(128) float smem[];
    float* sW = smem;
    float* sR = sW + W_SLABS * W_SLAB;
    float* sX = sR + 2 * SK * R_SLAB;
    float* sL = sX + 2 * SK * X_SLAB;  // [wg][64 registers][64 threads: warps 0, 1 (+ 2, 3)]
    float* sOnes = sL + 2 * 32 * 128;  // 64 x 8 A tile: 1 in columns 0-2
    // the warp group (and the warp) through a shuffle from lane 0: the compiler then knows
    // them uniform and keeps the wgmma descriptors in uniform registers (CUTLASS's
    // canonical_warp_group_idx)
    const int t = threadIdx.x, lane = t & 31;
    const int wgp = __shfl_sync(0xffffffffu, t >> 7, 0), tw = t & 127;
    const int w = __shfl_sync(0xffffffffu, tw >> 5, 0);
    const int g = lane >> 2, q = lane & 3;
    constexpr int C = 1 + XF;
    for (int i = t; i < pstride; i += 256) partial[(size_t)blockIdx.x * pstride + i] = 0.0;
    for (int i = t; i < W_SLABS * W_SLAB / 4; i += 256)
        reinterpret_cast<float4*>(sW)[i] = __ldg(reinterpret_cast<const float4*>(Wg) + i);
    for (int i = t; i < 2 * 32 * 128; i += 256) sL[i] = 0.0f;
    for (int i = t; i < 64 * 8; i += 256)
        sOnes[wg::tile_word(i >> 3, i & 7)] = (i & 7) < 3 ? 1.0f : 0.0f;
    wg::fence_proxy_async();
    __syncthreads();
    float* myR = sR + wgp * SK * R_SLAB;
    float* myX = sX + wgp * SK * X_SLAB;
    // GUARD: bit 2 cb + e of this thread's components 8 cb + 2 q + e that are far
    unsigned far = 0;
    if (GUARD) {
#pragma unroll
        for (int i = 0; i < 32; ++i) {
            const float a = p2g[wgp * NW + 8 * (i >> 1) + 2 * q + (i & 1)];
            if (!(a <= GMM_TC_GUARD)) far |= 1u << i;  // NaN too
        }
    }
    // whether any component of this warp group is far (the same for every thread of the group:
    // it decides the group's barriers)
    bool group_far = false;
    if (GUARD)
        for (int c = 0; c < NW; ++c) group_far |= !(p2g[wgp * NW + c] <= GMM_TC_GUARD);

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
    // E-step A fragments of k-step ks: (row g, k q) <- feature 4q + 2 (ks & 1) of x (ks < 2) or
    // x^2, (g, q + 4) <- the next one; [1], [3]: row g + 8. (The constant's k-step takes its A,
    // ones in columns 0-2, from shared memory: as registers they made the kernel spill.)
    unsigned ah[KT][4], al[KT][4];
    auto build = [&]() {
        const float v[2][4] = {{pre[0].x, pre[0].y, pre[0].z, pre[0].w},
                               {pre[1].x, pre[1].y, pre[1].z, pre[1].w}};
#pragma unroll
        for (int ks = 0; ks < KT; ++ks)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float x = v[i & 1][2 * (ks & 1) + (i >> 1)];
                tc::split(ks >= 2 ? x * x : x, ah[ks][i], al[ks][i]);
            }
    };
    // X^T (statistics A): feature row m = 16 type + 8 (f >> 1 & 1) + 4 (f & 1) + q of feature
    // 4q + (f & 3) (types x hi, x^2 hi, x lo, x^2 lo); sample 16 w + g + 8 h at k-slab
    // 2 w + g / 4, k 4 h + g % 4 (the order of R^T). (Both samples' words adjacent, stored as
    // float2 here and in the softmax, measured 8% slower on an H200.)
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

    // E-step logits; statistics^T (wgmma accumulators: no ordinary instruction may define
    // them, or ptxas serialises the wgmmas, C7515; T is first written by a scale-d 0 wgmma)
    float S[64], T[64];
    float nk[32];
    float ll[4];  // log-likelihoods of a flush period (float32), then float64 in the partial
#pragma unroll
    for (int i = 0; i < 32; ++i) nk[i] = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) ll[j] = 0.0f;

    // descriptors: one per operand, the slabs' as offsets from it (wg::desc_at)
    auto e_step = [&]() {
        const unsigned long long dw = wg::desc(sW + wgp * (NW / 8) * 64);
        wg::mma_ss(S, wg::desc(sOnes), wg::desc_at(dw, 2 * KT * W_SLAB), 0);
#pragma unroll
        for (int ks = 0; ks < KT; ++ks) {
            const unsigned long long dh = wg::desc_at(dw, (2 * ks) * W_SLAB);
            const unsigned long long dl = wg::desc_at(dw, (2 * ks + 1) * W_SLAB);
            wg::mma_rs(S, al[ks], dh, 1);
            wg::mma_rs(S, ah[ks], dl, 1);
            wg::mma_rs(S, ah[ks], dh, 1);
        }
    };
    auto stats = [&](int fresh) {
        const unsigned long long dx = wg::desc(myX), dr = wg::desc(myR);
#pragma unroll
        for (int j = 0; j < SK; ++j)
            wg::mma_ss(T, wg::desc_at(dx, j * X_SLAB), wg::desc_at(dr, j * R_SLAB),
                       !(fresh && j == 0));
    };
    // GUARD: exact logits of this thread's far components for its two samples of tile k,
    // written over S (log2 units). x from
    // this group's X^T (hi + lo: the float32 value), (s, p) and log const from global memory
    // (L1). The values pass through this thread's own words of the R^T buffer, so that the
    // hot loop holds no register for them; the group's barrier keeps R^T writes after reads.
    auto patch_far = [&](long long k) {
        const long long tile = blockIdx.x + k * gridDim.x;
        float* scratch = myR + tw;
        const float* xs = myX + (2 * w + (g >> 2)) * X_SLAB;
        unsigned bits = far;
        while (bits) {
            const int b = __ffs(bits) - 1;
            bits &= bits - 1;
            const int comp = wgp * NW + 8 * (b >> 1) + 2 * q + (b & 1);
            const int r = comp >> 5, kc = comp & 31;
            if (r >= R || kc >= K) continue;  // absent components are never far (p2 = 0)
            const float2* prm = reinterpret_cast<const float2*>(kparams + (size_t)(r * K + kc) * XF);
            const float lc = log_const[r * K + kc];
            for (int h = 0; h < 2; ++h) {
                float a = 0.0f;
#pragma unroll 4
                for (int f = 0; f < D; ++f) {
                    const int m = 8 * ((f >> 1) & 1) + 4 * (f & 1) + (f >> 2);
                    const int word = wg::tile_word(m, 4 * h + (g & 3));
                    const float x = xs[word] + xs[word + wg::tile_word(32, 0)];  // hi + lo rows
                    const float2 sp = __ldg(prm + f);
                    const float y = fmaf(x, sp.x, sp.y);
                    a = fmaf(y, y, a);
                }
                const long long row = tile * TS + 16 * w + g + 8 * h;
                scratch[(2 * b + h) * 128] = row < n ? (lc - a) * L2E : 0.0f;
            }
        }
#pragma unroll
        for (int i = 0; i < 64; ++i) {
            const int bit = 2 * (i >> 2) + (i & 1);
            if ((far >> bit) & 1u) S[i] = scratch[(2 * bit + ((i >> 1) & 1)) * 128];
        }
        bar_sync(1 + wgp, 128);  // every thread of the group read its words before R^T writes
    };
    // softmax of tile k's logits -> R^T (TF32, dithered), nk, ll. R^T position of component
    // 8 cb + 2 q + e: 8 cb + q + 4 e (conflict-free stores)
    auto softmax = [&](long long k) {
        const long long tile = blockIdx.x + k * gridDim.x;
        float* base = myR + (2 * w + (g >> 2)) * R_SLAB + (g & 3);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float v[8];
#pragma unroll
                for (int cb = 0; cb < 4; ++cb) {
                    v[2 * cb] = S[16 * j + 4 * cb + 2 * h];
                    v[2 * cb + 1] = S[16 * j + 4 * cb + 2 * h + 1];
                }
                float m = v[0];
#pragma unroll
                for (int e = 1; e < 8; ++e) m = fmaxf(m, v[e]);
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
                float s = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    v[e] = tc::ex2(v[e] - m);
                    s += v[e];
                }
                s += __shfl_xor_sync(0xffffffffu, s, 1);
                s += __shfl_xor_sync(0xffffffffu, s, 2);
                const bool valid = tile * TS + 16 * w + g + 8 * h < n;
                const float inv = valid ? __fdividef(1.0f, s) : 0.0f;
                if (valid && q == 0) ll[j] += m + tc::lg2(s);
#pragma unroll
                for (int cb = 0; cb < 4; ++cb)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        // stochastic rounding to TF32: 13 bits of a multiplicative hash of
                        // the value added below the kept mantissa, then truncated
                        const unsigned u = __float_as_uint(v[2 * cb + e] * inv);
                        const float r = __uint_as_float((u + ((u * 0x9E3779B1u) >> 19)) & 0xffffe000u);
                        nk[2 * (4 * j + cb) + e] += r;
                        base[(4 * j + cb) * 64 + h * 32 + (q + 4 * e) * 4] = r;
                    }
            }
        }
    };

    // the warp's log-likelihoods (natural log) added to its own float64 words past the block
    // row's statistics (R K C + R + 4 (4 wgp + w) + j, one writer each: deterministic)
    auto flush_ll = [&]() {
        double* mine = partial + (size_t)blockIdx.x * pstride + (size_t)R * K * C + R;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const double v = gmm::warp_sum((double)ll[j] * 0.6931471805599453);
            if (lane == 0) mine[4 * (4 * wgp + w) + j] += v;
            ll[j] = 0.0f;
        }
    };

    // prologue: tile 0's fragments, its E-step in flight
    fetch(0);
    build();
    fetch(1);
    wg::fence_acc(S);
    wg::fence();
    e_step();
    wg::commit();
    // this thread's float32 sums: warps 0, 1 hold the statistics' hi rows, warps 2, 3 the same
    // statistics' lo rows (the same word per register)
    float* mine = sL + wgp * 32 * 128 + (tw & 63);
    int fresh = 1, since = 0;
    for (long long k = 0; k < n_my; ++k) {
        wg::wait<0>();  // E-step k and statistics k - 1
        wg::fence_acc(S);
        wg::fence_acc(T);
        const bool flush = since == FLUSH;
        if (flush) {  // the hi rows now, the lo rows after the group's next barrier
            if (w < 2) {
#pragma unroll
                for (int i = 0; i < 64; ++i) mine[i * 64] += T[i];
            }
            flush_ll();
            fresh = 1;
            since = 0;
        }
        stage_x();
        if (group_far) {
            bar_sync(1 + wgp, 128);  // the group's X^T staged
            patch_far(k);
        }
        softmax(k);
        wg::fence_proxy_async();
        bar_sync(1 + wgp, 128);  // this group's X^T and R^T written (and its hi rows' sums)
        if (flush && w >= 2) {
#pragma unroll
            for (int i = 0; i < 64; ++i) mine[i * 64] += T[i];
        }
        build();  // tile k + 1 (zeros past the end: its E-step is discarded)
        fetch(k + 2);
        wg::fence_acc(S);
        wg::fence_acc(T);
        wg::fence();
        stats(fresh);
        e_step();
        wg::commit();
        fresh = 0;
        ++since;
    }
    wg::wait<0>();
    wg::fence_acc(S);
    wg::fence_acc(T);
    flush_ll();
    __syncthreads();  // every warp's wgmma done (R^T free), log-likelihood words written

    // float64 sums into this block's partial row (restarts present and active), in a fixed
    // order: each statistic is the sum of two values (its hi and lo feature rows) added to
    // the zeroed row, N_k and the log-likelihoods are summed over the warps in order
    double* out = partial + (size_t)blockIdx.x * pstride;
#pragma unroll
    for (int i = 0; i < 64; ++i) {
        const int m = 16 * w + g + 8 * ((i >> 1) & 1), pos = 8 * (i >> 2) + 2 * q + (i & 1);
        const int comp = wgp * NW + 8 * (pos >> 3) + 2 * (pos & 3) + ((pos >> 2) & 1);
        const int type = m >> 4, f = 4 * (m & 3) + 2 * ((m >> 3) & 1) + ((m >> 2) & 1);
        const int r = comp >> 5, kc = comp & 31;
        // a block with no tile (a short streamed chunk) never wrote T: it adds zeros
        const double v = (n_my > 0 ? (double)T[i] : 0.0) + (w < 2 ? (double)mine[i * 64] : 0.0);
        if (r < R && kc < K && (active == nullptr || active[r]))
            atomicAdd(out + (size_t)(r * K + kc) * C + 1 + (type & 1) * D + f, v);
    }
    double* s_nk = reinterpret_cast<double*>(sR);  // [wgp][w][128 components]
#pragma unroll
    for (int i = 0; i < 32; ++i) {  // nk[2 cb + e]: component 8 cb + 2 q + e of this group
        double v = (double)nk[i];
        v += __shfl_xor_sync(0xffffffffu, v, 4);
        v += __shfl_xor_sync(0xffffffffu, v, 8);
        v += __shfl_xor_sync(0xffffffffu, v, 16);
        if (g == 0) s_nk[(4 * wgp + w) * NW + 8 * (i >> 1) + 2 * q + (i & 1)] = v;
    }
    __syncthreads();
    {
        const int comp = t, r = comp >> 5, kc = comp & 31, grp = comp / NW;
        if (r < R && kc < K && (active == nullptr || active[r])) {
            double v = 0.0;
            for (int ww = 0; ww < 4; ++ww) v += s_nk[(4 * grp + ww) * NW + comp % NW];
            out[(size_t)(r * K + kc) * C] = v;
        }
        if (t < R) {
            const double* words = out + (size_t)R * K * C + R;
            const int grp_r = t / 4, j = t % 4;
            double v = 0.0;
            for (int ww = 0; ww < 4; ++ww) v += words[4 * (4 * grp_r + ww) + j];
            out[(size_t)R * K * C + t] = (active == nullptr || active[t]) ? v : 0.0;
        }
    }
}
