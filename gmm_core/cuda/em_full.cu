// Full covariance: the M-step and the E-step constants on the device, one block per (restart,
// component), float64 throughout (the pass itself is two cuBLAS GEMMs over quadratic features,
// see gmm_core/_cupy/gemm.py). Each replaces a chain of small CuPy operations (batched
// Cholesky, solve, products, fancy indexing, casts) that cost more than the pass's GEMMs' share
// of an iteration: launch-bound work on 32 x 32 matrices.
//
//   full_mstep     : statistics -> weights, means, covariances (scikit-learn's formulas, with the
//                    reg_covar ridge and the mean-term factor 2 - nk_raw / nk of
//                    gmm_core/_gaussian.py), precision Cholesky factors U = (L^-1)^T of the
//                    Cholesky factor L of each covariance. A covariance that is not positive
//                    definite yields NaN factors (the estimator's loop checks them), as the CuPy
//                    Cholesky does. Given the buffers (else null), it also writes the
//                    tensor-core pass's operands of the new parameters (fulltc::write_operands),
//                    which then needs no full_tc_params launch: one kernel less per iteration.
//   full_constants : (weights, means, U) -> the pass's GEMM weights and constants:
//                    log w + log N(x) = phi(x) . M[:, rk] + c[rk], phi(x) = [x_i x_j (i <= j), x],
//                    M = -1/2 [P_ij (x2 off the diagonal); -2 P mu], P = U U^T,
//                    c = log w + sum log U_dd - D/2 log 2 pi - 1/2 mu^T P mu.

#include "tc.cuh"

#ifndef GMM_FULL_NT
#define GMM_FULL_NT 256
#endif

namespace gmmf {
__host__ __device__ constexpr int triu_index(int i, int j, int D) {  // np.triu_indices order
    return i * D - i * (i - 1) / 2 + (j - i);
}
}  // namespace gmmf

#ifndef GMM_FULL_TC_GUARD
#define GMM_FULL_TC_GUARD 1024.0  // |mu U|^2 above which a component's E-step is centred
#endif

namespace fulltc {
constexpr int NT = 256, NW = NT / 32;
constexpr int SLAB = 16;          // samples per warp (the E-step's m16 rows)
constexpr int TM = NW * SLAB;     // samples per tile
constexpr int CW = 2;             // M-step components per warp
constexpr int GROUP = NW * CW;    // components whose statistics one block accumulates
template <int D> struct Geo {
    static_assert(D >= 1 && D <= 32, "tensor-core full pass: 1 <= D <= 32");
    static constexpr int NTD = (D + 7) / 8;              // 8-feature tiles
    static constexpr int DN = 8 * NTD;
    static constexpr int MTD = (D + 15) / 16;            // 16-feature m-tiles of the M-step
    static constexpr int DM = 16 * MTD;                  // padded features (zero columns)
    static constexpr int XS = DM + ((8 - DM % 32) % 32 + 32) % 32;  // row stride = 8 mod 32
    static constexpr int NPAIR = NTD * (NTD + 1) / 2;    // (k-step <= n-tile) blocks of U
    static constexpr int LPL = (SLAB * D + 31) / 32;     // x values per lane per slab
    // (m-tile, n-tile) blocks of S2 holding entries with col >= row: n-tile >= 2 m-tile
    __host__ __device__ static constexpr int frag_base(int mt) {
        int f = 0;
        for (int m = 0; m < mt; ++m) f += NTD - 2 * m;
        return f;
    }
    static constexpr int NFRAG = frag_base(MTD);
};
}  // namespace fulltc

namespace fulltc {
// The pass's operands of (restart, component) rk, float32: U in fragment order (pair p =
// nt (nt + 1) / 2 + ks, lane (g, q): U[8 ks + q][8 nt + g], U[8 ks + q + 4][8 nt + g]), mu U
// (padded to DN), (log w + sum log U_dd - D/2 log 2pi) log2(e), mu (padded to DM), and whether
// |mu U|^2 exceeds GMM_FULL_TC_GUARD (int). u(i, j) = U[i][j] (upper triangular), mu: D values;
// s_b: DN doubles of shared memory. Every thread of the block calls it (one barrier).
template <int D, typename UAt>
__device__ __forceinline__ void write_operands(int rk, double weight, const double* mu, UAt u, double* s_b,
                               float2* __restrict__ ufrag, float* __restrict__ bvec,
                               float* __restrict__ lconst, float* __restrict__ mvec,
                               int* __restrict__ far) {
    using G = Geo<D>;
    const int t = threadIdx.x, nth = blockDim.x;
    for (int i = t; i < G::NPAIR * 32; i += nth) {
        const int p = i / 32, lane = i % 32, g = lane >> 2, q = lane & 3;
        int nt = 0;
        while ((nt + 1) * (nt + 2) / 2 <= p) ++nt;
        const int ks = p - nt * (nt + 1) / 2;
        const int col = 8 * nt + g, r0 = 8 * ks + q, r1 = r0 + 4;
        ufrag[(size_t)rk * G::NPAIR * 32 + i] =
            make_float2(r0 < D && col < D ? (float)u(r0, col) : 0.0f,
                        r1 < D && col < D ? (float)u(r1, col) : 0.0f);
    }
    for (int j = t; j < G::DN; j += nth) {  // mu U
        double v = 0.0;
        // a rolled loop: unrolled over D, it took full_mstep from 38 to 90 registers (2 blocks
        // per SM instead of 8)
        if (j < D)
#pragma unroll 1
            for (int i = 0; i < D; ++i) v += mu[i] * u(i, j);
        s_b[j] = v;
        bvec[(size_t)rk * G::DN + j] = (float)v;
    }
    for (int j = t; j < G::DM; j += nth) mvec[(size_t)rk * G::DM + j] = j < D ? (float)mu[j] : 0.0f;
    __syncthreads();
    if (t < 32) {  // sum log U_dd and |mu U|^2: a warp, one log per lane (D <= 32)
        double log_det = 0.0, b2 = 0.0;
        if (t < D) {
            log_det = log(u(t, t));
            b2 = s_b[t] * s_b[t];
        }
        log_det = gmm::warp_sum(log_det);
        b2 = gmm::warp_sum(b2);
        if (t == 0) {
            lconst[rk] = (float)((log(weight) + log_det - 0.5 * D * 1.83787706640934548356) *
                                 1.44269504088896340736);
            far[rk] = !(b2 <= GMM_FULL_TC_GUARD);  // NaN too
        }
    }
}
}  // namespace fulltc


// stats: nk (RK), sx (RK, D), sxx (RK, D, D); outputs restart-major like Params.
// The factorisation is LDL^T-shaped so that each elimination step needs one block barrier: step
// j leaves column j unscaled (a_ij) with the pivot d_j on the diagonal and updates the trailing
// lower triangle a_ik -= a_ij a_kj / d_j, so A = L1 diag(d) L1^T with L1 unit lower triangular
// (l_ij = a_ij / d_j) and the Cholesky factor (scikit-learn's) L = L1 diag(sqrt(d)). The same
// step applies its row operations to Z (from the identity): Z_ic -= l_ij Z_jc for i > j, c <= j,
// so Z = L1^-1 when the elimination ends, with no serial substitution; then L^-1 =
// diag(1 / sqrt(d)) Z and U = (L^-1)^T. A pivot <= 0 (or NaN) gives a NaN or infinite 1 /
// sqrt(d_j), so U is not finite, which the estimator's loop checks. Its predecessors: a right-
// looking Cholesky (three barriers a step, a division per element, one thread summing the N_k
// from global memory, a division per substitution row) 44 us of the full case's 1.48 ms
// iteration on an H200 (ncu, base clocks); the LDL^T elimination with a forward substitution of
// one column per thread (chains of up to D(D-1)/2 dependent float64 multiply-adds) 28.9 us.
template <int D>
__global__ void __launch_bounds__(GMM_FULL_NT)
full_mstep(const double* __restrict__ nk_raw, const double* __restrict__ sx,
           const double* __restrict__ sxx, int K, double reg_covar, double eps,
           const double* __restrict__ shift, double* __restrict__ weights, double* __restrict__ means,
           double* __restrict__ covariances, double* __restrict__ pchol,
           float2* __restrict__ ufrag, float* __restrict__ bvec, float* __restrict__ lconst,
           float* __restrict__ mvec, int* __restrict__ far) {
    constexpr int NT = GMM_FULL_NT, DP = D + 1;  // padded rows: column walks hit distinct banks
    static_assert(NT % 32 == 0, "whole warps");
    __shared__ double s_l[D * DP];                // covariance, then its elimination
    __shared__ double s_y[D * DP];                // Z = L1^-1, then L^-1
    __shared__ double s_mu[D];
    __shared__ double s_sx[D];
    __shared__ double s_inv[D];                   // 1 / sqrt(d_j) = 1 / L_jj
    __shared__ double s_total;
    const int rk = blockIdx.x, r = rk / K, t = threadIdx.x;
    const double nk = nk_raw[rk] + eps;
    if (t < 32) {  // sum of N_k + eps: warp 0, a fixed order (deterministic)
        double part = 0.0;
        for (int k = t; k < K; k += 32) part += nk_raw[r * K + k] + eps;
        part = gmm::warp_sum(part);
        if (t == 0) s_total = part;
    }
    // the mean in the data's own coordinates as scikit-learn's, (sx - eps shift) / nk (shift:
    // what the data were centred by, or null), and the covariance about it (_gaussian.py):
    // (sxx - mu sx^T - sx mu^T + nk_raw mu mu^T) / nk
    for (int d = t; d < D; d += NT) {
        const double s = sx[(size_t)rk * D + d];
        s_sx[d] = s;
        s_mu[d] = (shift == nullptr ? s : s - eps * shift[d]) / nk;
    }
    __syncthreads();
    const double n_raw = nk_raw[rk];
    for (int e = t; e < D * D; e += NT) {
        const int i = e / D, j = e - i * D;
        const double cross = s_mu[i] * s_sx[j] + s_sx[i] * s_mu[j] - n_raw * s_mu[i] * s_mu[j];
        double c = sxx[(size_t)rk * D * D + e] / nk - cross / nk;
        if (i == j) c += reg_covar;
        s_l[i * DP + j] = c;
        s_y[i * DP + j] = i == j ? 1.0 : 0.0;  // Z starts as the identity
        covariances[(size_t)rk * D * D + e] = c;
    }
    if (t == 0) weights[rk] = nk / s_total;
    for (int d = t; d < D; d += NT) means[(size_t)rk * D + d] = s_mu[d];
    __syncthreads();
    // elimination: lane tx owns columns k = j + 1 + tx (+ 32 ...), warp ty rows i = j + 1 + ty
    // (+ NT / 32 ...), lower triangle k <= i; column j is only read during step j. Z's rows below
    // j take row j (final since step j - 1) times l_ij, over every thread of the block.
    const int tx = t & 31, ty = t >> 5;
    for (int j = 0; j + 1 < D; ++j) {
        const double inv_d = 1.0 / s_l[j * DP + j];
        for (int k = j + 1 + tx; k < D; k += 32) {
            const double akj = s_l[k * DP + j] * inv_d;
            for (int i = j + 1 + ty; i < D; i += NT / 32)
                if (k <= i) s_l[i * DP + k] -= s_l[i * DP + j] * akj;
        }
        for (int e = t; e < (D - 1 - j) * (j + 1); e += NT) {  // columns 0..j of rows j+1..
            const int i = j + 1 + e / (j + 1), c = e % (j + 1);
            s_y[i * DP + c] -= s_l[i * DP + j] * inv_d * s_y[j * DP + c];
        }
        __syncthreads();
    }
    for (int j = t; j < D; j += NT) s_inv[j] = 1.0 / sqrt(s_l[j * DP + j]);
    __syncthreads();
    for (int e = t; e < D * D; e += NT) {  // Y = L^-1 = diag(1 / sqrt(d)) Z
        const int i = e / D, c = e - i * D;
        s_y[i * DP + c] *= s_inv[i];
    }
    __syncthreads();
    for (int e = t; e < D * D; e += NT) {  // U = Y^T (upper triangular)
        const int i = e / D, j = e - i * D;
        pchol[(size_t)rk * D * D + e] = s_y[j * DP + i];
    }
    if constexpr (D <= 32) {  // the tensor-core pass's operands for the next pass (or none)
        if (ufrag != nullptr) {
            __shared__ double s_b[fulltc::Geo<D>::DN];
            fulltc::write_operands<D>(rk, nk / s_total, s_mu,
                                      [&](int i, int j) { return s_y[j * DP + i]; }, s_b, ufrag,
                                      bvec, lconst, mvec, far);
        }
    }
}

// M: (D(D+1)/2 + D, RK) row-major in the data type; c: (RK,).
template <typename T, int D>
__global__ void __launch_bounds__(GMM_FULL_NT)
full_constants(const double* __restrict__ weights, const double* __restrict__ means,
               const double* __restrict__ pchol, int rk_total, T* __restrict__ M,
               T* __restrict__ c) {
    constexpr int NT = GMM_FULL_NT, DP = D + 1, NTRI = D * (D + 1) / 2;
    __shared__ double s_u[D * DP];
    __shared__ double s_p[D * DP];
    __shared__ double s_mu[D];
    __shared__ double s_pmu[D];
    const int rk = blockIdx.x, t = threadIdx.x;
    for (int e = t; e < D * D; e += NT) s_u[(e / D) * DP + e % D] = pchol[(size_t)rk * D * D + e];
    for (int d = t; d < D; d += NT) s_mu[d] = means[(size_t)rk * D + d];
    __syncthreads();
    for (int e = t; e < D * D; e += NT) {  // P = U U^T
        const int i = e / D, j = e - i * D;
        double v = 0.0;
        for (int k = 0; k < D; ++k) v += s_u[i * DP + k] * s_u[j * DP + k];
        s_p[i * DP + j] = v;
    }
    __syncthreads();
    for (int e = t; e < D * D; e += NT) {
        const int i = e / D, j = e - i * D;
        if (j < i) continue;
        const double scale = i == j ? 1.0 : 2.0;
        M[(size_t)gmmf::triu_index(i, j, D) * rk_total + rk] = (T)(-0.5 * scale * s_p[i * DP + j]);
    }
    for (int d = t; d < D; d += NT) {
        double v = 0.0;
        for (int k = 0; k < D; ++k) v += s_p[d * DP + k] * s_mu[k];
        s_pmu[d] = v;
        M[(size_t)(NTRI + d) * rk_total + rk] = (T)v;
    }
    __syncthreads();
    if (t == 0) {
        double quad = 0.0, log_det = 0.0;
        for (int d = 0; d < D; ++d) {
            quad += s_mu[d] * s_pmu[d];
            log_det += log(s_u[d * DP + d]);
        }
        c[rk] = (T)(log(weights[rk]) + log_det - 0.5 * D * 1.83787706640934548356 - 0.5 * quad);
    }
}

// ------------------------------------------------------------------------------------------------
// The fused full-covariance pass on tensor cores (float32 data, D <= 32, sm_80+): one read of X
// per EM iteration, no N x K array in global memory, both products of the pass as mma.sync
// m16n8k8 TF32 in the 3xTF32 split of tc.cuh (float32-level accuracy), statistics in float64
// across tiles. It replaces two memory-bound GEMMs over cached quadratic features (D(D+3)/2
// values per row) and the CuPy softmax between them.
//
// Grid (R * groups, blocks): block (y, x) works on restart r = y / groups (the restarts of one
// x run side by side, so a tile comes from HBM once and from L2 for the other restarts) and
// computes, for the tiles x, x + gridDim.y, ... of TM = 128 samples (one 16-sample slab per
// warp):
//   E-step  (each warp, its slab, every component k of restart r)
//           y = x U_k - mu_k U_k (the Cholesky-precision form of scikit-learn, no expanded
//           quadratic form), U_k upper triangular so only the NTD(NTD+1)/2 (k-step, n-tile)
//           blocks with k-step <= n-tile are multiplied; for a component far from the data
//           mean in its own units (|mu_k U_k|^2 > GMM_FULL_TC_GUARD) y = (x - mu_k) U_k instead,
//           whose products do not cancel; log2 w_k N(x | k) = c_k - log2(e)/2 |y|^2 into shared
//           memory.
//   softmax (each warp, its slab) log-sum-exp over k, responsibilities into shared memory.
//   -- block barrier (one per tile; tiles are double-buffered) --
//   M-step statistics (each warp, components grp * 16 + w and grp * 16 + w + 8 of restart r,
//           every slab of the tile), about the component's current mean m_k (float32):
//           S2_k += (r_k (x - m_k))^T (x - m_k) on the upper (m-tile, n-tile) blocks, A operand
//           formed and split in registers; sum r (x - m_k) and N_k from the same products in
//           float32 registers. Centred sums keep float32 products accurate for components far
//           from the data mean (uncentred second moments lose (|m_k| / sigma_k)^2 digits to the
//           cancellation in the covariance).
// U_k's fragments sit in shared memory (USM) or, for more components than it holds, are read
// through L1 from global memory.
// float32 sums over GMM_FULL_TC_FLUSH tiles are added to float64 accumulators (S2: per warp in
// shared memory, in fragment order; the others in registers). A block turns its centred sums
// into raw ones in float64 (sum r x = S1 + N m, sum r x x^T = S2 + m S1^T + S1 m^T + N m m^T:
// linear, so the blocks' sums add up) and writes, per grid row x, float64:
//   [N_k (RK)][sum r x (RK, D)][sum r x x^T (RK, D, D), both triangles][log-likelihood (R)]
// (every group its components' statistics, group 0 the log-likelihood); reduce_partials
// (em_diag.cu) sums the rows.

// Measured on an H200 (benchmarks/tune_full.py, 1M x 32, K=16): flushing every 1 / 4 / 16
// tiles 1.15 / 1.09 / 1.07 ms per pass; one accumulator per 3xTF32 product in the E-step (three
// independent mma chains instead of one) 1.10 ms: the dependent chains are not what limits it.
#ifndef GMM_FULL_TC_FLUSH
#define GMM_FULL_TC_FLUSH 4  // tiles (of 128 samples) summed in float32
#endif
// GMM_FULL_TC_STATS2 (a tuning define, off): the S2 GEMM in 2 TF32 products instead of 3, its
// B operand x - m_k rounded to TF32 (the A operand r (x - m_k) stays split). Measured on an H200
// (benchmarks/results/tune_stats2_h200.log): full 1M x 32, K=16 1.128 -> 1.005 ms per
// iteration; a 20-iteration fit against scikit-learn float64 1.2e-6 nats per sample as with 3
// products, but variances 9e-6 relative (3e-6), and the pass's statistics off by 2.4e-5 of
// their largest entry on 2,500 rows (tests/gpu/test_fused_kernels.py, bound 2e-5): the
// rounding errors shrink only as 1/sqrt(N), and m_k is the current estimate, not the
// component's mean, so x - m_k is not centred early on.
#ifndef GMM_FULL_TC_STATS2
#define GMM_FULL_TC_STATS2 0
#endif

// The pass's operands (fulltc::write_operands) of every (restart, component) from its
// parameters, one block each: the first pass of a fit (full_mstep writes them for the next).
template <int D>
__global__ void __launch_bounds__(GMM_FULL_NT)
full_tc_params(const double* __restrict__ weights, const double* __restrict__ means,
               const double* __restrict__ pchol, float2* __restrict__ ufrag,
               float* __restrict__ bvec, float* __restrict__ lconst, float* __restrict__ mvec,
               int* __restrict__ far) {
    __shared__ double s_b[fulltc::Geo<D>::DN];
    const int rk = blockIdx.x;
    const double* u = pchol + (size_t)rk * D * D;
    fulltc::write_operands<D>(rk, weights[rk], means + (size_t)rk * D,
                              [u](int i, int j) { return u[i * D + j]; }, s_b, ufrag, bvec,
                              lconst, mvec, far);
}

// Dynamic shared memory (bytes) of full_pass_tc<D, USM> for K components (the launcher mirrors
// it). USM: the E-step's U fragments in shared memory (else read through L1 from global memory,
// for more components than shared memory holds).
template <int D> __host__ __device__ constexpr size_t full_tc_smem(int K, bool usm) {
    using G = fulltc::Geo<D>;
    const int KP = K | 1, K4 = (K + 3) & ~3;
    return sizeof(double) * ((size_t)fulltc::NW * fulltc::CW * G::NFRAG * 4 * 32 + fulltc::NW) +
           sizeof(float) * ((usm ? (size_t)K * G::NPAIR * 64 : 0) + (size_t)K * G::DN +
                            (size_t)K * G::DM +
                            2 * (size_t)K4 + 2 * (size_t)fulltc::TM * G::XS +
                            2 * (size_t)fulltc::TM * KP);
}

// WEIGHTED: every sample's responsibilities and log-likelihood are multiplied by its weight
// sample_weight[n] (the unweighted variant never reads it: pass nullptr). active: (R,) int32,
// restarts whose statistics are computed (null: every restart); the others' are zeros.
template <int D, bool USM, bool WEIGHTED = false>
__global__ void __launch_bounds__(fulltc::NT, 1)
full_pass_tc(const float* __restrict__ X, long long n_samples, int n_components,
             const float2* __restrict__ ufrag, const float* __restrict__ bvec,
             const float* __restrict__ lconst, const float* __restrict__ mvec,
             const int* __restrict__ far, int pstride, double* __restrict__ partial,
             const float* __restrict__ sample_weight, const int* __restrict__ active) {
    using G = fulltc::Geo<D>;
    constexpr int NT = fulltc::NT, NW = fulltc::NW, SLAB = fulltc::SLAB, TM = fulltc::TM;
    constexpr int CW = fulltc::CW, NTD = G::NTD, DN = G::DN, MTD = G::MTD, DM = G::DM;
    constexpr int XS = G::XS, NPAIR = G::NPAIR, NFRAG = G::NFRAG;
    constexpr float L2E = 1.4426950408889634f, HL2E = 0.5f * L2E;
    constexpr unsigned FULL = 0xffffffffu;
    const int K = n_components, KP = K | 1, K4 = (K + 3) & ~3;
    const int groups = (K + fulltc::GROUP - 1) / fulltc::GROUP;
    const int r = blockIdx.x / groups, grp = blockIdx.x % groups, R = gridDim.x / groups;
    const int t = threadIdx.x, lane = t & 31, w = t >> 5, g = lane >> 2, q = lane & 3;

    extern __shared__ __align__(16) unsigned char smem[];
    double* s_acc = reinterpret_cast<double*>(smem);              // NW CW NFRAG 4 32
    double* s_ll = s_acc + NW * CW * NFRAG * 4 * 32;              // NW
    float2* s_u = reinterpret_cast<float2*>(s_ll + NW);           // K NPAIR 32 (USM)
    float* s_b = reinterpret_cast<float*>(s_u + (USM ? K * NPAIR * 32 : 0));  // K DN
    float* s_m = s_b + K * DN;                                     // K DM
    float* s_c = s_m + K * DM;                                     // K (padded to 4)
    int* s_far = reinterpret_cast<int*>(s_c + K4);                 // K (padded to 4)
    float* s_x = reinterpret_cast<float*>(s_far + K4);             // 2 TM XS
    float* s_r = s_x + 2 * TM * XS;                                // 2 TM KP

    const int rk0 = r * K;
    if constexpr (USM)
        for (int i = t; i < K * NPAIR * 32; i += NT) s_u[i] = ufrag[(size_t)rk0 * NPAIR * 32 + i];
    for (int i = t; i < K * DN; i += NT) s_b[i] = bvec[(size_t)rk0 * DN + i];
    for (int i = t; i < K * DM; i += NT) s_m[i] = mvec[(size_t)rk0 * DM + i];
    for (int i = t; i < K; i += NT) {
        s_c[i] = lconst[rk0 + i];
        s_far[i] = far[rk0 + i];
    }
    for (int i = t; i < NW * CW * NFRAG * 4 * 32; i += NT) s_acc[i] = 0.0;
    for (int i = t; i < 2 * TM * XS; i += NT) s_x[i] = 0.0f;  // padding columns stay zero
    __syncthreads();

    // this warp's M-step components (warp-uniform) and their centres at its features
    int mk[CW];
    bool mon[CW];
    float cv[CW][2 * MTD];  // m_k[8 nt + g]
#pragma unroll
    for (int c = 0; c < CW; ++c) {
        mk[c] = grp * fulltc::GROUP + w + NW * c;
        mon[c] = mk[c] < K;
#pragma unroll
        for (int nt = 0; nt < 2 * MTD; ++nt) cv[c][nt] = mon[c] ? s_m[mk[c] * DM + 8 * nt + g] : 0.0f;
    }
    float acc[CW][NFRAG][4], s1[CW][MTD][2], nkf[CW];
    double s1d[CW][MTD][2], nkd[CW];
#pragma unroll
    for (int c = 0; c < CW; ++c) {
        nkf[c] = 0.0f;
        nkd[c] = 0.0;
#pragma unroll
        for (int f = 0; f < NFRAG; ++f)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[c][f][i] = 0.0f;
#pragma unroll
        for (int mt = 0; mt < MTD; ++mt) {
            s1[c][mt][0] = s1[c][mt][1] = 0.0f;
            s1d[c][mt][0] = s1d[c][mt][1] = 0.0;
        }
    }
    double ll = 0.0;  // log2 units
    auto flush = [&]() {
#pragma unroll
        for (int c = 0; c < CW; ++c) {
            double* a = s_acc + (size_t)(w * CW + c) * NFRAG * 4 * 32 + lane;
#pragma unroll
            for (int f = 0; f < NFRAG; ++f)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    a[(f * 4 + i) * 32] += (double)acc[c][f][i];
                    acc[c][f][i] = 0.0f;
                }
#pragma unroll
            for (int mt = 0; mt < MTD; ++mt)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    s1d[c][mt][h] += (double)s1[c][mt][h];
                    s1[c][mt][h] = 0.0f;
                }
            nkd[c] += (double)nkf[c];
            nkf[c] = 0.0f;
        }
    };

    const long long n_tiles = (n_samples + TM - 1) / TM;
    const long long tstep = gridDim.y;
    // a restart that stopped iterating (active[r] == 0; null: all iterate) reads no tiles: its
    // partial is zeros, its M-step result is discarded by the loop (em_update)
    long long tile = active != nullptr && !active[r] ? n_tiles : (long long)blockIdx.y;
    float pre[G::LPL];
    auto fetch = [&](long long tl) {  // this warp's slab of tile tl (zeros past the end)
        const long long base = (tl * TM + w * SLAB) * D, end = n_samples * D;
#pragma unroll
        for (int i = 0; i < G::LPL; ++i) {
            const int e = lane + 32 * i;
            pre[i] = 0.0f;
            if (e < SLAB * D && tl < n_tiles && base + e < end) pre[i] = __ldg(X + base + e);
        }
    };
    auto store = [&](int b) {
        float* xs = s_x + b * TM * XS + w * SLAB * XS;
#pragma unroll
        for (int i = 0; i < G::LPL; ++i) {
            const int e = lane + 32 * i;
            if (e < SLAB * D) xs[(e / D) * XS + e % D] = pre[i];
        }
    };
    int buf = 0, since_flush = 0;
    fetch(tile);
    store(0);
    fetch(tile + tstep);
    for (; tile < n_tiles; tile += tstep) {
        __syncwarp();  // this warp's stores of its slab are visible to all its lanes
        // -- E-step: this warp's slab, every component of restart r --------------------------------
        const float* xw = s_x + buf * TM * XS + w * SLAB * XS;
        float* lw = s_r + buf * TM * KP + w * SLAB * KP;
        unsigned ah[NTD][4], al[NTD][4];
#pragma unroll
        for (int ks = 0; ks < NTD; ++ks) {
            const int o = g * XS + 8 * ks + q;
            tc::split(xw[o], ah[ks][0], al[ks][0]);
            tc::split(xw[o + 8 * XS], ah[ks][1], al[ks][1]);
            tc::split(xw[o + 4], ah[ks][2], al[ks][2]);
            tc::split(xw[o + 8 * XS + 4], ah[ks][3], al[ks][3]);
        }
#pragma unroll 1
        for (int k = 0; k < K; ++k) {
            float y[NTD][4];
#pragma unroll
            for (int nt = 0; nt < NTD; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) y[nt][i] = 0.0f;
            const float2* uk =
                (USM ? s_u : ufrag + (size_t)rk0 * NPAIR * 32) + k * NPAIR * 32 + lane;
            // y += A U_k over the blocks of upper-triangular U_k (A split into ha, la)
            auto times_u = [&](const unsigned (&ha)[NTD][4], const unsigned (&la)[NTD][4]) {
#pragma unroll
                for (int nt = 0; nt < NTD; ++nt)
#pragma unroll
                    for (int ks = 0; ks <= nt; ++ks) {
                        const int pu = (nt * (nt + 1) / 2 + ks) * 32;
                        float2 u;
                        if constexpr (USM) u = uk[pu];
                        else u = __ldg(uk + pu);
                        unsigned bh0, bl0, bh1, bl1;
                        tc::split(u.x, bh0, bl0);
                        tc::split(u.y, bh1, bl1);
                        tc::mma3(y[nt], ha[ks], la[ks], bh0, bh1, bl0, bl1);
                    }
            };
            const bool centred = s_far[k] != 0;  // warp-uniform
            if (!centred) {
                times_u(ah, al);
            } else {  // y = (x - mu_k) U_k
                const float* mu = s_m + k * DM;
                unsigned ch[NTD][4], cl[NTD][4];
#pragma unroll
                for (int ks = 0; ks < NTD; ++ks) {
                    const int o = g * XS + 8 * ks + q;
                    const float m0 = mu[8 * ks + q], m1 = mu[8 * ks + q + 4];
                    tc::split(xw[o] - m0, ch[ks][0], cl[ks][0]);
                    tc::split(xw[o + 8 * XS] - m0, ch[ks][1], cl[ks][1]);
                    tc::split(xw[o + 4] - m1, ch[ks][2], cl[ks][2]);
                    tc::split(xw[o + 8 * XS + 4] - m1, ch[ks][3], cl[ks][3]);
                }
                times_u(ch, cl);
            }
            float m0 = 0.0f, m1 = 0.0f;  // |y|^2 of samples g and g + 8, this lane's columns
#pragma unroll
            for (int nt = 0; nt < NTD; ++nt) {
                float2 b = make_float2(0.0f, 0.0f);
                if (!centred) b = *reinterpret_cast<const float2*>(s_b + k * DN + 8 * nt + 2 * q);
                float v = y[nt][0] - b.x;
                m0 = fmaf(v, v, m0);
                v = y[nt][1] - b.y;
                m0 = fmaf(v, v, m0);
                v = y[nt][2] - b.x;
                m1 = fmaf(v, v, m1);
                v = y[nt][3] - b.y;
                m1 = fmaf(v, v, m1);
            }
            m0 += __shfl_xor_sync(FULL, m0, 1);
            m0 += __shfl_xor_sync(FULL, m0, 2);
            m1 += __shfl_xor_sync(FULL, m1, 1);
            m1 += __shfl_xor_sync(FULL, m1, 2);
            if (q == 0) {
                lw[g * KP + k] = s_c[k] - HL2E * m0;
                lw[(g + 8) * KP + k] = s_c[k] - HL2E * m1;
            }
        }
        __syncwarp();
        // -- log-sum-exp and responsibilities: two lanes per sample ----------------------------
        {
            const int n = lane >> 1, h = lane & 1;
            float* row = lw + n * KP;
            float mx = __int_as_float(0xff800000);
            for (int k = h; k < K; k += 2) mx = fmaxf(mx, row[k]);
            mx = fmaxf(mx, __shfl_xor_sync(FULL, mx, 1));
            float sm = 0.0f;
            for (int k = h; k < K; k += 2) {
                const float e = tc::ex2(row[k] - mx);
                row[k] = e;
                sm += e;
            }
            sm += __shfl_xor_sync(FULL, sm, 1);
            const long long sample = tile * TM + w * SLAB + n;
            const bool valid = sample < n_samples;
            float wn = 1.0f;
            if constexpr (WEIGHTED)
                if (valid) wn = __ldg(sample_weight + sample);
            const float inv = valid ? __fdividef(wn, sm) : 0.0f;
            for (int k = h; k < K; k += 2) row[k] *= inv;
            if (valid && h == 0)
                ll += WEIGHTED ? (double)wn * (double)(mx + tc::lg2(sm)) : (double)(mx + tc::lg2(sm));
        }
        __syncthreads();  // this tile's responsibilities complete; the previous M-step done
        store(buf ^ 1);   // the next tile's slab, read by this warp's next E-step
        fetch(tile + 2 * tstep);

        // -- M-step statistics about m_k: this warp's components over the tile's slabs ---------
        const float* xt = s_x + buf * TM * XS;
        const float* rt = s_r + buf * TM * KP;
#pragma unroll 1
        for (int s = 0; s < NW; ++s) {
#pragma unroll
            for (int ks = 0; ks < 2; ++ks) {
                const int n0 = s * SLAB + 8 * ks + q;  // samples n0 and n0 + 4 of this lane
                float xv[2][2 * MTD];                  // x[n0 + 4 h][8 nt + g]
#pragma unroll
                for (int h = 0; h < 2; ++h)
#pragma unroll
                    for (int nt = 0; nt < 2 * MTD; ++nt) xv[h][nt] = xt[(n0 + 4 * h) * XS + 8 * nt + g];
#pragma unroll
                for (int c = 0; c < CW; ++c) {
                    if (!mon[c]) continue;  // warp-uniform
                    const float r0 = rt[n0 * KP + mk[c]], r1 = rt[(n0 + 4) * KP + mk[c]];
                    float xc[2][2 * MTD];  // x - m_k
#pragma unroll
                    for (int h = 0; h < 2; ++h)
#pragma unroll
                        for (int nt = 0; nt < 2 * MTD; ++nt) xc[h][nt] = xv[h][nt] - cv[c][nt];
                    unsigned bh[NTD][2], bl[NTD][2];
#pragma unroll
                    for (int nt = 0; nt < NTD; ++nt) {
                        if (GMM_FULL_TC_STATS2) {
                            bh[nt][0] = __float_as_uint(tc::round_tf32(xc[0][nt]));
                            bh[nt][1] = __float_as_uint(tc::round_tf32(xc[1][nt]));
                            bl[nt][0] = bl[nt][1] = 0u;
                        } else {
                            tc::split(xc[0][nt], bh[nt][0], bl[nt][0]);
                            tc::split(xc[1][nt], bh[nt][1], bl[nt][1]);
                        }
                    }
                    nkf[c] += r0 + r1;
#pragma unroll
                    for (int mt = 0; mt < MTD; ++mt) {
                        const float v[4] = {r0 * xc[0][2 * mt], r0 * xc[0][2 * mt + 1],
                                            r1 * xc[1][2 * mt], r1 * xc[1][2 * mt + 1]};
                        s1[c][mt][0] += v[0] + v[2];
                        s1[c][mt][1] += v[1] + v[3];
                        unsigned ah2[4], al2[4];
#pragma unroll
                        for (int i = 0; i < 4; ++i) tc::split(v[i], ah2[i], al2[i]);
#pragma unroll
                        for (int nt = 2 * mt; nt < NTD; ++nt) {
                            float(&a)[4] = acc[c][G::frag_base(mt) + nt - 2 * mt];
                            if (GMM_FULL_TC_STATS2) {
                                tc::mma(a, al2, bh[nt][0], bh[nt][1]);
                                tc::mma(a, ah2, bh[nt][0], bh[nt][1]);
                            } else {
                                tc::mma3(a, ah2, al2, bh[nt][0], bh[nt][1], bl[nt][0], bl[nt][1]);
                            }
                        }
                    }
                }
            }
        }
        if (++since_flush == GMM_FULL_TC_FLUSH) {
            flush();
            since_flush = 0;
        }
        buf ^= 1;
    }
    flush();
    const double wll = gmm::warp_sum(ll);
    if (lane == 0) s_ll[w] = wll;
    __syncthreads();  // every M-step done: s_x is free for the write-out below

    // block partial (raw sums from the centred ones): this group's statistics, restart r's
    // log-likelihood (group 0)
    double* out = partial + (size_t)blockIdx.y * pstride;
    double* s_w = reinterpret_cast<double*>(s_x) + w * CW * (1 + DM);  // this warp's N, S1
    const int RK = R * K;
#pragma unroll
    for (int c = 0; c < CW; ++c) {
        if (!mon[c]) continue;
        double v = nkd[c];
        v += __shfl_xor_sync(FULL, v, 1);
        v += __shfl_xor_sync(FULL, v, 2);
        if (lane == 0) s_w[c * (1 + DM)] = v;
#pragma unroll
        for (int mt = 0; mt < MTD; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                double sv = s1d[c][mt][h];
                sv += __shfl_xor_sync(FULL, sv, 1);
                sv += __shfl_xor_sync(FULL, sv, 2);
                if (q == 0) s_w[c * (1 + DM) + 1 + 16 * mt + 8 * h + g] = sv;
            }
    }
    __syncwarp();
#pragma unroll
    for (int c = 0; c < CW; ++c) {
        if (!mon[c]) continue;
        const int rk = rk0 + mk[c];
        const double nk = s_w[c * (1 + DM)];
        const double* s1c = s_w + c * (1 + DM) + 1;
        const float* m = s_m + mk[c] * DM;
        if (lane == 0) out[rk] = nk;
        for (int d = lane; d < D; d += 32) out[RK + (size_t)rk * D + d] = s1c[d] + nk * (double)m[d];
        const double* a = s_acc + (size_t)(w * CW + c) * NFRAG * 4 * 32 + lane;
        double* sxx = out + RK + (size_t)RK * D + (size_t)rk * D * D;
#pragma unroll
        for (int mt = 0; mt < MTD; ++mt)
#pragma unroll
            for (int nt = 2 * mt; nt < NTD; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int row = 16 * mt + g + 8 * (i >> 1), col = 8 * nt + 2 * q + (i & 1);
                    if (row < D && col < D && col >= row) {
                        const double mr = m[row], mc = m[col];
                        const double sv = a[((G::frag_base(mt) + nt - 2 * mt) * 4 + i) * 32] +
                                          mr * s1c[col] + s1c[row] * mc + nk * mr * mc;
                        sxx[row * D + col] = sv;
                        sxx[col * D + row] = sv;
                    }
                }
    }
    if (grp == 0 && t == 0) {
        double v = 0.0;
        for (int ww = 0; ww < NW; ++ww) v += s_ll[ww];
        out[(size_t)RK * (1 + D + D * D) + r] = v * 0.6931471805599453;
    }
}
