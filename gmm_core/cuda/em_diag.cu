// Fused EM for diagonal and spherical covariances, every restart in one pass over the data.
//
// Per iteration:
//   diag_pass    : one read of X. For a tile of samples a block computes, for every restart r and
//                  component k, log w_k + log N(x | k), the log-sum-exp over k, the
//                  responsibilities (kept in shared memory, never written to global memory) and
//                  the sufficient statistics [nk, sum r x, sum r x^2 (diag) | sum r |x|^2
//                  (spherical)] accumulated per thread: float (the data dtype) inside a tile,
//                  float64 across tiles. A block writes one float64 partial; no atomics.
//   reduce_partials : sums the block partials (float64) into the statistics (for small problems
//                  the last block of diag_pass does it instead, saving a launch).
//   diag_mstep   : the M-step of scikit-learn (one block per restart) and the convergence test
//                  of the estimator's loop, on the device, so whole iterations can be captured
//                  in a CUDA graph. For small problems the pass's last block runs both the
//                  reduction and the M-step: one launch per EM iteration.
//   diag_em_small : (small problems, one restart) many whole EM iterations in one launch, the
//                  blocks ordered by flags in global memory instead of kernel boundaries.
//   reduce_exchange_mstep : (several GPUs) the reduction, the sum over every device's shard
//                  through peer memory, and the M-step, on the devices.
//
// Parameters are stored per (restart, component) row as interleaved pairs (s_d, -mu_d * s_d)
// with s_d = precision_cholesky_d / sqrt(2), so that
//   log w + log N(x) = c - sum_d (x_d * s_d - mu_d * s_d)^2,  c = log w + sum_d log pc_d - D/2 log 2pi
// which costs two FMAs per feature and keeps float32 accurate (no expanded quadratic form).

#include "tc.cuh"

#ifndef GMM_NT
#define GMM_NT 256
#endif

namespace gmm {

template <typename T> struct Num;
template <> struct Num<float> {
    static __device__ __forceinline__ float exp_(float x) { return __expf(x); }
    static __device__ __forceinline__ float log_(float x) { return __logf(x); }
    static __device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }
    static __device__ __forceinline__ void load4(const float* p, float& a, float& b, float& c,
                                                 float& d) {
        const float4 v = *reinterpret_cast<const float4*>(p);
        a = v.x; b = v.y; c = v.z; d = v.w;
    }
    static __device__ __forceinline__ void store4(float* p, float a, float b, float c, float d) {
        *reinterpret_cast<float4*>(p) = make_float4(a, b, c, d);
    }
};
template <> struct Num<double> {
    static __device__ __forceinline__ double exp_(double x) { return exp(x); }
    static __device__ __forceinline__ double log_(double x) { return log(x); }
    static __device__ __forceinline__ double neg_inf() {
        return __longlong_as_double(0xfff0000000000000ULL);
    }
    static __device__ __forceinline__ void load4(const double* p, double& a, double& b, double& c,
                                                 double& d) {
        const double2 v0 = *reinterpret_cast<const double2*>(p);
        const double2 v1 = *reinterpret_cast<const double2*>(p + 2);
        a = v0.x; b = v0.y; c = v1.x; d = v1.y;
    }
    static __device__ __forceinline__ void store4(double* p, double a, double b, double c,
                                                  double d) {
        *reinterpret_cast<double2*>(p) = make_double2(a, b);
        *reinterpret_cast<double2*>(p + 2) = make_double2(c, d);
    }
};

__host__ __device__ constexpr int round4(int n) { return (n + 3) / 4 * 4; }

// Row layouts shared with the Python launcher (gmm_core/_cupy/diag_common.py mirrors them).
template <int D, bool SPHERICAL> struct Layout {
    static constexpr int Q = SPHERICAL ? 1 : D;   // quadratic statistic columns
    static constexpr int C = 1 + D + Q;           // statistic columns: nk | sum r x | quadratic
    static constexpr int XS = round4(D + Q);      // x-tile row: x_0..x_{D-1}, quadratic, padding
    static constexpr int PS = round4(2 * D);      // parameter row: (s_d, -mu_d s_d) pairs
};

}  // namespace gmm

// sum_{b = b0, b0 + step, ... < n_blocks} partial[b * stride + j], U loads in flight
// (L2 reads: other blocks wrote these values during this launch)
template <int U>
__device__ __forceinline__ double sum_strided(const double* partial, int j, int stride, int b0,
                                              int step, int n_blocks) {
    double v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = 0.0;
    int b = b0;
    for (; b + (U - 1) * step < n_blocks; b += U * step) {
#pragma unroll
        for (int u = 0; u < U; ++u) v[u] += __ldcg(partial + (size_t)(b + u * step) * stride + j);
    }
    for (; b < n_blocks; b += step) v[0] += __ldcg(partial + (size_t)b * stride + j);
#pragma unroll
    for (int u = 1; u < U; ++u) v[0] += v[u];
    return v[0];
}

// sum_d (x_d s_d - mu_d s_d)^2 for one parameter row, in two independent FMA chains
template <typename T, int D>
__device__ __forceinline__ T sq_dist(const T (&x)[D], const T* __restrict__ p) {
    using N = gmm::Num<T>;
    T a = T(0), b = T(0);
#pragma unroll
    for (int d = 0; d + 1 < D; d += 2) {
        T s0, m0, s1, m1;
        N::load4(p + 2 * d, s0, m0, s1, m1);
        const T y0 = fma(x[d], s0, m0);
        const T y1 = fma(x[d + 1], s1, m1);
        a = fma(y0, y0, a);
        b = fma(y1, y1, b);
    }
    if (D & 1) {
        const T y = fma(x[D - 1], p[2 * (D - 1)], p[2 * (D - 1) + 1]);
        a = fma(y, y, a);
    }
    return a + b;
}

// running log-sum-exp: (mx, sum) with sum = sum_k exp(lp_k - mx)
template <typename T>
__device__ __forceinline__ void online_lse(T lp, T& mx, T& sum) {
    using N = gmm::Num<T>;
    if (lp > mx) {
        sum = fma(sum, N::exp_(mx - lp), T(1));
        mx = lp;
    } else {
        sum += N::exp_(lp - mx);
    }
}

// ------------------------------------------------------------------------------------------------
// Kernel parameters of one component from (weight, mean, precision Cholesky factor).
template <typename T, int D, bool SPHERICAL>
__device__ __forceinline__ void write_kernel_params(double weight, const double* mean,
                                                    const double* pc, T* prm_row, T* lc) {
    constexpr int PS = gmm::Layout<D, SPHERICAL>::PS;
    const double inv_sqrt2 = 0.70710678118654752440;
    double log_det = 0.0;
#pragma unroll
    for (int d = 0; d < D; ++d) {
        const double p = SPHERICAL ? pc[0] : pc[d];
        const double s = p * inv_sqrt2;
        prm_row[2 * d] = (T)s;
        prm_row[2 * d + 1] = (T)(-mean[d] * s);
        log_det += log(p);
    }
    for (int i = 2 * D; i < PS; ++i) prm_row[i] = T(0);
    *lc = (T)(log(weight) + log_det - 0.5 * D * 1.83787706640934548356);  // log(2 pi)
}

// ------------------------------------------------------------------------------------------------
// M-step + convergence bookkeeping of the estimator's loop for one restart, by one block.
// stats: (R, K, C) then ll (R), as reduce_partials leaves them.
// state (int32, per restart): active, converged, n_iter, failed; history is (R, max_iter).
template <typename T> struct MStepArgs {
    double *weights, *means, *covariances, *pchol;
    T *kparams, *log_const;
    double *bound, *history;
    int *active, *converged, *n_iter, *failed;
    double reg_covar, eps, tol;
    int max_iter;
    double weight_sum;  // what the lower bound divides the log-likelihood by (N unweighted)
    const double* shift;  // (D,) what the data were centred by (the means' eps term), or null
};

// the same arguments as a table of 18 words (pointers, then doubles and ints bit for bit), so a
// kernel can take them as one pointer; the launcher (gmm_core/_cupy/loop.py) writes it
template <typename T> __device__ MStepArgs<T> load_mstep_args(const unsigned long long* w) {
    MStepArgs<T> a;
    a.weights = reinterpret_cast<double*>(w[0]);
    a.means = reinterpret_cast<double*>(w[1]);
    a.covariances = reinterpret_cast<double*>(w[2]);
    a.pchol = reinterpret_cast<double*>(w[3]);
    a.kparams = reinterpret_cast<T*>(w[4]);
    a.log_const = reinterpret_cast<T*>(w[5]);
    a.bound = reinterpret_cast<double*>(w[6]);
    a.history = reinterpret_cast<double*>(w[7]);
    a.active = reinterpret_cast<int*>(w[8]);
    a.converged = reinterpret_cast<int*>(w[9]);
    a.n_iter = reinterpret_cast<int*>(w[10]);
    a.failed = reinterpret_cast<int*>(w[11]);
    a.reg_covar = __longlong_as_double((long long)w[12]);
    a.eps = __longlong_as_double((long long)w[13]);
    a.tol = __longlong_as_double((long long)w[14]);
    a.max_iter = (int)w[15];
    a.weight_sum = __longlong_as_double((long long)w[16]);
    a.shift = reinterpret_cast<const double*>(w[17]);
    return a;
}

// The M-step's per-component work runs one lane per (component, feature) (the fused passes
// take D <= 32, MAX_FUSED_FEATURES in gmm_core/_cupy/diag_common.py). One thread per component,
// as before 2026-12-04, ran each component's D divisions, square roots and float64 logs in
// sequence on K of the block's threads, and one thread summed N_k over the components from
// global memory: 25 us of the telemetry iteration's 1.2 ms on an H200 (ncu, base clocks).
namespace gmm {
// lanes per component in the M-step: D rounded up to a power of two (D <= 32)
__host__ __device__ constexpr int mstep_lanes(int d) {
    return d <= 1 ? 1 : d <= 2 ? 2 : d <= 4 ? 4 : d <= 8 ? 8 : d <= 16 ? 16 : 32;
}
// sum over aligned groups of G lanes (G a power of two); every lane of a group gets the same
// bits (each butterfly step adds the same two values, and addition commutes)
template <int G> __device__ __forceinline__ double group_sum(double v) {
#pragma unroll
    for (int off = G / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}
template <int G> __device__ __forceinline__ int group_or(int v) {
#pragma unroll
    for (int off = G / 2; off > 0; off >>= 1) v |= __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}
}  // namespace gmm

// The M-step of one restart's components, one lane per (component, feature): lane group of
// G = mstep_lanes(D) lanes per component (lanes d >= D idle), warps striding over the groups.
// scikit-learn's formulas (as write_kernel_params writes a component's kernel parameters);
// per-component sums (|mu|^2 of spherical, log det) are butterfly sums over the group. Called
// by every thread of the block.
template <typename T, int D, bool SPHERICAL>
__device__ __forceinline__ void mstep_components_lanes(int r, int K, const double* st,
                                                       const MStepArgs<T>& a, double total) {
    using L = gmm::Layout<D, SPHERICAL>;
    constexpr int C = L::C, PS = L::PS, G = gmm::mstep_lanes(D);
    static_assert(D <= 32, "one lane per feature");
    const int lane = threadIdx.x & 31, d = lane & (G - 1);
    const bool feat = d < D;
    const double inv_sqrt2 = 0.70710678118654752440;
    // i0 is warp-uniform: every lane of a warp runs the same iterations (full-mask shuffles)
    for (int i0 = threadIdx.x & ~31; i0 < K * G; i0 += blockDim.x) {
        const int k = (i0 + lane) / G;
        const bool on = k < K, use = on && feat;
        const double* sk = st + (size_t)(on ? k : 0) * C;
        const double n_raw = sk[0], nk = n_raw + a.eps;
        const double sxd = use ? sk[1 + d] : 0.0;
        // scikit-learn's mean in the data's own coordinates, (sx - eps shift) / nk, and the
        // variance about it, (sxx - mu (2 sx - n_raw mu)) / nk (the host M-step's, _gaussian.py)
        const double mu = use ? (a.shift == nullptr ? sxd : sxd - a.eps * a.shift[d]) / nk : 0.0;
        const double cross = mu * (2.0 * sxd - n_raw * mu) / nk;
        double var;
        // a variance the second moments leave below 0 by rounding is 0 (then + reg_covar), as
        // the host M-step (_gaussian.py) takes it; NaN stays NaN (the check below fails it)
        if (SPHERICAL) {
            const double m2 = gmm::group_sum<G>(cross);
            const double v = (sk[1 + D] / nk - m2) / D;
            var = (v < 0.0 ? 0.0 : v) + a.reg_covar;
        } else {
            const double v = use ? sk[1 + D + d] / nk - cross : 0.0;
            var = (v < 0.0 ? 0.0 : v) + a.reg_covar;
        }
        const double pc = 1.0 / sqrt(var);
        const int bad = gmm::group_or<G>(use && !(var > 0.0));
        const double log_det = gmm::group_sum<G>(use ? log(pc) : 0.0);
        if (!on) continue;  // no shuffle below
        if (bad) {
            if (d == 0) {
                a.failed[r] = 1;  // the host raises scikit-learn's ill-defined-covariance error
                a.active[r] = 0;  // and no later iteration (graph step, small-kernel step) runs
            }
            continue;
        }
        const size_t rk = (size_t)r * K + k;
        T* prm = a.kparams + rk * PS;
        if (feat) {
            a.means[rk * D + d] = mu;
            if (!SPHERICAL) {
                a.covariances[rk * D + d] = var;
                a.pchol[rk * D + d] = pc;
            }
            const double s = pc * inv_sqrt2;
            prm[2 * d] = (T)s;
            prm[2 * d + 1] = (T)(-mu * s);
        }
        if (d == 0) {
            const double w = nk / total;
            a.weights[rk] = w;
            if (SPHERICAL) {
                a.covariances[rk] = var;
                a.pchol[rk] = pc;
            }
            for (int j = 2 * D; j < PS; ++j) prm[j] = T(0);
            a.log_const[rk] = (T)(log(w) + log_det - 0.5 * D * 1.83787706640934548356);
        }
    }
}

template <typename T, int D, bool SPHERICAL>
__device__ void mstep_restart(int r, int R, int K, const double* stats, const MStepArgs<T>& a) {
    constexpr int C = gmm::Layout<D, SPHERICAL>::C;
    const int t = threadIdx.x;
    __shared__ int s_go;
    __shared__ double s_total;
    __syncthreads();
    if (t == 0) s_go = a.active[r] && a.n_iter[r] < a.max_iter;
    __syncthreads();
    if (!s_go) return;

    const double* st = stats + (size_t)r * K * C;
    const double new_bound = stats[(size_t)R * K * C + r] / a.weight_sum;
    if (t < 32) {  // sum of N_k + eps: warp 0, a fixed order (deterministic)
        double part = 0.0;
        for (int k = t; k < K; k += 32) part += st[k * C] + a.eps;
        part = gmm::warp_sum(part);
        if (t == 0) s_total = part;
    }
    __syncthreads();
    mstep_components_lanes<T, D, SPHERICAL>(r, K, st, a, s_total);
    if (t == 0) {
        const int it = a.n_iter[r];
        const double change = new_bound - a.bound[r];
        a.bound[r] = new_bound;
        a.history[(size_t)r * a.max_iter + it] = new_bound;
        a.n_iter[r] = it + 1;
        if (fabs(change) < a.tol) {
            a.converged[r] = 1;
            a.active[r] = 0;
        } else if (it + 1 >= a.max_iter) {
            a.active[r] = 0;  // out of iterations, not converged
        }
    }
    __syncthreads();
}

#ifndef GMM_TAIL_LOADS
#define GMM_TAIL_LOADS 16  // loads in flight per thread in the tail's reduction
#endif

// ------------------------------------------------------------------------------------------------
// Tail of a pass launched with a counter: the last block to finish sums every block's partial
// into stats_out and, inside the device EM loop (MSTEP), runs the M-step too: one launch per EM
// iteration. s_red: NT doubles of shared memory. Called by every thread of the block (NT).
template <typename T, int D, bool SPHERICAL, bool MSTEP, int NT = GMM_NT>
__device__ void pass_tail(const double* partial, int pstride, unsigned int* counter,
                          double* stats_out, const unsigned long long* mstep_args, int R, int K,
                          double* s_red) {
    const int t = threadIdx.x;
    __shared__ int s_last;
    __threadfence();
    __syncthreads();
    if (t == 0) s_last = atomicAdd(counter, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    // 32 outputs x NT / 32 block strides per pass, GMM_TAIL_LOADS loads in flight per thread
    const int jx = t & 31, by = t >> 5;
    for (int j0 = 0; j0 < pstride; j0 += 32) {
        const int j = j0 + jx;
        double v = 0.0;
        if (j < pstride)
            v = sum_strided<GMM_TAIL_LOADS>(partial, j, pstride, by, NT / 32, (int)gridDim.x);
        s_red[t] = v;
        __syncthreads();
        if (by == 0 && j < pstride) {
            double total = 0.0;
#pragma unroll
            for (int y = 0; y < NT / 32; ++y) total += s_red[y * 32 + jx];
            stats_out[j] = total;
        }
        __syncthreads();
    }
    if (t == 0) *counter = 0u;  // ready for the next launch
    if (MSTEP && mstep_args != nullptr) {  // compiled in only where it is used
        const MStepArgs<T> a = load_mstep_args<T>(mstep_args);
        for (int r = 0; r < R; ++r) mstep_restart<T, D, SPHERICAL>(r, R, K, stats_out, a);
    }
}

// ------------------------------------------------------------------------------------------------
// The fused pass.
//
// Grid: persistent, blocks stride over tiles of `tile_n` samples (a multiple of 32).
// Phase A: work item (n, r) for n < tile_n, r < R; each thread owns up to IPT items.
// Phase B: thread t owns statistic row rk = t % RK for the samples n = g, g + G, ... of the tile,
//          g = t / RK, G = NT / RK (host guarantees RK <= NT and tile_n * R <= NT * IPT).
// Partial layout per block: [RK * C statistics][R log-likelihoods], stride `pstride`.
// WEIGHTED: every sample's responsibilities and log-likelihood are multiplied by its weight
// sample_weight[n] (the data's dtype; the unweighted variant never reads it: pass nullptr).
template <typename T, int D, int IPT, bool SPHERICAL, bool SACC, bool MSTEP, bool WEIGHTED = false>
__global__ void __launch_bounds__(GMM_NT)
diag_pass(const T* __restrict__ X, long long n_samples, int n_restarts, int n_components,
          const T* __restrict__ kparams, const T* __restrict__ log_const,
          const int* __restrict__ active, int tile_n, int pstride, double* __restrict__ partial,
          unsigned int* __restrict__ counter, double* __restrict__ stats_out,
          const unsigned long long* __restrict__ mstep_args,
          const T* __restrict__ sample_weight) {
    using L = gmm::Layout<D, SPHERICAL>;
    using N = gmm::Num<T>;
    constexpr int NT = GMM_NT;
    constexpr int NW = NT / 32;
    constexpr int C = L::C, XS = L::XS, PS = L::PS;

    const int R = n_restarts, K = n_components, RK = R * K;
    const int RS = (RK & 1) ? RK : RK + 1;  // odd row stride: conflict-free column writes
    const int t = threadIdx.x;

    // a restart that stopped iterating needs no pass; skip the whole launch when none is left
    // (tested after the parameter loads below are issued, so the two latencies overlap)
    int any = 1;
    if (active != nullptr) {
        any = 0;
        for (int r = 0; r < R; ++r) any |= active[r];
    }

    extern __shared__ __align__(16) unsigned char smem[];
    T* s_prm = reinterpret_cast<T*>(smem);                 // RK * PS
    T* s_lc = s_prm + RK * PS;                             // round4(RK)
    T* s_x = s_lc + gmm::round4(RK);                       // tile_n * XS
    T* s_resp = s_x + tile_n * XS;                         // tile_n * RS (+ pad)
    size_t off = (size_t)(RK * PS + gmm::round4(RK) + tile_n * XS + tile_n * RS) * sizeof(T);
    off = (off + 15) / 16 * 16;
    double* s_red = reinterpret_cast<double*>(smem + off); // NT
    double* s_wsum = s_red + NT;                           // IPT * NW (then RK * C if SACC)

    for (int i = t; i < RK * PS; i += NT) s_prm[i] = kparams[i];
    for (int i = t; i < RK; i += NT) s_lc[i] = log_const[i];
    if (!any) return;  // uniform across the block

    const int G = NT / RK;
    const int rk_b = t % RK, g_b = t / RK;
    const bool b_owner = g_b < G;

    // float64 accumulators across tiles: per thread in registers, or (SACC) one per statistic
    // in shared memory, added to once per tile with shared-memory atomics (fewer registers,
    // more blocks per SM; never global atomics)
    double dacc[SACC ? 1 : C];
#pragma unroll
    for (int c = 0; c < (SACC ? 1 : C); ++c) dacc[c] = 0.0;
    double* s_acc = s_wsum + IPT * NW;  // RK * C when SACC
    if (SACC)
        for (int i = t; i < RK * C; i += NT) s_acc[i] = 0.0;
    double ll[IPT];
#pragma unroll
    for (int i = 0; i < IPT; ++i) ll[i] = 0.0;

    const long long n_tiles = (n_samples + tile_n - 1) / tile_n;
    for (long long tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
        const long long base = tile * tile_n;
        const int n_valid = (int)min((long long)tile_n, n_samples - base);
        const T* Xt = X + base * D;

        __syncthreads();  // previous tile's phase B is done with s_x / s_resp
        // -- copy the tile (coalesced) into s_x with the quadratic columns ------------------------
        if constexpr (D % 4 == 0) {  // 16-byte loads and stores
            for (int e = 4 * t; e < tile_n * D; e += 4 * NT) {
                const int n = e / D, d = e - n * D;
                T v0 = T(0), v1 = T(0), v2 = T(0), v3 = T(0);
                if (n < n_valid) N::load4(Xt + e, v0, v1, v2, v3);
                N::store4(s_x + n * XS + d, v0, v1, v2, v3);
                if (!SPHERICAL) N::store4(s_x + n * XS + D + d, v0 * v0, v1 * v1, v2 * v2, v3 * v3);
            }
        } else {
            for (int e = t; e < tile_n * D; e += NT) {
                const int n = e / D, d = e - n * D;
                const T v = (n < n_valid) ? Xt[e] : T(0);
                s_x[n * XS + d] = v;
                if (!SPHERICAL) s_x[n * XS + D + d] = v * v;
            }
        }
        __syncthreads();

        // -- phase A: log-densities, log-sum-exp, responsibilities ----------------------------------
#pragma unroll
        for (int i = 0; i < IPT; ++i) {
            const int item = t + i * NT;
            if (item >= tile_n * R) continue;
            const int n = item % tile_n, r = item / tile_n;
            T* resp_row = s_resp + n * RS + r * K;
            if (n >= n_valid) {
                for (int k = 0; k < K; ++k) resp_row[k] = T(0);
                continue;
            }
            // the row comes from L1 (the tile copy just read it): a shared-memory row read by
            // one thread per row would hit one bank 32 times
            T x[D];
            const T* xg = Xt + (size_t)n * D;
            if constexpr (D % 4 == 0) {
#pragma unroll
                for (int d = 0; d < D; d += 4) N::load4(xg + d, x[d], x[d + 1], x[d + 2], x[d + 3]);
            } else {
#pragma unroll
                for (int d = 0; d < D; ++d) x[d] = xg[d];
            }
            if (SPHERICAL && r == 0) {
                T q = T(0);
#pragma unroll
                for (int d = 0; d < D; ++d) q = fma(x[d], x[d], q);
                s_x[n * XS + D] = q;
            }
            const T* prm = s_prm + r * K * PS;
            const T* lc = s_lc + r * K;
            T mx = N::neg_inf(), sum = T(0);
            // two components per step: four independent FMA chains instead of one
            int k = 0;
            for (; k + 1 < K; k += 2) {
                const T lp0 = lc[k] - sq_dist<T, D>(x, prm + k * PS);
                const T lp1 = lc[k + 1] - sq_dist<T, D>(x, prm + (k + 1) * PS);
                resp_row[k] = lp0;
                resp_row[k + 1] = lp1;
                online_lse<T>(lp0, mx, sum);
                online_lse<T>(lp1, mx, sum);
            }
            if (k < K) {
                const T lp = lc[k] - sq_dist<T, D>(x, prm + k * PS);
                resp_row[k] = lp;
                online_lse<T>(lp, mx, sum);
            }
            const T lse = mx + N::log_(sum);
            if constexpr (WEIGHTED) {
                const T wn = sample_weight[base + n];
                ll[i] += (double)wn * (double)lse;
                for (int k = 0; k < K; ++k) resp_row[k] = wn * N::exp_(resp_row[k] - lse);
            } else {
                ll[i] += (double)lse;
                for (int k = 0; k < K; ++k) resp_row[k] = N::exp_(resp_row[k] - lse);
            }
        }
        __syncthreads();

        // -- phase B: sufficient statistics of the tile --------------------------------------------
        if (b_owner) {
            T acc[C];
#pragma unroll
            for (int c = 0; c < C; ++c) acc[c] = T(0);
            for (int n = g_b; n < n_valid; n += G) {
                const T rv = s_resp[n * RS + rk_b];
                const T* xr = s_x + n * XS;
                acc[0] += rv;
#pragma unroll
                for (int c = 0; c < XS; c += 4) {
                    T v0, v1, v2, v3;
                    N::load4(xr + c, v0, v1, v2, v3);
                    if (c + 0 < C - 1) acc[1 + c + 0] = fma(rv, v0, acc[1 + c + 0]);
                    if (c + 1 < C - 1) acc[1 + c + 1] = fma(rv, v1, acc[1 + c + 1]);
                    if (c + 2 < C - 1) acc[1 + c + 2] = fma(rv, v2, acc[1 + c + 2]);
                    if (c + 3 < C - 1) acc[1 + c + 3] = fma(rv, v3, acc[1 + c + 3]);
                }
            }
#pragma unroll
            for (int c = 0; c < C; ++c) {
                if (SACC)
                    atomicAdd(s_acc + rk_b * C + c, (double)acc[c]);
                else
                    dacc[c] += (double)acc[c];
            }
        }
    }

    // -- block partials: log-likelihood per restart (warps never straddle two restarts) ----------
    __syncthreads();
    const int lane = t & 31, warp = t >> 5;
#pragma unroll
    for (int i = 0; i < IPT; ++i) {
        const double v = gmm::warp_sum(ll[i]);
        if (lane == 0) s_wsum[i * NW + warp] = v;
    }
    __syncthreads();
    double* out = partial + (size_t)blockIdx.x * pstride;
    if (t < R) {
        double v = 0.0;
        for (int i = 0; i < IPT; ++i)
            for (int w = 0; w < NW; ++w)
                if ((w * 32 + i * NT) / tile_n == t && w * 32 + i * NT < tile_n * R)
                    v += s_wsum[i * NW + w];
        out[RK * C + t] = v;
    }
    // statistics: sum the G groups of every row
    const bool one_pass = (size_t)NT * C * sizeof(double) <=
                          (size_t)tile_n * (XS + RS) * sizeof(T);  // the idle tile buffers
    if (SACC) {
        for (int i = t; i < RK * C; i += NT) out[i] = s_acc[i];
        __syncthreads();
    } else if (one_pass) {  // every column at once: two barriers instead of 2 C
        double* s_all = reinterpret_cast<double*>(s_x);  // 16-byte aligned, free after the loop
#pragma unroll
        for (int c = 0; c < C; ++c) s_all[c * NT + t] = b_owner ? dacc[c] : 0.0;
        __syncthreads();
        for (int i = t; i < RK * C; i += NT) {
            const int row = i / C, c = i - row * C;
            const double* col = s_all + c * NT;
            double v0 = 0.0, v1 = 0.0, v2 = 0.0, v3 = 0.0;
            int g = 0;
            for (; g + 3 < G; g += 4) {
                v0 += col[g * RK + row];
                v1 += col[(g + 1) * RK + row];
                v2 += col[(g + 2) * RK + row];
                v3 += col[(g + 3) * RK + row];
            }
            for (; g < G; ++g) v0 += col[g * RK + row];
            out[i] = (v0 + v1) + (v2 + v3);
        }
        __syncthreads();
    }
    if (!SACC && !one_pass) {  // one column at a time through s_red
#pragma unroll
    for (int c = 0; c < (SACC ? 0 : C); ++c) {
        s_red[t] = b_owner ? dacc[c] : 0.0;
        __syncthreads();
        if (t < RK) {
            double v0 = 0.0, v1 = 0.0, v2 = 0.0, v3 = 0.0;
            int g = 0;
            for (; g + 3 < G; g += 4) {
                v0 += s_red[g * RK + t];
                v1 += s_red[(g + 1) * RK + t];
                v2 += s_red[(g + 2) * RK + t];
                v3 += s_red[(g + 3) * RK + t];
            }
            for (; g < G; ++g) v0 += s_red[g * RK + t];
            out[t * C + c] = (v0 + v1) + (v2 + v3);
        }
        __syncthreads();
    }
    }

    // optional tail: the last block to finish sums every block's partial (small problems, where
    // a separate reduction launch would cost more than the work)
    if (counter != nullptr)
        pass_tail<T, D, SPHERICAL, MSTEP>(partial, pstride, counter, stats_out, mstep_args, R, K,
                                          s_red);
}

// ------------------------------------------------------------------------------------------------
// The fused pass on tensor cores (float32, diag; sm_80+). Same arguments, partial layout and
// tail as diag_pass; the launcher picks it for float32 diag data with D % 4 == 0, D <= 16,
// K <= 16 * MT and restart groups of 1, 2, 4 or 8.
//
// Both matrix products of an EM pass run as mma.sync m16n8k8 TF32 in the 3xTF32 split
// (a b ~ a_hi b_hi + a_hi b_lo + a_lo b_hi, float32-level accuracy):
//   E-step    logits^T (rows (restart, component), cols samples) = W^T [x, x^2]^T + c'
//             with W = [-2 s p, -s^2] and c' = log w + log det - D/2 log 2pi - |p|^2 from the
//             (s, p = -mu s) kernel parameters: the expanded quadratic form. It loses float32
//             digits for a component far from the (centred) origin in its own units (error ~
//             2^-22 |p_k|^2 nats), so the rows of components with |p_k|^2 > GMM_TC_GUARD are
//             recomputed exactly (the SIMT form of diag_pass) in the same registers.
//   statistics  S (rows (restart, component), cols [x, x^2]) += R^T [x, x^2]: the
//             E-step's accumulator fragments, turned into responsibilities in registers, are
//             the A operand as they stand (columns 2q, 2q + 1 of a C fragment are columns
//             q, q + 4 of an A fragment; the sample order inside a k-step is free, so the B
//             operand reads its rows in the same order). N_k is summed from the same
//             registers in float32 (exact products: no split needed).
// Each warp works on its own 16-sample slabs (grid-stride) and one restart: no block barrier in
// the main loop. The slab is prefetched into registers while the previous one is computed and
// kept split (hi, lo) in the warp's shared rows [x | x^2 | 0 pad], row stride = 4 mod 8
// words, so every fragment load is free of bank conflicts. Statistics are summed in float32
// over FLUSH slabs, then added to the warp's own float64 accumulators in shared memory (in
// fragment order: no atomics, no bank conflicts); the warps of a restart are summed at the end.
#ifndef GMM_TC_GUARD
#define GMM_TC_GUARD 1024.0f
#endif

namespace tc {
template <int D> struct Geo {
    static constexpr int KT = D / 4;                     // k-steps over the 2D features
    static constexpr int CP = 2 * D;                     // statistic columns [x, x^2]
    static constexpr int CT = CP / 8;
    static constexpr int XS = CP + 4;                    // slab row stride (words, 4 mod 8)
    static constexpr int SLAB = 16;                      // samples per warp step
    static constexpr int NTL = SLAB / 8;                 // n-tiles per slab
    static constexpr int F4 = SLAB * D / 4;              // float4 loads per slab
    static constexpr int F4L = (F4 + 31) / 32;           // ... per lane
#ifdef GMM_TC_FLUSH
    static constexpr int FLUSH = GMM_TC_FLUSH;
#else
    static constexpr int FLUSH = 8;                      // slabs summed in float32
#endif
};
// STATS2 (a tuning define, off): the statistics GEMM in 2 TF32 products instead of 3, the
// responsibilities rounded to TF32 once (N_k sums the rounded values). Measured on an H200
// (benchmarks/results/tune_stats2_h200.log): 13% faster per iteration, but the statistics' error
// against float64 grows 12x (6e-5 of the largest sum: responsibilities just below 1 all round
// up). Rounding the B operand [x, x^2] instead (the full pass's choice, whose B is centred on
// each component) was 1e-4 nats off in a fit of clusters far from the data mean: x, not x - mu,
// is rounded here.
#ifdef GMM_TC_STATS2
constexpr bool STATS2 = GMM_TC_STATS2;
#else
constexpr bool STATS2 = false;
#endif
}  // namespace tc

// TNT threads per block: 256 (W^T in registers, one block per SM: ~250 registers) or 128
// (W^T in shared memory, up to three blocks per SM within 170 registers; measured slower).
// GUARD: recompute the logits of far components exactly (above). Lloyd's passes (a "hard"
// mixture: one huge precision, so |p_k|^2 is far over the guard for every component) need only
// which component wins each sample, which the expanded form gives to float32 accuracy, as
// scikit-learn's float32 k-means computes it; without the guard they run at the EM pass's speed
// (measured 13.4 ms -> 1.0 ms per pass over 10M x 16, K=32, on an H200).
// WEIGHTED: as diag_pass's (the weight scales a sample's responsibilities before both the
// N_k sums and the statistics GEMM, and its log-likelihood).
template <int D, int MT, bool MSTEP, int TNT, bool GUARD = true, bool WEIGHTED = false>
__global__ void __launch_bounds__(TNT, TNT == 128 ? 3 : 1)
diag_pass_tc(const float* __restrict__ X, long long n_samples, int n_restarts, int n_components,
             const float* __restrict__ kparams, const float* __restrict__ log_const,
             const int* __restrict__ active, int tile_n, int pstride, double* __restrict__ partial,
             unsigned int* __restrict__ counter, double* __restrict__ stats_out,
             const unsigned long long* __restrict__ mstep_args,
             const float* __restrict__ sample_weight) {
    static_assert(D % 4 == 0 && D <= 16, "tensor-core pass: D in {4, 8, 12, 16}");
    using G = tc::Geo<D>;
    constexpr int NT = TNT, NW = NT / 32;
    constexpr bool WSM = TNT == 128;  // W^T fragments in shared memory
    constexpr int KT = G::KT, CT = G::CT, XS = G::XS, SLAB = G::SLAB, NTL = G::NTL;
    constexpr int PS = gmm::Layout<D, false>::PS, C = 1 + 2 * D;
    const int R = n_restarts, K = n_components;
    const int t = threadIdx.x, lane = t & 31, w = t >> 5;
    const int g = lane >> 2, q = lane & 3;  // fragment row group, thread in group
    (void)tile_n;

    int any = 1;
    if (active != nullptr) {
        any = 0;
        for (int r = 0; r < R; ++r) any |= active[r];
    }
    if (!any) return;  // uniform across the grid

    extern __shared__ __align__(16) unsigned char smem[];
    unsigned* s_hi = reinterpret_cast<unsigned*>(smem);  // NW * SLAB * XS
    unsigned* s_lo = s_hi + NW * SLAB * XS;              // NW * SLAB * XS
    // one warp's float64 accumulators: statistics in fragment order, then N_k per (mt, h, lane)
    constexpr int AW = MT * CT * 4 * 32 + MT * 2 * 32;
    double* s_acc = reinterpret_cast<double*>(s_lo + NW * SLAB * XS);  // NW * AW
    double* s_ll = s_acc + NW * AW;                      // NW
    double* s_red = s_ll + NW;                           // NT (tail)
    uint4* s_wh = reinterpret_cast<uint4*>(s_red + NT);  // WSM: R * MT * KT * 32 (hi)
    uint4* s_wl = s_wh + R * MT * KT * 32;               // ... (lo)
    for (int i = t; i < NW * AW + NW; i += NT) s_acc[i] = 0.0;
    unsigned* xh = s_hi + w * SLAB * XS;
    unsigned* xl = s_lo + w * SLAB * XS;
    for (int i = lane; i < SLAB * (XS - 2 * D); i += 32) {  // padding columns (never read)
        const int n = i / (XS - 2 * D), c = 2 * D + i % (XS - 2 * D);
        xh[n * XS + c] = 0u;
        xl[n * XS + c] = 0u;
    }

    // this warp's restart; its E-step operand W^T (rows = components) split in registers
    const int r = w % R;
    const float* prm = kparams + (size_t)r * K * PS;
    const float* lcr = log_const + (size_t)r * K;
    constexpr int WM = WSM ? 1 : MT, WK = WSM ? 1 : KT;  // register copies (W^T in registers)
    unsigned wh[WM][WK][4], wl[WM][WK][4];
    float cst[MT][2];
    unsigned exact = 0u;  // bit 2 mt + h: row mt * 16 + g + 8 h needs the exact E-step
    constexpr float L2E = 1.4426950408889634f;  // logits are kept in log2 units (ex2, lg2)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = mt * 16 + g + 8 * h;
            float p2 = 0.0f;
            if (row < K) {
                for (int d = 0; d < D; ++d) p2 = fmaf(prm[row * PS + 2 * d + 1], prm[row * PS + 2 * d + 1], p2);
                cst[mt][h] = (lcr[row] - p2) * L2E;
            } else {
                cst[mt][h] = gmm::Num<float>::neg_inf();
            }
            if (GUARD && !(p2 <= GMM_TC_GUARD)) exact |= 1u << (2 * mt + h);  // NaN too
        }
        if (WSM && w >= R) continue;  // one warp per restart writes its W^T to shared memory
#pragma unroll
        for (int ks = 0; ks < KT; ++ks) {
            unsigned hi[4], lo[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int row = mt * 16 + g + 8 * (i & 1);
                const int f = ks * 8 + q + 4 * (i >> 1);
                float v = 0.0f;
                if (row < K) {
                    const float sd = prm[row * PS + 2 * (f % D)], pd = prm[row * PS + 2 * (f % D) + 1];
                    v = (f < D ? -2.0f * sd * pd : -sd * sd) * L2E;
                }
                tc::split(v, hi[i], lo[i]);
            }
            if constexpr (WSM) {
                s_wh[((r * MT + mt) * KT + ks) * 32 + lane] = make_uint4(hi[0], hi[1], hi[2], hi[3]);
                s_wl[((r * MT + mt) * KT + ks) * 32 + lane] = make_uint4(lo[0], lo[1], lo[2], lo[3]);
            } else {
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    wh[WSM ? 0 : mt][WSM ? 0 : ks][i] = hi[i];
                    wl[WSM ? 0 : mt][WSM ? 0 : ks][i] = lo[i];
                }
            }
        }
    }
    const bool any_exact = __any_sync(0xffffffffu, exact != 0u);

    float acc[MT][CT][4];
    float nk[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) nk[mt][0] = nk[mt][1] = 0.0f;
    tc::zero(acc);
    double ll = 0.0;
    int since_flush = 0;
    double* wacc = s_acc + w * AW + lane;
    auto flush = [&]() {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int ct = 0; ct < CT; ++ct)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    wacc[((mt * CT + ct) * 4 + i) * 32] += (double)acc[mt][ct][i];
                    acc[mt][ct][i] = 0.0f;
                }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                wacc[(MT * CT * 4 + 2 * mt + h) * 32] += (double)nk[mt][h];
                nk[mt][h] = 0.0f;
            }
    };
    __syncthreads();  // s_acc zeroed before any flush

    const int slots = NW / R;  // warps of one restart in a block
    const long long n_slabs = (n_samples + SLAB - 1) / SLAB;
    const long long step = (long long)gridDim.x * slots;
    long long slab = (long long)blockIdx.x * slots + w / R;

    float4 pre[G::F4L];
    auto fetch = [&](long long sl) {
#pragma unroll
        for (int i = 0; i < G::F4L; ++i) {
            const int e = lane + 32 * i;
            pre[i] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (e < G::F4 && sl < n_slabs && sl * SLAB + (4 * e) / D < n_samples)
                pre[i] = __ldg(reinterpret_cast<const float4*>(X + sl * SLAB * D) + e);
        }
    };
    fetch(slab);
    for (; slab < n_slabs; slab += step) {
        __syncwarp();
#pragma unroll
        for (int i = 0; i < G::F4L; ++i) {  // store the prefetched slab, split
            const int e = lane + 32 * i;
            if (e < G::F4) {
                const int n = (4 * e) / D, d = (4 * e) % D;
                const float v[4] = {pre[i].x, pre[i].y, pre[i].z, pre[i].w};
                unsigned h[4], l[4], h2[4], l2[4];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    tc::split(v[j], h[j], l[j]);
                    tc::split(v[j] * v[j], h2[j], l2[j]);
                }
                // 16-byte stores: XS and d are multiples of 4 words
                *reinterpret_cast<uint4*>(xh + n * XS + d) = make_uint4(h[0], h[1], h[2], h[3]);
                *reinterpret_cast<uint4*>(xl + n * XS + d) = make_uint4(l[0], l[1], l[2], l[3]);
                *reinterpret_cast<uint4*>(xh + n * XS + D + d) =
                    make_uint4(h2[0], h2[1], h2[2], h2[3]);
                *reinterpret_cast<uint4*>(xl + n * XS + D + d) =
                    make_uint4(l2[0], l2[1], l2[2], l2[3]);
            }
        }
        __syncwarp();
        fetch(slab + step);  // in flight while this slab is computed
        // samples of this slab that exist (the last slab may be partial)
        const int n_here = (int)min((long long)SLAB, n_samples - slab * SLAB);
        float ll_slab = 0.0f;  // lse of this lane's samples (lanes g == 0), float64 per slab

        // -- E-step: logits^T tiles (MT x NTL, log2 units), rows g / g + 8, cols 2q / 2q + 1 ----
        float lg[MT][NTL][4];
        {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NTL; ++nt)
#pragma unroll
                    for (int i = 0; i < 4; ++i) lg[mt][nt][i] = cst[mt][i >> 1];
#pragma unroll
            for (int ks = 0; ks < KT; ++ks) {
                unsigned ah[MT][4], al[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    if constexpr (WSM) {
                        const uint4 h4 = s_wh[((r * MT + mt) * KT + ks) * 32 + lane];
                        const uint4 l4 = s_wl[((r * MT + mt) * KT + ks) * 32 + lane];
                        ah[mt][0] = h4.x; ah[mt][1] = h4.y; ah[mt][2] = h4.z; ah[mt][3] = h4.w;
                        al[mt][0] = l4.x; al[mt][1] = l4.y; al[mt][2] = l4.z; al[mt][3] = l4.w;
                    } else {
#pragma unroll
                        for (int i = 0; i < 4; ++i) {
                            ah[mt][i] = wh[WSM ? 0 : mt][WSM ? 0 : ks][i];
                            al[mt][i] = wl[WSM ? 0 : mt][WSM ? 0 : ks][i];
                        }
                    }
                }
#pragma unroll
                for (int nt = 0; nt < NTL; ++nt) {
                    const int o = (nt * 8 + g) * XS + ks * 8 + q;
                    const unsigned bh0 = xh[o], bh1 = xh[o + 4], bl0 = xl[o], bl1 = xl[o + 4];
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt)
                        tc::mma3(lg[mt][nt], ah[mt], al[mt], bh0, bh1, bl0, bl1);
                }
            }
        }
        if (any_exact) {  // rows of far components: exact logits over the tensor-core ones
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NTL; ++nt)
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        if (!(exact >> (2 * mt + (i >> 1)) & 1u)) continue;
                        const int row = mt * 16 + g + 8 * (i >> 1);
                        const int n = nt * 8 + 2 * q + (i & 1);
                        float v = gmm::Num<float>::neg_inf();
                        if (row < K) {
                            float a = 0.0f;
                            for (int d = 0; d < D; ++d) {
                                const float x = __uint_as_float(xh[n * XS + d]) +
                                                __uint_as_float(xl[n * XS + d]);
                                const float y = fmaf(x, prm[row * PS + 2 * d], prm[row * PS + 2 * d + 1]);
                                a = fmaf(y, y, a);
                            }
                            v = (lcr[row] - a) * L2E;
                        }
                        lg[mt][nt][i] = v;
                    }
        }

        // -- log-sum-exp per sample (8 lanes of equal q hold its rows), responsibilities --------
#pragma unroll
        for (int nt = 0; nt < NTL; ++nt) {
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                float mx = gmm::Num<float>::neg_inf();
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) mx = fmaxf(mx, fmaxf(lg[mt][nt][j], lg[mt][nt][2 + j]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
                float sm = 0.0f;
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {  // one exp per value: resp = e / sum
                    lg[mt][nt][j] = tc::ex2(lg[mt][nt][j] - mx);
                    lg[mt][nt][2 + j] = tc::ex2(lg[mt][nt][2 + j] - mx);
                    sm += lg[mt][nt][j] + lg[mt][nt][2 + j];
                }
                sm += __shfl_xor_sync(0xffffffffu, sm, 4);
                sm += __shfl_xor_sync(0xffffffffu, sm, 8);
                sm += __shfl_xor_sync(0xffffffffu, sm, 16);
                const bool valid = nt * 8 + 2 * q + j < n_here;
                float wn = 1.0f;
                if constexpr (WEIGHTED)
                    if (valid) wn = __ldg(sample_weight + slab * SLAB + nt * 8 + 2 * q + j);
                if (valid) ll_slab += WEIGHTED ? wn * (mx + tc::lg2(sm)) : mx + tc::lg2(sm);
                const float inv = valid ? __fdividef(wn, sm) : 0.0f;
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    lg[mt][nt][j] *= inv;
                    lg[mt][nt][2 + j] *= inv;
                    if constexpr (tc::STATS2) {
                        lg[mt][nt][j] = tc::round_tf32(lg[mt][nt][j]);
                        lg[mt][nt][2 + j] = tc::round_tf32(lg[mt][nt][2 + j]);
                    }
                    nk[mt][0] += lg[mt][nt][j];
                    nk[mt][1] += lg[mt][nt][2 + j];
                }
            }
        }

        if (g == 0) ll += (double)ll_slab * 0.6931471805599453;  // natural log
        // -- statistics: acc += R^T [x, x^2]; k-step nt = the slab's n-tile nt ------------------
#pragma unroll
        for (int nt = 0; nt < NTL; ++nt) {
            unsigned ah[MT][4], al[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                if constexpr (tc::STATS2) {  // already TF32: the operand as it stands
                    ah[mt][0] = __float_as_uint(lg[mt][nt][0]);
                    ah[mt][1] = __float_as_uint(lg[mt][nt][2]);
                    ah[mt][2] = __float_as_uint(lg[mt][nt][1]);
                    ah[mt][3] = __float_as_uint(lg[mt][nt][3]);
                } else {
                    tc::split(lg[mt][nt][0], ah[mt][0], al[mt][0]);  // (g, q)     <- (g, 2q)
                    tc::split(lg[mt][nt][2], ah[mt][1], al[mt][1]);  // (g + 8, q) <- (g + 8, 2q)
                    tc::split(lg[mt][nt][1], ah[mt][2], al[mt][2]);  // (g, q + 4) <- (g, 2q + 1)
                    tc::split(lg[mt][nt][3], ah[mt][3], al[mt][3]);
                }
            }
            const int o = (nt * 8 + 2 * q) * XS + g;
#pragma unroll
            for (int ct = 0; ct < CT; ++ct) {
                const int oc = o + ct * 8;
                const unsigned bh0 = xh[oc], bh1 = xh[oc + XS], bl0 = xl[oc], bl1 = xl[oc + XS];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    if constexpr (tc::STATS2) {
                        tc::mma(acc[mt][ct], ah[mt], bl0, bl1);
                        tc::mma(acc[mt][ct], ah[mt], bh0, bh1);
                    } else {
                        tc::mma3(acc[mt][ct], ah[mt], al[mt], bh0, bh1, bl0, bl1);
                    }
                }
            }
        }
        if (++since_flush == G::FLUSH) {
            flush();
            since_flush = 0;
        }
    }
    flush();
    const double wll = gmm::warp_sum(ll);
    if (lane == 0) s_ll[w] = wll;  // summed per restart in warp order below: reproducible
    __syncthreads();

    // block partial: [R K C statistics (nk | sum r x | sum r x^2)][R log-likelihoods]
    double* out = partial + (size_t)blockIdx.x * pstride;
    for (int i = t; i < R * K * C; i += NT) {
        const int rk = i / C, c = i - rk * C;
        const int rr = rk / K, k = rk - rr * K;
        const int kk = k % 16;
        double v = 0.0;
        if (c == 0) {  // N_k: lanes 4 g .. 4 g + 3 of (m-tile, half)
            const int idx = (MT * CT * 4 + 2 * (k / 16) + kk / 8) * 32 + 4 * (kk % 8);
            for (int ww = rr; ww < NW; ww += R)
                for (int qq = 0; qq < 4; ++qq) v += s_acc[ww * AW + idx + qq];
        } else {  // (row k, col c - 1 of [x, x^2]) in fragment order
            const int col = c - 1, cc = col % 8;
            const int idx = (((k / 16) * CT + col / 8) * 4 + 2 * (kk / 8) + (cc & 1)) * 32 +
                            4 * (kk % 8) + cc / 2;
            for (int ww = rr; ww < NW; ww += R) v += s_acc[ww * AW + idx];
        }
        out[i] = v;
    }
    if (t < R) {
        double v = 0.0;
        for (int ww = t; ww < NW; ww += R) v += s_ll[ww];
        out[R * K * C + t] = v;
    }
    if (counter != nullptr)
        pass_tail<float, D, false, MSTEP, NT>(partial, pstride, counter, stats_out, mstep_args, R,
                                              K, s_red);
}

// ------------------------------------------------------------------------------------------------
// Sum block partials: out[j] = sum_b partial[b * stride + j]. Block (32, 8), grid ceil(stride/32).
extern "C" __global__ void reduce_partials(const double* __restrict__ partial, int n_blocks,
                                           int stride, double* __restrict__ out) {
    __shared__ double s[8][33];
    const int j = blockIdx.x * 32 + threadIdx.x;
    double v = 0.0;
    if (j < stride) v = sum_strided<8>(partial, j, stride, threadIdx.y, 8, n_blocks);
    s[threadIdx.y][threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.y == 0 && j < stride) {
        double total = 0.0;
#pragma unroll
        for (int y = 0; y < 8; ++y) total += s[y][threadIdx.x];
        out[j] = total;
    }
}

// ------------------------------------------------------------------------------------------------
// Small problems: `steps` whole EM iterations in one launch (one restart, up to KMAX components,
// few statistics). Where a pass over the data takes a few microseconds (Blobs 500k x 2), the
// cost of an iteration is kernel launches and global-memory round trips; this kernel keeps every
// block resident and replaces them with two flags in global memory:
//   every block: pass over its rows (a few rows per thread per step, summed in the data type),
//                block sums into partial[block], then sync[0] += 1 (arrival);
//   block 0:     waits for every arrival, sums the partials (fixed order), runs mstep_restart
//                (the same M-step and convergence test as diag_mstep), then sync[1] = step + 1;
//   other blocks wait for sync[1] and read the new parameters (and the restart's active flag)
//                from L2 before the next step.
// The grid must be resident at once (the host sizes it from the occupancy); sync[0:2] are zeroed
// before every launch, sync[2] before a fit. A wait longer than GMM_SPIN_TIMEOUT_NS sets sync[2]
// and clears the restart's active flag, so the launch ends and the host raises, not hangs.
#ifndef GMM_SMALL_NT_F32
#define GMM_SMALL_NT_F32 512  // threads per block: float32 data (128 registers)
#endif
#ifndef GMM_SMALL_NT_F64
#define GMM_SMALL_NT_F64 256  // float64 data (more registers per thread)
#endif
template <typename T> struct SmallNT {
    static constexpr int value = sizeof(T) == 4 ? GMM_SMALL_NT_F32 : GMM_SMALL_NT_F64;
};
#ifndef GMM_SPIN_TIMEOUT_NS
#define GMM_SPIN_TIMEOUT_NS 20000000000ull
#endif

// flags between the blocks of one grid (SYS = false: GPU scope) or between the GPUs of one host
// (SYS = true: system scope, peer memory)
template <bool SYS> __device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
    unsigned v;
    if constexpr (SYS)
        asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    else
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

template <bool SYS> __device__ __forceinline__ void st_release(unsigned* p, unsigned v) {
    if constexpr (SYS)
        asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
    else
        asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ unsigned long long clock_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// thread 0 of a block: wait until *p >= target; false (and sync[2] set) after the timeout
__device__ __forceinline__ bool wait_at_least(const unsigned* p, unsigned target,
                                              unsigned* timed_out) {
    const unsigned long long start = clock_ns();
    while (ld_acquire<false>(p) < target) {
        if (clock_ns() - start > GMM_SPIN_TIMEOUT_NS) {
            atomicExch(timed_out, 1u);
            return false;
        }
    }
    return true;
}

#ifdef GMM_SMALL_PROFILE  // benchmarks/tune_fused.py: globaltimer stamps of blocks 0 and G-1
__device__ unsigned long long gmm_small_prof[64][8];
#define GMM_STAMP(cond, step, i) \
    if ((cond) && threadIdx.x == 0 && (step) < 64) gmm_small_prof[step][i] = clock_ns()
#else
#define GMM_STAMP(cond, step, i)
#endif

template <typename T, int D, bool SPHERICAL, int KMAX>
__global__ void __launch_bounds__(SmallNT<T>::value)
diag_em_small(const T* __restrict__ X, long long n_samples, int K, int steps,
              double* __restrict__ partial, int pstride, unsigned* __restrict__ sync,
              const unsigned long long* __restrict__ mstep_args) {
    using L = gmm::Layout<D, SPHERICAL>;
    using N = gmm::Num<T>;
    constexpr int C = L::C, PS = L::PS, NT = SmallNT<T>::value, NW = NT / 32;
    constexpr int S = KMAX * C + 1;  // statistics and log-likelihood of the restart
    __shared__ __align__(16) T s_prm[KMAX * PS];
    __shared__ T s_lc[KMAX];
    __shared__ double s_w[NW][S];
    __shared__ double s_red[NT];
    __shared__ double s_stats[S];  // block 0: [K * C statistics][log-likelihood]
    __shared__ int s_go;
    const MStepArgs<T> a = load_mstep_args<T>(mstep_args);
    const int t = threadIdx.x, lane = t & 31, w = t >> 5;
    const unsigned G = gridDim.x;
    const int KC = K * C;
    const long long stride = (long long)G * NT;

    for (int step = 0; step < steps; ++step) {
        // this step's parameters: written by block 0's M-step of the previous step (L2 reads)
        for (int i = t; i < K * PS; i += NT) s_prm[i] = __ldcg(a.kparams + i);
        for (int i = t; i < K; i += NT) s_lc[i] = __ldcg(a.log_const + i);
        if (t == 0) s_go = __ldcg(a.active) && __ldcg(a.n_iter) < a.max_iter;
        __syncthreads();
        if (!s_go) return;  // the same decision in every block
        const bool b0 = blockIdx.x == 0, bl = blockIdx.x == G - 1;
        GMM_STAMP(b0, step, 0);

        // per-thread sums over this step's rows in the data type (a few rows per thread, as
        // the pass's per-tile sums), float64 from the warp sums on
        T acc[KMAX][C];
#pragma unroll
        for (int k = 0; k < KMAX; ++k)
#pragma unroll
            for (int c = 0; c < C; ++c) acc[k][c] = T(0);
        double ll = 0.0;
        long long row = (long long)blockIdx.x * NT + t;
        T xn[D];
        if (row < n_samples) {
#pragma unroll
            for (int d = 0; d < D; ++d) xn[d] = X[row * D + d];
        }
        for (; row < n_samples; row += stride) {
            T x[D];
#pragma unroll
            for (int d = 0; d < D; ++d) x[d] = xn[d];
            if (row + stride < n_samples) {  // the next row's load overlaps this row's work
#pragma unroll
                for (int d = 0; d < D; ++d) xn[d] = X[(row + stride) * D + d];
            }
            T lp[KMAX];
            T mx = N::neg_inf(), sum = T(0);
#pragma unroll
            for (int k = 0; k < KMAX; ++k) {
                if (k < K) {
                    lp[k] = s_lc[k] - sq_dist<T, D>(x, s_prm + k * PS);
                    online_lse<T>(lp[k], mx, sum);
                }
            }
            const T lse = mx + N::log_(sum);
            ll += (double)lse;
            T q = T(0);
#pragma unroll
            for (int d = 0; d < D; ++d) q = fma(x[d], x[d], q);
#pragma unroll
            for (int k = 0; k < KMAX; ++k) {
                if (k < K) {
                    const T r = N::exp_(lp[k] - lse);
                    acc[k][0] += r;
#pragma unroll
                    for (int d = 0; d < D; ++d) {
                        const T rx = r * x[d];
                        acc[k][1 + d] += rx;
                        if (!SPHERICAL) acc[k][1 + D + d] = fma(rx, x[d], acc[k][1 + D + d]);
                    }
                    if (SPHERICAL) acc[k][1 + D] = fma(r, q, acc[k][1 + D]);
                }
            }
        }
        GMM_STAMP(b0, step, 1);
        GMM_STAMP(bl, step, 6);
        // block sums -> partial[block] (fixed order: warps, then the NW warp sums)
#pragma unroll
        for (int k = 0; k < KMAX; ++k) {
            if (k < K) {
#pragma unroll
                for (int c = 0; c < C; ++c) {
                    const double v = gmm::warp_sum((double)acc[k][c]);
                    if (lane == 0) s_w[w][k * C + c] = v;
                }
            }
        }
        {
            const double v = gmm::warp_sum(ll);
            if (lane == 0) s_w[w][KC] = v;
        }
        __syncthreads();
        for (int i = t; i <= KC; i += NT) {
            double v = 0.0;
#pragma unroll
            for (int ww = 0; ww < NW; ++ww) v += s_w[ww][i];
            partial[(size_t)blockIdx.x * pstride + i] = v;
        }
        __threadfence();  // by every writer, before the arrival below
        __syncthreads();
        GMM_STAMP(b0, step, 2);
        if (blockIdx.x != 0) {
            if (t == 0) {
                atomicAdd(sync, 1u);
                s_go = wait_at_least(sync + 1, (unsigned)step + 1u, sync + 2);
                if (!s_go) *a.active = 0;  // the host stops launching and raises
            }
            __syncthreads();
            GMM_STAMP(bl, step, 7);
            if (!s_go) return;
            __syncthreads();  // every thread has read s_go before thread 0 writes it again
            continue;
        }
        if (t == 0) {
            s_go = wait_at_least(sync, (unsigned)(step + 1) * (G - 1u), sync + 2);
            if (!s_go) *a.active = 0;
        }
        __syncthreads();
        GMM_STAMP(true, step, 3);
        if (!s_go) return;
        // every block's partial -> s_stats: 32 columns x NW block strides per pass
        const int jx = t & 31, by = t >> 5;
        for (int j0 = 0; j0 <= KC; j0 += 32) {
            const int j = j0 + jx;
            s_red[t] = j <= KC ? sum_strided<16>(partial, j, pstride, by, NW, (int)G) : 0.0;
            __syncthreads();
            if (by == 0 && j <= KC) {
                double v = 0.0;
#pragma unroll
                for (int y = 0; y < NW; ++y) v += s_red[y * 32 + jx];
                s_stats[j] = v;
            }
            __syncthreads();
        }
        GMM_STAMP(true, step, 4);
        mstep_restart<T, D, SPHERICAL>(0, 1, K, s_stats, a);
        __threadfence();  // by every writer of the new parameters, before the flag
        __syncthreads();
        GMM_STAMP(true, step, 5);
        if (t == 0) st_release<false>(sync + 1, (unsigned)step + 1u);
    }
}

// ------------------------------------------------------------------------------------------------
// Multi-GPU device loop: the block reduction, the all-reduce between the GPUs of one host and the
// M-step in one launch per iteration, in the same stream (and CUDA graph) as the pass, so the
// host launches whole iterations on every device without synchronising.
//
// Grid ceil(pstride / 32) x 256 threads. Every block sums 32 columns of the pass's block partials
// (n_blocks rows; 1 row where the pass reduced them itself) and stores them into slot `me` of
// every device's mailbox[parity] (peer stores over NVLink/PCIe, this device's own included),
// fenced at system scope. The last block to finish sets flag[me] = seq on every device
// (release), waits until this device's flags all reached seq (acquire: every device pushed this
// round), sums the slots in device order (bitwise the same totals on every device) and runs the
// M-step of the R restarts of the group.
// `table` holds per device j: [2j] its mailbox (2 x n_dev x pstride doubles), [2j+1] its flags
// (n_dev uint32). `seq` counts this device's rounds and `counter` its finished blocks (both zero
// before a fit). A mailbox parity is written again two rounds later, after every device has left
// the round that read it. A device that never arrives (its launches failed) ends the wait after
// GMM_PEER_TIMEOUT_NS with *timed_out set and the group's restarts stopped (no later round waits
// or runs an M-step), so the host raises instead of hanging.
#ifndef GMM_PEER_TIMEOUT_NS
#define GMM_PEER_TIMEOUT_NS 20000000000ull
#endif

template <typename T, int D, bool SPHERICAL>
__global__ void __launch_bounds__(256, 1)
reduce_exchange_mstep(const double* __restrict__ partial, int n_blocks, int pstride, int me,
                      int n_dev, const unsigned long long* __restrict__ table,
                      unsigned* __restrict__ seq_ptr, unsigned* __restrict__ counter,
                      double* __restrict__ total, int* __restrict__ timed_out, int R, int K,
                      const unsigned long long* __restrict__ mstep_args) {
    __shared__ double s_red[256];
    __shared__ unsigned s_seq;
    __shared__ int s_last;
    const int t = threadIdx.x, jx = t & 31, by = t >> 5;
    if (t == 0) s_seq = *seq_ptr + 1u;  // written back by the last block, after every read
    const int j = blockIdx.x * 32 + jx;
    double v = 0.0;
    if (j < pstride) v = sum_strided<8>(partial, j, pstride, by, 8, n_blocks);
    s_red[t] = v;
    __syncthreads();
    const unsigned seq = s_seq;
    const size_t parity = seq & 1u;
    if (by == 0 && j < pstride) {
        double sum = 0.0;
#pragma unroll
        for (int y = 0; y < 8; ++y) sum += s_red[y * 32 + jx];
        for (int d = 0; d < n_dev; ++d)
            reinterpret_cast<double*>(table[2 * d])[(parity * n_dev + me) * pstride + j] = sum;
    }
    __threadfence_system();
    __syncthreads();
    if (t == 0) s_last = atomicAdd(counter, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence_system();  // every block's pushes precede the flags below
    if (t < n_dev) st_release<true>(reinterpret_cast<unsigned*>(table[2 * t + 1]) + me, seq);
    __shared__ int s_late;
    if (t == 0) {
        const unsigned* flags = reinterpret_cast<const unsigned*>(table[2 * me + 1]);
        const unsigned long long start = clock_ns();
        bool late = *timed_out != 0;  // an earlier round gave up: do not wait again
        for (int d = 0; d < n_dev && !late; ++d) {
            // (int)(flag - seq) < 0: flag behind seq, also across 2^32 wrap-around
            while ((int)(ld_acquire<true>(flags + d) - seq) < 0) {
                if (clock_ns() - start > GMM_PEER_TIMEOUT_NS) {
                    late = true;
                    *timed_out = 1;
                    break;
                }
                __nanosleep(32);
            }
        }
        s_late = late;
        *seq_ptr = seq;
        *counter = 0u;  // ready for the next round
    }
    __syncthreads();
    const MStepArgs<T> a = load_mstep_args<T>(mstep_args);
    if (s_late) {  // no M-step on a partial sum: stop the group; the host raises
        if (t < R) a.active[t] = 0;
        return;
    }
    const double* box = reinterpret_cast<const double*>(table[2 * me]) + parity * n_dev * pstride;
    for (int i = t; i < pstride; i += blockDim.x) {
        double sum = __ldcg(box + i);
        for (int d = 1; d < n_dev; ++d) sum += __ldcg(box + (size_t)d * pstride + i);
        total[i] = sum;
    }
    __syncthreads();
    for (int r = 0; r < R; ++r) mstep_restart<T, D, SPHERICAL>(r, R, K, total, a);
}

// Params (float64, restart-major) -> kernel parameters, one thread per (restart, component).
template <typename T, int D, bool SPHERICAL>
__global__ void prepare_params(const double* __restrict__ weights, const double* __restrict__ means,
                               const double* __restrict__ pchol, int rk_total,
                               T* __restrict__ kparams, T* __restrict__ log_const) {
    constexpr int PS = gmm::Layout<D, SPHERICAL>::PS;
    const int rk = blockIdx.x * blockDim.x + threadIdx.x;
    if (rk >= rk_total) return;
    write_kernel_params<T, D, SPHERICAL>(weights[rk], means + (size_t)rk * D,
                                         pchol + (size_t)rk * (SPHERICAL ? 1 : D),
                                         kparams + (size_t)rk * PS, log_const + rk);
}

// ------------------------------------------------------------------------------------------------
// The M-step as its own launch (large problems), one block per restart of the group.
template <typename T, int D, bool SPHERICAL>
__global__ void diag_mstep(const double* __restrict__ stats, int n_components,
                           const unsigned long long* __restrict__ args) {
    const MStepArgs<T> a = load_mstep_args<T>(args);
    mstep_restart<T, D, SPHERICAL>(blockIdx.x, gridDim.x, n_components, stats, a);
}
