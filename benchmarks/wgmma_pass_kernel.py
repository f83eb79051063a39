"""The CUDA source of the experimental components-along-M wgmma pass (``wgmma_pass.py``).

The kernel text alone (``KERNEL``), as ``wgmma_pass.source`` completes it with its defines (D,
NWG, TS, FLUSH, PIPE, SKIP, VEC, SOFTMAX1, NBUF), ``benchmarks/wgmma.py``'s preamble and
instruction wrappers, and ``gmm_core/cuda/tc.cuh``. The design and its variants are described
in ``wgmma_pass.py``'s docstring; the host side (operands, launch, statistics) lives there.
"""

KERNEL = r"""
#define XF (2 * D)       // features of the E-step and statistic columns: [x | x^2]
#define KT (XF / 8)      // E-step k-steps
#define SK (TS / 8)      // statistics k-steps
#define NC (128 * NWG)                       // consumer threads (warp groups)
#define NT (NC + (PIPE == 3 ? 32 : 0))      // PIPE 3: + one producer warp
#define NBUFS (PIPE == 3 ? NBUF : PIPE ? 2 : 1)
__device__ __forceinline__ void bar_sync(int id, int count) {
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void bar_arrive(int id, int count) {
    asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(count) : "memory");
}

using tc::ex2;
using tc::lg2;
using tc::split;
// max / sum of a column's value over the 8 lanes (g) that hold its rows
__device__ __forceinline__ float rows_max(float m) {
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 4));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 8));
    return fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 16));
}
__device__ __forceinline__ float rows_sum(float s) {
    s += __shfl_xor_sync(0xffffffffu, s, 4);
    s += __shfl_xor_sync(0xffffffffu, s, 8);
    return s + __shfl_xor_sync(0xffffffffu, s, 16);
}
// a warp's 16 column values (lanes g == 0 hold them all) to its 64 columns in shared memory
__device__ __forceinline__ void publish(float* dst, const float (&v)[16], int g, int q) {
    if (g != 0) return;
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) dst[8 * j + 2 * q + e] = v[2 * j + e];
}
__device__ __forceinline__ void pair_barrier(int id) {
    asm volatile("bar.sync %0, 64;" ::"r"(id) : "memory");
}

// One float4 of a tile (sample s, features d0 .. d0 + 3, s = 4 e / D) into tile buffer buf, split
// (hi, lo), in both layouts: the E-step's (sample rows, feature k) and the statistics' (feature
// rows, the sample at its permuted k position: sample 2 q -> q, 2 q + 1 -> q + 4 of its block)
__device__ __forceinline__ void store_quad(float* buf, float4 v4, int e) {
    float* sE_hi = buf;
    float* sE_lo = sE_hi + KT * TS * 8;
    float* sS_hi = sE_lo + KT * TS * 8;
    float* sS_lo = sS_hi + SK * XF * 8;
    const int s = (4 * e) / D, d0 = (4 * e) % D;
    const int pos = (s & 1) ? 4 + ((s & 7) >> 1) : ((s & 7) >> 1);
    const float v[4] = {v4.x, v4.y, v4.z, v4.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        unsigned h, l, h2, l2;
        split(v[j], h, l);
        split(v[j] * v[j], h2, l2);
        const int k1 = d0 + j, k2 = D + d0 + j;
        const int e1 = (k1 >> 3) * TS * 8 + tile_offset(s, k1 & 7);
        const int e2 = (k2 >> 3) * TS * 8 + tile_offset(s, k2 & 7);
        const int f1 = (s >> 3) * XF * 8 + tile_offset(k1, pos);
        const int f2 = (s >> 3) * XF * 8 + tile_offset(k2, pos);
        sE_hi[e1] = sS_hi[f1] = __uint_as_float(h);
        sE_lo[e1] = sS_lo[f1] = __uint_as_float(l);
        sE_hi[e2] = sS_hi[f2] = __uint_as_float(h2);
        sE_lo[e2] = sS_lo[f2] = __uint_as_float(l2);
    }
}

// X (n, D) float32 centred; W (2 P, 32, XF) and c (2 P, 32): log2-unit weights of [x | x^2]
// and constants (rows of absent components: W 0, c -inf; an absent restart: W 0, c 0);
// partial (gridDim.x, pstride) float64, rows written for restarts < R and components < K.
// PIPE 0: stage, E-step, softmax, statistics, each waiting for the one before. PIPE 1: two
// tile buffers; tile t + 1 is staged while tile t's E-step runs, tile t's statistics run while
// the loop turns to tile t + 1 (waited for before their buffer is restaged). SKIP (timing
// breakdown only, results wrong): 1 no statistics wgmma, 2 no E-step wgmma, 4 no softmax,
// 8 no staging stores.
extern "C" __global__ void __launch_bounds__(NT, 1)
wg_pass(const float* __restrict__ X, long long n, int R, int K, int n_pairs,
        const float* __restrict__ W, const float* __restrict__ c, double* __restrict__ partial,
        int pstride) {
    extern __shared__ __align__(128) float smem[];
    constexpr int BUF = 2 * KT * TS * 8 + 2 * SK * XF * 8;  // one tile buffer (hi, lo; E and S)
    float* s_max = smem + NBUFS * BUF;  // NWG * 4 warps * 64 columns
    float* s_sum = s_max + NWG * 4 * 64;
    double* s_acc = reinterpret_cast<double*>(s_sum + NWG * 4 * 64);  // NWG * (XF/2 + 2) * 128

    const int t = threadIdx.x, wg = t >> 7, tw = t & 127, w = tw >> 5, lane = t & 31;
    const int g = lane >> 2, q = lane & 3;
    const int pair = blockIdx.y * NWG + wg;
    const bool on = pair < n_pairs;
    const bool producer = PIPE == 3 && t >= NC;
    double* acc64 = s_acc + (size_t)wg * (XF / 2 + 2) * 128 + tw;
    for (int i = t; i < NWG * (XF / 2 + 2) * 128; i += NT) s_acc[i] = 0.0;
    __syncthreads();  // zeroed (by other threads than those that add to them)

    // E-step A operand (W^T rows 16 w + g, + 8; k = 8 ks + q, + 4), split; constants of the rows
    unsigned wh[KT][4], wl[KT][4];
    float cr[2];
    {
        const int row0 = 2 * (on ? pair : 0) * 32 + 16 * w + g;
#pragma unroll
        for (int ks = 0; ks < KT; ++ks)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int row = row0 + 8 * (i & 1), k = 8 * ks + q + 4 * (i >> 1);
                split(W[(size_t)row * XF + k], wh[ks][i], wl[ks][i]);
            }
        cr[0] = c[row0];
        cr[1] = c[row0 + 8];
    }
    float accS[XF / 2];
#pragma unroll
    for (int i = 0; i < XF / 2; ++i) accS[i] = 0.0f;
    float nk[2] = {0.0f, 0.0f};
    double ll = 0.0;
    int since_flush = 0;
    auto flush = [&]() {
#pragma unroll
        for (int i = 0; i < XF / 2; ++i) {
            acc64[i * 128] += (double)accS[i];
            accS[i] = 0.0f;
        }
        acc64[(XF / 2) * 128] += (double)nk[0];
        acc64[(XF / 2 + 1) * 128] += (double)nk[1];
        nk[0] = nk[1] = 0.0f;
    };

    const long long n_tiles = (n + TS - 1) / TS;
#if VEC
    // STAGE_VEC: item (8-sample block, parity, feature quad) = samples 8 blk + par + 2 j (j < 4)
    // x features 4 fq .. 4 fq + 3: 16-byte stores in both layouts (the transposed one holds the
    // four samples' positions par * 4 + j side by side)
    constexpr int ITEMS = (TS / 8) * 2 * (D / 4);
    float4 pre[4];
    auto fetch = [&](long long tile) {
        const int blk = t / (2 * (D / 4)), par = (t / (D / 4)) & 1, fq = t % (D / 4);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const long long row = tile * TS + 8 * blk + par + 2 * j;
            pre[j] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (t < ITEMS && tile < n_tiles && row < n)
                pre[j] = __ldg(reinterpret_cast<const float4*>(X + row * D) + fq);
        }
    };
    auto stage = [&](int b) {
        if (SKIP & 8) return;
        if (t >= ITEMS) return;
        float* sE_hi = smem + b * BUF;
        float* sE_lo = sE_hi + KT * TS * 8;
        float* sS_hi = sE_lo + KT * TS * 8;
        float* sS_lo = sS_hi + SK * XF * 8;
        const int blk = t / (2 * (D / 4)), par = (t / (D / 4)) & 1, fq = t % (D / 4);
        unsigned xh[4][4], xl[4][4], qh[4][4], ql[4][4];  // [sample j][feature f]
#define ST4(p, a, b, c, d) *reinterpret_cast<uint4*>(p) = make_uint4(a, b, c, d)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float v[4] = {pre[j].x, pre[j].y, pre[j].z, pre[j].w};
#pragma unroll
            for (int f = 0; f < 4; ++f) {
                split(v[f], xh[j][f], xl[j][f]);
                split(v[f] * v[f], qh[j][f], ql[j][f]);
            }
            const int smp = 8 * blk + par + 2 * j, k1 = 4 * fq, k2 = D + 4 * fq;
            const int e1 = (k1 >> 3) * TS * 8 + tile_offset(smp, k1 & 7);
            const int e2 = (k2 >> 3) * TS * 8 + tile_offset(smp, k2 & 7);
            ST4(sE_hi + e1, xh[j][0], xh[j][1], xh[j][2], xh[j][3]);
            ST4(sE_lo + e1, xl[j][0], xl[j][1], xl[j][2], xl[j][3]);
            ST4(sE_hi + e2, qh[j][0], qh[j][1], qh[j][2], qh[j][3]);
            ST4(sE_lo + e2, ql[j][0], ql[j][1], ql[j][2], ql[j][3]);
        }
#pragma unroll
        for (int f = 0; f < 4; ++f) {
            const int c1 = 4 * fq + f, c2 = D + 4 * fq + f;
            const int f1 = blk * XF * 8 + tile_offset(c1, 4 * par);
            const int f2 = blk * XF * 8 + tile_offset(c2, 4 * par);
            ST4(sS_hi + f1, xh[0][f], xh[1][f], xh[2][f], xh[3][f]);
            ST4(sS_lo + f1, xl[0][f], xl[1][f], xl[2][f], xl[3][f]);
            ST4(sS_hi + f2, qh[0][f], qh[1][f], qh[2][f], qh[3][f]);
            ST4(sS_lo + f2, ql[0][f], ql[1][f], ql[2][f], ql[3][f]);
        }
        fence_proxy_async();
    };
#else
    constexpr int F4 = TS * D / 4, F4L = (F4 + NT - 1) / NT;
    float4 pre[F4L];
    auto fetch = [&](long long tile) {
#pragma unroll
        for (int i = 0; i < F4L; ++i) {
            const int e = t + NT * i;
            pre[i] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (e < F4 && tile < n_tiles && tile * TS + (4 * e) / D < n)
                pre[i] = __ldg(reinterpret_cast<const float4*>(X + tile * TS * D) + e);
        }
    };
    auto stage = [&](int b) {  // the prefetched tile into buffer b, split, in both layouts
        if (SKIP & 8) return;
#pragma unroll
        for (int i = 0; i < F4L; ++i)
            if (t + NT * i < F4) store_quad(smem + b * BUF, pre[i], t + NT * i);
        fence_proxy_async();
    };
#endif

    float acc[32];
    unsigned ah[SK][4], al[SK][4];
    auto e_step = [&](int b) {  // issue tile b's E-step (one commit group)
        const float* sE_hi = smem + b * BUF;
        const float* sE_lo = sE_hi + KT * TS * 8;
        // the first product overwrites acc (scale-d 0): no ordinary instruction writes a wgmma
        // accumulator while another group is in flight (ptxas would serialise the wgmmas)
        wg_fence();
        if (!(SKIP & 2)) {
#pragma unroll
            for (int ks = 0; ks < KT; ++ks) {
                const unsigned long long dh = make_desc(sE_hi + ks * TS * 8, DESC_LBO, DESC_SBO);
                const unsigned long long dl = make_desc(sE_lo + ks * TS * 8, DESC_LBO, DESC_SBO);
                wgmma_rs_n64(acc, wl[ks], dh, ks > 0);
                wgmma_rs_n64(acc, wh[ks], dl, 1);
                wgmma_rs_n64(acc, wh[ks], dh, 1);
            }
        }
        wg_commit();
    };
    auto logits = [&]() {  // after the E-step's wait: the rows' constants
        fence_acc(acc);
#pragma unroll
        for (int i = 0; i < 32; ++i) acc[i] = (SKIP & 2 ? 0.0f : acc[i]) + cr[(i >> 1) & 1];
    };
#if SOFTMAX1
    auto softmax1 = [&](long long tile) {  // one exchange: (max, sum) of each warp's 16 rows
        const float NEG_INF = __int_as_float(0xff800000);
        float mx[16], sm[16];
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float m = rows_max(fmaxf(acc[4 * j + e], acc[4 * j + 2 + e]));
                const float mm = m == NEG_INF ? 0.0f : m;  // 16 absent components: all zeros
                acc[4 * j + e] = ex2(acc[4 * j + e] - mm);
                acc[4 * j + 2 + e] = ex2(acc[4 * j + 2 + e] - mm);
                mx[2 * j + e] = m;
                sm[2 * j + e] = rows_sum(acc[4 * j + e] + acc[4 * j + 2 + e]);
            }
        float* my_max = s_max + (wg * 4 + w) * 64;
        float* my_sum = s_sum + (wg * 4 + w) * 64;
        const float* their_max = s_max + (wg * 4 + (w ^ 1)) * 64;
        const float* their_sum = s_sum + (wg * 4 + (w ^ 1)) * 64;
        publish(my_max, mx, g, q);
        publish(my_sum, sm, g, q);
        pair_barrier(1 + wg * 2 + (w >> 1));
        float ll_tile = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int col = 8 * j + 2 * q + e;
                const float m = mx[2 * j + e], mo = their_max[col];
                const float M = fmaxf(m, mo);
                const float a = m == NEG_INF ? 0.0f : ex2(m - M);  // this warp's part of the sum
                const float bo = mo == NEG_INF ? 0.0f : ex2(mo - M);
                const float S = sm[2 * j + e] * a + their_sum[col] * bo;
                const bool valid = tile * TS + col < n;
                const float scale = valid ? __fdividef(a, S) : 0.0f;
                if (valid && g == 0 && (w & 1) == 0) ll_tile += M + lg2(S);
                acc[4 * j + e] *= scale;
                acc[4 * j + 2 + e] *= scale;
                nk[0] += acc[4 * j + e];
                nk[1] += acc[4 * j + 2 + e];
            }
        ll += (double)ll_tile * 0.6931471805599453;
    };
#endif
    auto softmax = [&](long long tile) {  // acc (waited for) -> responsibilities; nk, ll
        if (SKIP & 4) return;
#if SOFTMAX1
        softmax1(tile);
#else
        float mx[16];
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float m = rows_max(fmaxf(acc[4 * j + e], acc[4 * j + 2 + e]));
                mx[2 * j + e] = m;
            }
        float* my_max = s_max + (wg * 4 + w) * 64;
        const float* their_max = s_max + (wg * 4 + (w ^ 1)) * 64;
        publish(my_max, mx, g, q);
        pair_barrier(1 + wg * 2 + (w >> 1));
        float sm[16];
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float m = fmaxf(mx[2 * j + e], their_max[8 * j + 2 * q + e]);
                mx[2 * j + e] = m;
                acc[4 * j + e] = ex2(acc[4 * j + e] - m);
                acc[4 * j + 2 + e] = ex2(acc[4 * j + 2 + e] - m);
                sm[2 * j + e] = rows_sum(acc[4 * j + e] + acc[4 * j + 2 + e]);
            }
        float* my_sum = s_sum + (wg * 4 + w) * 64;
        const float* their_sum = s_sum + (wg * 4 + (w ^ 1)) * 64;
        publish(my_sum, sm, g, q);
        pair_barrier(1 + wg * 2 + (w >> 1));
        float ll_tile = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float s = sm[2 * j + e] + their_sum[8 * j + 2 * q + e];
                const bool valid = tile * TS + 8 * j + 2 * q + e < n;
                const float inv = valid ? __fdividef(1.0f, s) : 0.0f;
                if (valid && g == 0 && (w & 1) == 0) ll_tile += mx[2 * j + e] + lg2(s);
                acc[4 * j + e] *= inv;
                acc[4 * j + 2 + e] *= inv;
                nk[0] += acc[4 * j + e];
                nk[1] += acc[4 * j + 2 + e];
            }
        ll += (double)ll_tile * 0.6931471805599453;
#endif
    };
    auto stats = [&](int b) {  // issue tile b's statistics (one commit group)
        const float* sS_hi = smem + b * BUF + 2 * KT * TS * 8;
        const float* sS_lo = sS_hi + SK * XF * 8;
#pragma unroll
        for (int j = 0; j < SK; ++j) {
            split(acc[4 * j + 0], ah[j][0], al[j][0]);  // (g, q)         <- (g, 2q)
            split(acc[4 * j + 2], ah[j][1], al[j][1]);  // (g + 8, q)     <- (g + 8, 2q)
            split(acc[4 * j + 1], ah[j][2], al[j][2]);  // (g, q + 4)     <- (g, 2q + 1)
            split(acc[4 * j + 3], ah[j][3], al[j][3]);  // (g + 8, q + 4) <- (g + 8, 2q + 1)
        }
        fence_acc(accS);
        wg_fence();
        if (!(SKIP & 1)) {
#pragma unroll
            for (int j = 0; j < SK; ++j) {
                const unsigned long long dh = make_desc(sS_hi + j * XF * 8, DESC_LBO, DESC_SBO);
                const unsigned long long dl = make_desc(sS_lo + j * XF * 8, DESC_LBO, DESC_SBO);
                WGMMA_STATS(accS, al[j], dh, 1);
                WGMMA_STATS(accS, ah[j], dl, 1);
                WGMMA_STATS(accS, ah[j], dh, 1);
            }
        }
        wg_commit();
    };

    long long tile = blockIdx.x;
    if (PIPE != 3) fetch(tile);
    if (PIPE == 3) {
        // warp-specialised: the last warp loads, splits and stores tiles into NBUF buffers; each
        // consumer warp group waits for a buffer (named barrier FULL0 + b NWG + wg, the producer
        // arriving), computes its pair's E-step, softmax and statistics, and releases the buffer
        // (EMPTY0 + b, every consumer arriving, the producer waiting). The warp groups do not
        // wait for each other: one's softmax can run while another's wgmmas do.
        constexpr int FULL0 = 1 + 2 * NWG, EMPTY0 = FULL0 + NBUF * NWG, ALL = NC + 32;
        const long long n_my =
            (long long)blockIdx.x < n_tiles ? (n_tiles - 1 - blockIdx.x) / gridDim.x + 1 : 0;
        if (producer) {
            constexpr int F4P = TS * D / 4, PER = (F4P + 31) / 32;
            for (long long k = 0; k < n_my; ++k) {
                const int b = (int)(k % NBUF);
                const long long tl = blockIdx.x + k * gridDim.x;
                float4 v4[PER];
#pragma unroll
                for (int i = 0; i < PER; ++i) {  // every load in flight before any store
                    const int e = lane + 32 * i;
                    v4[i] = make_float4(0.f, 0.f, 0.f, 0.f);
                    if (e < F4P && tl * TS + (4 * e) / D < n)
                        v4[i] = __ldg(reinterpret_cast<const float4*>(X + tl * TS * D) + e);
                }
                if (k >= NBUF) bar_sync(EMPTY0 + b, ALL);
#pragma unroll
                for (int i = 0; i < PER; ++i)
                    if (lane + 32 * i < F4P) store_quad(smem + b * BUF, v4[i], lane + 32 * i);
                fence_proxy_async();
#pragma unroll
                for (int i = 0; i < NWG; ++i) bar_arrive(FULL0 + b * NWG + i, 160);
            }
            // the consumers' last releases: no barrier is left with arrivals at exit
            for (long long k = n_my > NBUF ? n_my - NBUF : 0; k < n_my; ++k)
                bar_sync(EMPTY0 + (int)(k % NBUF), ALL);
            return;
        }
        for (long long k = 0; k < n_my; ++k) {
            const int b = (int)(k % NBUF);
            bar_sync(FULL0 + b * NWG + wg, 160);
            e_step(b);
            wg_wait<0>();
            logits();
            softmax(blockIdx.x + k * gridDim.x);
            stats(b);
            wg_wait<0>();
            fence_acc(accS);
            bar_arrive(EMPTY0 + b, ALL);
            if (++since_flush == FLUSH) {
                flush();
                since_flush = 0;
            }
        }
    } else if (PIPE == 2) {
        // two tiles per turn (buffers 0 and 1), every wgmma group retired within the turn (ptxas
        // serialises wgmmas whose accumulators are read in a loop while a group is in flight
        // across its back edge): E(0) runs while tile B is staged, E(1) while the next tile A
        // is staged, S(0) while E(1) is issued
        const long long step = gridDim.x;
        stage(0);
        fetch(tile + step);
        __syncthreads();
        for (; tile < n_tiles; tile += 2 * step) {
            e_step(0);
            stage(1);  // tile + step (zeros past the end)
            fetch(tile + 2 * step);
            wg_wait<0>();
            logits();
            softmax(tile);
            stats(0);
            __syncthreads();  // buffer 1 staged by every thread
            e_step(1);
            wg_wait<1>();     // S(0): it read buffer 0
            __syncthreads();  // every warp group's S(0) is done: buffer 0 is free
            stage(0);         // tile + 2 step
            fetch(tile + 3 * step);
            wg_wait<0>();
            logits();
            softmax(tile + step);
            stats(1);
            wg_wait<0>();
            fence_acc(accS);
            since_flush += 2;
            if (since_flush >= FLUSH) {
                flush();
                since_flush = 0;
            }
            __syncthreads();  // buffer 0 staged by every thread
        }
    } else if (PIPE) {
        stage(0);
        fetch(tile + gridDim.x);
        __syncthreads();
        int b = 0;
        // a warp group without a pair computes one anyway (results not written): no branch
        // around in-flight wgmma groups, where ptxas would insert waits
        for (; tile < n_tiles; tile += gridDim.x, b ^= 1) {
            e_step(b);
            wg_wait<1>();     // the previous tile's statistics (they read buffer b ^ 1)
            __syncthreads();  // every warp group's statistics are done: buffer b ^ 1 is free
            stage(b ^ 1);
            fetch(tile + 2 * gridDim.x);
            wg_wait<0>();
            logits();
            fence_acc(accS);
            if (since_flush == FLUSH) {  // accS untouched while a group is in flight
                flush();
                since_flush = 0;
            }
            softmax(tile);
            stats(b);
            ++since_flush;
            __syncthreads();  // buffer b ^ 1 staged by every thread
        }
        wg_wait<0>();
        fence_acc(accS);
    } else {
        for (; tile < n_tiles; tile += gridDim.x) {
            __syncthreads();  // every warp group is done with the previous tile
            stage(0);
            __syncthreads();
            fetch(tile + gridDim.x);  // in flight while this tile is computed
            if (!on) continue;
            e_step(0);
            wg_wait<0>();
            logits();
            softmax(tile);
            stats(0);
            wg_wait<0>();
            fence_acc(accS);
            if (++since_flush == FLUSH) {
                flush();
                since_flush = 0;
            }
        }
    }
    if (!on) return;
#pragma unroll
    for (int i = 0; i < XF / 2; ++i) acc64[i * 128] += (double)accS[i];
    acc64[(XF / 2) * 128] += (double)nk[0];
    acc64[(XF / 2 + 1) * 128] += (double)nk[1];
    __syncwarp();

    // rows of this warp: m = 16 w + g + 8 h -> restart 2 pair + m / 32, component m % 32
    const int C = 1 + XF;
    double* out = partial + (size_t)blockIdx.x * pstride;
#pragma unroll
    for (int i = 0; i < XF / 2; ++i) {
        const int m = 16 * w + g + 8 * ((i >> 1) & 1), col = 8 * (i >> 2) + 2 * q + (i & 1);
        const int r = 2 * pair + (m >> 5), k = m & 31;
        if (r < R && k < K) out[(size_t)(r * K + k) * C + 1 + col] = acc64[i * 128];
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        double v = acc64[(XF / 2 + h) * 128];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        const int m = 16 * w + g + 8 * h, r = 2 * pair + (m >> 5), k = m & 31;
        if (q == 0 && r < R && k < K) out[(size_t)(r * K + k) * C] = v;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) ll += __shfl_xor_sync(0xffffffffu, ll, off);
    const int r = 2 * pair + (w >> 1);
    if ((w & 1) == 0 && lane == 0 && r < R) out[(size_t)R * K * C + r] = ll;
}
"""
