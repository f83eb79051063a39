// The fused large-K pass (gmm_core/_cupy/large_k.py, LargeKPass with `fused`): diag and
// spherical EM passes for many components (hundreds to thousands per restart, restarts side by
// side, up to 256 features) on the tensor cores (mma.sync TF32), with nothing of size
// (samples x components) in global memory.
//
// A sample's log-density under component k is the expanded quadratic form of centred data,
//   diag       L = c_k + [x, x^2] . [mu_k p_k, -p_k / 2]
//   spherical  L = c_k + x . mu_k p_k - p_k |x|^2 / 2
//   c_k = log pi_k + log det(U_k) - D/2 log 2 pi - sum_d mu_kd^2 p_kd / 2        (p = precision)
// The inner products are GEMM tiles in 3xTF32 (float32-level products, tc::mma3), summed over
// chunks of 32 features that each start from zero and are added in float32 with rounding to
// nearest: the tensor cores' float32 accumulation truncates, and a sum carried through all of a
// row's hundreds of large terms was biased by up to 4e-3 nats (the cuBLAS TF32 version of the
// unfused pass, em_largek.cu). c_k, the |x|^2 term and the log2(e) scale are added in float32
// (round to nearest) in a fixed order that both kernels share, so both see the same bits.
//
// Two kernels per row chunk, as FlashAttention's backward pass recomputes its scores from the
// saved log-sum-exp:
//   lkt_lse   row-stationary: a block holds 128 rows of X in shared memory and streams the
//             components' weights through it (32-feature stages, double-buffered by cp.async),
//             keeping an online log-sum-exp per row and restart; writes lse (log2 units) per row
//             and restart. The caller sums w_n lse_n in float64 (the log-likelihood).
//   lkt_stats component-stationary: a block holds one tile of 64 (or 32) components' weights in
//             shared memory and walks a range of rows, 64 at a time: recomputes the tile's
//             log-densities exactly as lkt_lse did, r = w_n 2^(v - lse_n) <= 1, and adds
//             R^T [x, x^2] (diag) or R^T x (spherical) as TF32 GEMMs: r rounded to TF32 once
//             and that r~ used for N_k and every moment alike (weights of one weighted mean),
//             x (and x^2) as TF32 hi + lo, every mma's truncation corrected as the E-step's;
//             flushed into a float64 partial of its own every FLUSH_ROWS rows; N_k and
//             sum r~ |x|^2 in float32 per tile, float64 per block. (N_k from the unrounded r
//             beside moments from r~ left a fit's variances 5e-4 low: near-hard
//             responsibilities, 1 - r < 2^-12, round up to 1.)
//             Partials are per (split, component): no atomics, the same sums every run.
//
// Layouts (float32 unless said):
//   X      (rows, d) row-major, centred; shared copies zero-padded to dp = d rounded up to 32
//   Wt     [64-component tile][chunk][component 64][16 float4]: float4 q = s * 4 + t of a
//          component holds {hi(k), hi(k + 4), lo(k), lo(k + 4)} at chunk-local k = s * 8 + t,
//          the mma's B fragment of k-step s for lane t (3xTF32 split, tc::split); the inner
//          index runs over [x (dp) | x^2 (dp, diag)]. In shared memory float4 q of component n
//          sits at n * 16 + (q ^ ((n & 1) << 2)): two components' fragments per 128 bytes, no
//          bank conflicts.
//   cst, hp (components): c_k (-inf for padding and weight 0) and -p_k / 2 (spherical; 0 diag)
//   lse2   (restarts, ld) log-sum-exp per row in log2 units; sqn (rows) |x|^2 (spherical)
//   part   (splits, components, fo) and partd (splits, components, 2) {N_k, r |x|^2}: float64
#include "tc.cuh"

namespace lkt {
constexpr int NT = 256;    // threads per block (8 warps)
constexpr int KC = 32;     // features per weight stage (chunk)
constexpr int TN = 64;     // components per weight tile
constexpr int WF4 = 16;    // float4 per component per chunk
constexpr int BM1 = 128;   // rows per lkt_lse block
constexpr int BM2 = 64;    // rows per lkt_stats tile
constexpr int RS = BM2 + 4;  // row stride of R^T in shared memory
constexpr int FLUSH_ROWS = 2048;
constexpr float LOG2E = 1.4426950408889634f;
constexpr int LSE_BLOCKS = 2;  // lkt_lse blocks per SM the registers allow (shared memory: 2
                                // up to 128 features)
#ifndef GMM_LKT_M_PRODUCTS  // TF32 products per statistics term: x as hi + lo (2) or hi (1)
#define GMM_LKT_M_PRODUCTS 2
#endif
constexpr int M_PRODUCTS = GMM_LKT_M_PRODUCTS;

__device__ __forceinline__ int wswz(int n, int q) { return n * WF4 + (q ^ ((n & 1) << 2)); }

using tc::cp16;  // cp.async helpers, untruncate and lse_merge: tc.cuh (the FP16 probe uses them)
using tc::cp4;
using tc::cp_commit;
using tc::cp_wait;
using tc::lse_merge;
using tc::untruncate;

// ncomp components' float4s of one chunk, global (dense) -> shared (swizzled)
__device__ __forceinline__ void stage(float4* dst, const float4* src, int ncomp) {
    for (int i = threadIdx.x; i < ncomp * WF4; i += NT) cp16(dst + wswz(i >> 4, i & 15), src + i);
}

// rows [row0, row0 + rows) of X into Xs (stride xs), zeros past n and past d
__device__ __forceinline__ void load_rows(const float* __restrict__ X, long long n, int d, int dp,
                                          long long row0, int rows, float* Xs, int xs) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int r = warp; r < rows; r += NT / 32) {
        const long long gr = row0 + r;
        const bool in = gr < n;
        for (int c = lane; c < dp; c += 32) Xs[r * xs + c] = (in && c < d) ? X[gr * d + c] : 0.0f;
    }
}

// |x|^2 of a shared row, in one fixed order (both kernels call this)
__device__ __forceinline__ float sumsq(const float* x, int d) {
    float s = 0.0f;
    for (int c = 0; c < d; ++c) s = __fmaf_rn(x[c], x[c], s);
    return s;
}

// a log-density in log2 units from its GEMM sum (both kernels call this)
__device__ __forceinline__ float logit2(float acc, float c, float hp, float s, bool diag) {
    const float cb = diag ? c : __fadd_rn(c, __fmul_rn(hp, s));
    return __fmul_rn(__fadd_rn(acc, cb), LOG2E);
}

// A fragment of rows (row, row + 8), inner columns (kk, kk + 4): x, or x^2 past dp (diag)
template <bool DIAG>
__device__ __forceinline__ void a_frag(const float* Xs, int xs, int dp, int row, int kk,
                                       unsigned (&ah)[4], unsigned (&al)[4]) {
    const bool sq = DIAG && kk >= dp;
    const int col = sq ? kk - dp : kk;
    float v[4] = {Xs[row * xs + col], Xs[(row + 8) * xs + col], Xs[row * xs + col + 4],
                  Xs[(row + 8) * xs + col + 4]};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        if (sq) v[i] = __fmul_rn(v[i], v[i]);
        tc::split(v[i], ah[i], al[i]);
    }
}

// acc (a warp's MT x NTE m16n8 tiles: rows rbase.., components nbase.. of the stage Wsm) +=
// chunk c of the inner products, each k-step summed from zero by the mma (the small products
// first: the last mma's result is the one truncated), corrected and added with rounding to
// nearest
template <bool DIAG, int MT, int NTE>
__device__ __forceinline__ void e_chunk(float (&acc)[MT][NTE][4], const float* Xs, int xs, int dp,
                                        int rbase, int c, const float4* Wsm, int nbase) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int s = 0; s < KC / 8; ++s) {
        float ch[MT][NTE][4];
        tc::zero(ch);
        unsigned ah[MT][4], al[MT][4];
#pragma unroll
        for (int m = 0; m < MT; ++m)
            a_frag<DIAG>(Xs, xs, dp, rbase + m * 16 + g, c * KC + s * 8 + t, ah[m], al[m]);
#pragma unroll
        for (int j = 0; j < NTE; ++j) {
            const float4 b = Wsm[wswz(nbase + j * 8 + g, s * 4 + t)];
#pragma unroll
            for (int m = 0; m < MT; ++m)
                tc::mma3(ch[m][j], ah[m], al[m], __float_as_uint(b.x), __float_as_uint(b.y),
                         __float_as_uint(b.z), __float_as_uint(b.w));
        }
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int j = 0; j < NTE; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    acc[m][j][e] = __fadd_rn(acc[m][j][e], untruncate(ch[m][j][e]));
    }
}

}  // namespace lkt

// One thread per (component, inner index) of every restart's padded components: Wt, cst, hp
// from float64 parameters (weights (R, K), means (R, K, d), prec_chol (R, K, d) diag or (R, K)).
__global__ void __launch_bounds__(256)
lkt_weights(const double* __restrict__ weights, const double* __restrict__ means,
            const double* __restrict__ prec_chol, int n_restarts, int k, int kpr, int d, int dp,
            bool diag, float* __restrict__ Wt, float* __restrict__ cst, float* __restrict__ hp) {
    const int fi = diag ? 2 * dp : dp, nc = fi / lkt::KC;
    const long long total = (long long)n_restarts * kpr * fi;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long comp = i / fi;
        const int j = (int)(i % fi);
        const int r = (int)(comp / kpr), kk = (int)(comp % kpr);
        const bool valid = kk < k;
        const long long src = (long long)r * k + kk;  // (restart, component) of the parameters
        double v = 0.0;
        if (valid) {
            const int f = j < dp ? j : j - dp;
            if (f < d) {
                const double u = diag ? prec_chol[src * d + f] : prec_chol[src];
                v = j < dp ? means[src * d + f] * u * u : -0.5 * u * u;
            }
        }
        unsigned hi, lo;
        tc::split((float)v, hi, lo);
        const int c = j / lkt::KC, kl = j % lkt::KC, s = kl / 8, t = kl % 4, half = (kl % 8) / 4;
        const long long tile = comp / lkt::TN;
        const int n = (int)(comp % lkt::TN);
        float* q = Wt + ((((tile * nc + c) * lkt::TN + n) * lkt::WF4) + s * 4 + t) * 4;
        q[half] = __uint_as_float(hi);
        q[2 + half] = __uint_as_float(lo);
        if (j == 0) {
            double cv = __longlong_as_double(0xfff0000000000000ULL), h = 0.0;  // -inf
            if (valid) {
                double log_det = 0.0, quad = 0.0;
                for (int e = 0; e < d; ++e) {
                    const double u = diag ? prec_chol[src * d + e] : prec_chol[src];
                    const double m = means[src * d + e];
                    if (diag) log_det += log(u);
                    quad += m * m * u * u;
                }
                if (!diag) {
                    log_det = d * log(prec_chol[src]);
                    h = -0.5 * prec_chol[src] * prec_chol[src];
                }
                cv = log(weights[src]) + log_det - 0.5 * d * 1.8378770664093453 - 0.5 * quad;
            }
            cst[comp] = (float)cv;
            hp[comp] = (float)h;
        }
    }
}

// Pass 1: one block per 128 rows. Warps 4 (32 rows each) x 2 (32 components of each 64-tile);
// dynamic shared memory: lkt_lse_smem(dp).
template <bool DIAG>
__global__ void __launch_bounds__(lkt::NT, lkt::LSE_BLOCKS)
lkt_lse(const float* __restrict__ X, long long n, int d, int dp, const float4* __restrict__ Wt,
        const float* __restrict__ cst, const float* __restrict__ hp, int n_restarts, int tpr,
        const int* __restrict__ active, float* __restrict__ lse2, long long ld,
        float* __restrict__ sqn) {
    using namespace lkt;
    extern __shared__ float4 smem4[];
    float4* Wb = smem4;  // 2 stages of TN components
    const int xs = dp + 4;
    float* Xs = reinterpret_cast<float*>(smem4 + 2 * TN * WF4);
    float* srow = Xs + BM1 * xs;
    float* mrg = srow + BM1;  // (m, s) of the second column of warps, per row
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wr = warp & 3, wc = warp >> 2;
    const int nc = (DIAG ? 2 * dp : dp) / KC;
    const long long row0 = (long long)blockIdx.x * BM1;
    const float neg = -3.402823466e38f;

    load_rows(X, n, d, dp, row0, BM1, Xs, xs);
    __syncthreads();
    if (!DIAG && threadIdx.x < BM1) {  // |x|^2, kept for lkt_stats (the same bits)
        srow[threadIdx.x] = sumsq(Xs + threadIdx.x * xs, d);
        if (row0 + threadIdx.x < n) sqn[row0 + threadIdx.x] = srow[threadIdx.x];
    }

    for (int r = 0; r < n_restarts; ++r) {
        if (active != nullptr && !active[r]) continue;  // uniform over the block
        float m_run[4], s_run[4];  // rows wr*32 + (i >> 1) * 16 + (i & 1) * 8 + g
#pragma unroll
        for (int i = 0; i < 4; ++i) m_run[i] = neg, s_run[i] = 0.0f;
        float acc[2][4][4];
        const long long q0 = (long long)r * tpr * nc;
        const int nq = tpr * nc;
        stage(Wb, Wt + q0 * TN * WF4, TN);
        cp_commit();
        for (int q = 0; q < nq; ++q) {
            if (q + 1 < nq) {
                stage(Wb + ((q + 1) & 1) * TN * WF4, Wt + (q0 + q + 1) * TN * WF4, TN);
                cp_commit();
                cp_wait<1>();
            } else {
                cp_wait<0>();
            }
            __syncthreads();
            const int c = q % nc;
            if (c == 0) tc::zero(acc);
            e_chunk<DIAG, 2, 4>(acc, Xs, xs, dp, wr * 32, c, Wb + (q & 1) * TN * WF4, wc * 32);
            if (c == nc - 1) {  // the tile's log-densities: online log-sum-exp per row
                const long long kb = ((long long)r * tpr + q / nc) * TN + wc * 32;
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
                            v[j * 2 + o] = logit2(acc[m][j][h * 2 + o], cst[comp], hp[comp],
                                                  DIAG ? 0.0f : srow[row], DIAG);
                            vmax = fmaxf(vmax, v[j * 2 + o]);
                        }
                    const float mn = fmaxf(m_run[i], vmax);
                    float s = s_run[i] * tc::ex2(m_run[i] - mn);
#pragma unroll
                    for (int o = 0; o < 8; ++o) s += tc::ex2(v[o] - mn);
                    m_run[i] = mn;
                    s_run[i] = s;
                }
            }
            __syncthreads();  // the stage (q & 1) is refilled next
        }
        // merge the quad's lanes, then the two columns of warps
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
                mrg[BM1 + row] = s_run[i];
            }
        }
        __syncthreads();
        if (wc == 0 && t == 0) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int row = wr * 32 + (i >> 1) * 16 + (i & 1) * 8 + g;
                lse_merge(m_run[i], s_run[i], mrg[row], mrg[BM1 + row]);
                if (row0 + row < n) lse2[r * ld + row0 + row] = m_run[i] + tc::lg2(s_run[i]);
            }
        }
        __syncthreads();
    }
}

// Pass 2: grid (component tiles of BN components over all restarts, row splits); a split's
// rows are [y * rows_per_split, ...) of this launch. E-step warps 4 (16 rows) x 2 (BN / 2
// components); statistics warps BN == 64: 2 (32 components) x 4 (fo / 4 features), BN == 32:
// 1 x 8 (fo / 8). nbuf (1 or 2) row tiles in shared memory: with 2, the next tile's rows arrive
// (cp.async) while this one is computed. sqn: lkt_lse's |x|^2 (spherical). Dynamic shared memory:
// large_k.fused_smem.
template <bool DIAG, int BN>
__global__ void __launch_bounds__(lkt::NT, 1)
lkt_stats(const float* __restrict__ X, const float* __restrict__ sw, long long n, int d, int dp,
          const float4* __restrict__ Wt, const float* __restrict__ cst,
          const float* __restrict__ hp, int tpr, const int* __restrict__ active,
          const float* __restrict__ lse2, long long ld, const float* __restrict__ sqn,
          long long rows_per_split, long long n_comp, int nbuf, double* __restrict__ part,
          double* __restrict__ partd) {
    using namespace lkt;
    constexpr int NTE = BN / 16;          // E-step n-tiles per warp
    constexpr int WFM = BN == 64 ? 4 : 8;  // statistics warps along the features
    extern __shared__ float4 smem4[];
    const int fi = DIAG ? 2 * dp : dp, nc = fi / KC, fo = fi;
    const int xs = dp + 4;
    float4* Wr = smem4;  // nc chunks x BN components, resident
    float* Xs = reinterpret_cast<float*>(smem4 + nc * BN * WF4);  // nbuf x (BM2, xs)
    float* Rt = Xs + nbuf * BM2 * xs;  // (BN, RS): responsibilities, TF32-rounded, transposed
    float* lrow = Rt + BN * RS;        // 2 x BM2: lse2 per row
    float* wrow = lrow + 2 * BM2;      // 2 x BM2: sample weight per row (0 past the split)
    float* srow = wrow + 2 * BM2;      // 2 x BM2: |x|^2 (spherical; lkt_lse's)
    float* nk_t = srow + 2 * BM2;  // (4, BN): per E-step row warp, summed in a fixed order
    float* s2_t = nk_t + 4 * BN;   // (4, BN)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const long long comp0 = (long long)blockIdx.x * BN;
    const long long tile = comp0 / TN;
    const int half = (int)(comp0 % TN);
    const int r = (int)(tile / tpr);
    if (active != nullptr && !active[r]) return;
    const long long rs = (long long)blockIdx.y * rows_per_split;
    const long long re = min(n, rs + rows_per_split);
    if (rs >= re) return;

    // zero the padding columns once (the loads never write them) and the per-tile sums
    for (int i = threadIdx.x; i < nbuf * BM2 * xs; i += NT) Xs[i] = 0.0f;
    __syncthreads();
    for (int c = 0; c < nc; ++c)
        stage(Wr + c * BN * WF4, Wt + ((tile * nc + c) * TN + half) * WF4, BN);
    cp_commit();
    // rows [row0, row0 + BM2) of the split, their lse2 and weights, into buffer b (cp.async);
    // rows past the split: weight 0 (their stale x are finite: they add 0)
    auto issue = [&](long long row0, int b) {
        float* xb = Xs + b * BM2 * xs;
        for (int rr = warp; rr < BM2; rr += NT / 32) {
            const long long gr = row0 + rr;
            if (gr < re)
                for (int c = lane; c < d; c += 32) cp4(xb + rr * xs + c, X + gr * d + c);
        }
        if (threadIdx.x < BM2) {
            const long long gr = row0 + threadIdx.x;
            float* lb = lrow + b * BM2 + threadIdx.x;
            float* wb = wrow + b * BM2 + threadIdx.x;
            if (gr < re) {
                cp4(lb, lse2 + r * ld + gr);
                if (!DIAG) cp4(srow + b * BM2 + threadIdx.x, sqn + gr);
                if (sw != nullptr) cp4(wb, sw + gr);
                else *wb = 1.0f;
            } else {  // all three written: stale shared words may be NaN (0 * NaN = NaN)
                *lb = 0.0f;
                *wb = 0.0f;
                srow[b * BM2 + threadIdx.x] = 0.0f;
            }
        }
        cp_commit();
    };

    const int er = warp & 3, ec = warp >> 2;         // E-step warp grid
    const int mc = warp / WFM, mf = warp % WFM;      // statistics warp grid
    const int fpw = fo / WFM, ntm = fpw / 8;         // features and n-tiles per warp
    float macc[2][8][4];
    tc::zero(macc);
    double nkd = 0.0, s2d = 0.0;
    const long long slot = (long long)blockIdx.y * n_comp + comp0;  // this block's partial rows

    auto flush = [&]() {
#pragma unroll
        for (int a = 0; a < 2; ++a) {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                if (j >= ntm) break;
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int cl = mc * 32 + a * 16 + g + (e >> 1) * 8;
                    const int f = mf * fpw + j * 8 + 2 * t + (e & 1);
                    part[(slot + cl) * fo + f] += (double)macc[a][j][e];
                    macc[a][j][e] = 0.0f;
                }
            }
        }
    };

    issue(rs, 0);
    int since = 0, it = 0;
    for (long long row0 = rs; row0 < re; row0 += BM2, ++it) {
        const int b = nbuf == 2 ? (it & 1) : 0;
        __syncthreads();  // the previous tile's readers of its buffer, Rt and srow are done
        if (nbuf == 1 && it > 0) issue(row0, 0);
        if (nbuf == 2 && row0 + BM2 < re) {
            issue(row0 + BM2, b ^ 1);
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        const float* xb = Xs + b * BM2 * xs;
        const float* lb = lrow + b * BM2;
        const float* wb = wrow + b * BM2;
        const float* sb = srow + b * BM2;

        // the tile's log-densities, exactly as lkt_lse computed them
        float acc[1][NTE][4];
        tc::zero(acc);
        for (int c = 0; c < nc; ++c)
            e_chunk<DIAG, 1, NTE>(acc, xb, xs, dp, er * 16, c, Wr + c * BN * WF4, ec * (BN / 2));
#pragma unroll
        for (int j = 0; j < NTE; ++j)
#pragma unroll
            for (int o = 0; o < 2; ++o) {
                const int cl = ec * (BN / 2) + j * 8 + 2 * t + o;
                const float ck = cst[comp0 + cl], hk = hp[comp0 + cl];
                float nsum = 0.0f, ssum = 0.0f;
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int row = er * 16 + h * 8 + g;
                    const float sr = DIAG ? 0.0f : sb[row];
                    const float v = logit2(acc[0][j][h * 2 + o], ck, hk, sr, DIAG);
                    const float wn = wb[row];
                    const float rr = wn > 0.0f ? wn * tc::ex2(v - lb[row]) : 0.0f;
                    // N_k and the moments all weigh a row by the same TF32-rounded r: near-hard
                    // responsibilities (1 - r < 2^-12) round up, and a mean of sum r~ x over
                    // sum r came out 2.5e-5 too far from 0 (variances 5e-4 low, spherical)
                    const float rt = tc::round_tf32(rr);
                    Rt[cl * RS + row] = rt;
                    nsum += rt;
                    ssum += rt * sr;
                }
#pragma unroll
                for (int off = 4; off < 32; off <<= 1) {
                    nsum += __shfl_xor_sync(0xffffffffu, nsum, off);
                    ssum += __shfl_xor_sync(0xffffffffu, ssum, off);
                }
                if (g == 0) {  // one writer per (row warp, component)
                    nk_t[er * BN + cl] = nsum;
                    s2_t[er * BN + cl] = ssum;
                }
            }
        __syncthreads();
        if (threadIdx.x < BN) {
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                nkd += (double)nk_t[w * BN + threadIdx.x];
                s2d += (double)s2_t[w * BN + threadIdx.x];
            }
        }

        // statistics: (BN x fo) += R^T (BN x 64 rows) [x | x^2] (64 rows x fo), TF32
#pragma unroll
        for (int ks = 0; ks < BM2 / 8; ++ks) {
            unsigned a[2][4];
#pragma unroll
            for (int mm = 0; mm < 2; ++mm) {
                const int cr = mc * 32 + mm * 16 + g;
                a[mm][0] = __float_as_uint(Rt[cr * RS + ks * 8 + t]);
                a[mm][1] = __float_as_uint(Rt[(cr + 8) * RS + ks * 8 + t]);
                a[mm][2] = __float_as_uint(Rt[cr * RS + ks * 8 + t + 4]);
                a[mm][3] = __float_as_uint(Rt[(cr + 8) * RS + ks * 8 + t + 4]);
            }
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                if (j >= ntm) break;
                const int f = mf * fpw + j * 8 + g;
                const bool sq = DIAG && f >= dp;
                const int col = sq ? f - dp : f;
                float x0 = xb[(ks * 8 + t) * xs + col], x1 = xb[(ks * 8 + t + 4) * xs + col];
                if (sq) x0 = __fmul_rn(x0, x0), x1 = __fmul_rn(x1, x1);
                // x in TF32 hi + lo (M_PRODUCTS == 2: float32-exact moments) or hi alone
                const float h0 = tc::round_tf32(x0), h1 = tc::round_tf32(x1);
#pragma unroll
                for (int p = M_PRODUCTS - 1; p >= 0; --p) {  // lo first
                    const unsigned b0 = __float_as_uint(p ? tc::round_tf32(x0 - h0) : h0);
                    const unsigned b1 = __float_as_uint(p ? tc::round_tf32(x1 - h1) : h1);
                    float o0[4], o1[4];
#pragma unroll
                    for (int e = 0; e < 4; ++e) o0[e] = macc[0][j][e], o1[e] = macc[1][j][e];
                    tc::mma(macc[0][j], a[0], b0, b1);
                    tc::mma(macc[1][j], a[1], b0, b1);
                    // each mma's truncation, where it added anything (rows of r~ = 0 and
                    // x exact in TF32 add exactly 0: nothing was truncated)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        if (macc[0][j][e] != o0[e]) macc[0][j][e] = untruncate(macc[0][j][e]);
                        if (macc[1][j][e] != o1[e]) macc[1][j][e] = untruncate(macc[1][j][e]);
                    }
                }
            }
        }
        since += BM2;
        if (since >= FLUSH_ROWS) {
            flush();
            since = 0;
        }
    }
    flush();
    if (threadIdx.x < BN) {
        double* p = partd + (slot + threadIdx.x) * 2;
        p[0] += nkd;
        p[1] += s2d;
    }
}
