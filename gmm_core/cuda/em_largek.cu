// The large-K pass (gmm_core/_cupy/large_k.py): diag and spherical EM passes for many components
// (hundreds to thousands, restarts side by side), float32 data, as two cuBLAS float32 GEMMs per
// row chunk around the row-wise kernels below.
//
// A sample's log-densities are an inner product of its features f(x) with per-component weights
// w_k, plus a constant (the expanded quadratic form of centred data):
//   diag       f = [x, x^2]  (F = 2D)    w_k = [mu_k p_k, -p_k / 2]      p = precision
//   spherical  f = [x, |x|^2] (F = D+1)  w_k = [mu_k p_k, -p_k / 2]
//   c_k = log pi_k + log det(U_k) - D/2 log 2 pi - sum_d mu_kd^2 p_kd / 2
// and the statistics are R^T [f(x), 1] (sum r x, sum r x^2 or sum r |x|^2, N_k).
//
// Why float32 GEMMs and not TF32 tensor cores: measured on an H200 (1M x 128, K = 1024), cuBLAS's
// TF32 GEMMs on 3xTF32 split operands (the three products side by side along the inner
// dimension) ran the spherical pass in 12.2 ms against 26.1 ms in float32, but biased the mean
// log-likelihood by -2e-4 (D = 64) to -4e-3 (D = 256) nats per sample: the tensor cores' float32
// accumulation truncates, and over hundreds of large terms of the expanded form that adds up.
// The fused kernels avoid it by flushing their mma sums to float64 every 128 samples, which a
// library GEMM cannot; a fused tensor-core large-K kernel that does is the way to the TF32 speed.
//
// Row layout of the features B (lk_features), FP = F rounded up to a multiple of 8 (aligned
// GEMM operands), LDB = FP + 8:  [f (zero padded to FP) | 1, 0, ..., 0]
// The E-step reads columns [0, FP), the M-step all LDB of them.
//
//   lk_features : B rows of a row chunk of X
//   lk_weights  : W (KP x FP) and c (KP) from float64 parameters
//   lk_rows     : L (rows x KP) += c, then per row and component group (a restart): the group's
//                 log-sum-exp (its log-likelihood, summed per warp in float64) and the
//                 responsibilities exp(L - lse), times the row's weight, written over L; columns
//                 of inactive groups and padding get 0
//   lk_flush    : float64 statistics += the float32 GEMM sums of a few chunks, which are zeroed
#include "tc.cuh"

#ifndef GMM_LK_NT
#define GMM_LK_NT 256
#endif

// One warp per row, grid-stride. X (rows, d) float32, centred.
__global__ void __launch_bounds__(GMM_LK_NT)
lk_features(const float* __restrict__ X, long long rows, int d, int fp, int ldb, bool diag,
            float* __restrict__ B) {
    const int lane = threadIdx.x & 31;
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    for (long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
         row < rows; row += warps) {
        const float* x = X + row * d;
        float* b = B + row * ldb;
        float sq = 0.0f;  // |x|^2 (spherical), summed over the lanes
        if (!diag) {
            for (int j = lane; j < d; j += 32) sq = fmaf(x[j], x[j], sq);
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) sq += __shfl_xor_sync(0xffffffffu, sq, off);
        }
        for (int j = lane; j < ldb; j += 32) {
            float v = 0.0f;
            if (j < d) {
                v = x[j];
            } else if (diag && j < 2 * d) {
                const float u = x[j - d];
                v = u * u;
            } else if (!diag && j == d) {
                v = sq;
            } else if (j == fp) {
                v = 1.0f;
            }
            b[j] = v;
        }
    }
}

// One thread per (component, feature) of W, grid-stride; padding components (k >= rk) get
// zeros and c = 0 (the row kernels never read them). weights (rk), means (rk, d), prec_chol
// (rk, d) diag or (rk,) spherical: float64; W and c in T (float: lk_weights, double:
// lk_weights64).
template <typename T>
__device__ __forceinline__ void fill_weights(const double* __restrict__ weights,
                                             const double* __restrict__ means,
                                             const double* __restrict__ prec_chol, int rk, int kp,
                                             int d, bool diag, int fp, T* __restrict__ W,
                                             T* __restrict__ c) {
    const long long total = (long long)kp * fp;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int k = (int)(i / fp), j = (int)(i % fp);
        double v = 0.0;
        if (k < rk) {
            if (j < d) {
                const double u = diag ? prec_chol[(long long)k * d + j] : prec_chol[k];
                v = means[(long long)k * d + j] * u * u;
            } else if (diag && j < 2 * d) {
                const double u = prec_chol[(long long)k * d + j - d];
                v = -0.5 * u * u;
            } else if (!diag && j == d) {
                v = -0.5 * prec_chol[k] * prec_chol[k];
            }
        }
        W[(long long)k * fp + j] = (T)v;
        if (j == 0) {
            double cst = 0.0;
            if (k < rk) {
                double log_det = 0.0, quad = 0.0;
                for (int e = 0; e < d; ++e) {
                    const double u = diag ? prec_chol[(long long)k * d + e] : prec_chol[k];
                    const double m = means[(long long)k * d + e];
                    if (diag) log_det += log(u);
                    quad += m * m * u * u;
                }
                if (!diag) log_det = d * log(prec_chol[k]);
                cst = log(weights[k]) + log_det - 0.5 * d * 1.8378770664093453 - 0.5 * quad;
            }
            c[k] = (T)cst;
        }
    }
}

__global__ void __launch_bounds__(GMM_LK_NT)
lk_weights(const double* __restrict__ weights, const double* __restrict__ means,
           const double* __restrict__ prec_chol, int rk, int kp, int d, bool diag, int fp,
           float* __restrict__ W, float* __restrict__ c) {
    fill_weights(weights, means, prec_chol, rk, kp, d, diag, fp, W, c);
}

// A log-density in log2 units, rounded to float32 before anything else reads it: the max and
// the log-sum-exp are taken over these rounded values, so the responsibilities must be too. A
// plain product would let the compiler fuse it into the later subtraction (an FMA keeps the
// unrounded product): exp2(v - lse) then sees v's rounding error, which for a Lloyd pass's
// hard mixture (log-densities ~1e12, half an ulp ~3e4) turned 0/1 responsibilities into inf.
__device__ __forceinline__ float logit2(float l, float c) {
    return __fmul_rn(l + c, 1.4426950408889634f);
}

// One warp per row, grid-stride; groups are contiguous column ranges [gs[g], gs[g + 1]).
// ll_partial (gridDim.x * warps per block, n_groups): each warp adds its rows' weighted
// log-sum-exp in float64, in a fixed order over the chunks of a pass (the same grid each
// launch), and the caller sums the warps: deterministic.
__global__ void __launch_bounds__(GMM_LK_NT)
lk_rows(float* __restrict__ L, long long rows, int kp, const float* __restrict__ c,
        const int* __restrict__ gs, int n_groups, const int* __restrict__ active,
        const float* __restrict__ sample_weight, double* __restrict__ ll_partial) {
    const int lane = threadIdx.x & 31;
    const int wpb = blockDim.x >> 5;
    const long long gw = (long long)blockIdx.x * wpb + (threadIdx.x >> 5);
    const long long warps = (long long)gridDim.x * wpb;
    constexpr float LN2 = 0.6931471805599453f;
    double* llw = ll_partial + gw * n_groups;  // added to (the caller zeroes it per pass)
    for (long long row = gw; row < rows; row += warps) {
        float* l = L + row * kp;
        const float wn = sample_weight != nullptr ? sample_weight[row] : 1.0f;
        for (int g = 0; g < n_groups; ++g) {
            const int c0 = gs[g], c1 = gs[g + 1];
            if (active != nullptr && !active[g]) {
                for (int k = c0 + lane; k < c1; k += 32) l[k] = 0.0f;
                continue;
            }
            // online max and sum of 2^(v - max) per lane (log2 units), then across the warp
            const float neg_inf = __int_as_float(0xff800000);
            float m = neg_inf, s = 0.0f;
            for (int k = c0 + lane; k < c1; k += 32) {
                const float v = logit2(l[k], c[k]);
                if (v == neg_inf) continue;  // a component of weight 0
                if (v > m) {
                    s = s * tc::ex2(m - v) + 1.0f;
                    m = v;
                } else {
                    s += tc::ex2(v - m);
                }
            }
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) {
                const float mo = __shfl_xor_sync(0xffffffffu, m, off);
                const float so = __shfl_xor_sync(0xffffffffu, s, off);
                const float mn = fmaxf(m, mo);
                s = (m == neg_inf ? 0.0f : s * tc::ex2(m - mn)) +
                    (mo == neg_inf ? 0.0f : so * tc::ex2(mo - mn));
                m = mn;
            }
            const float lse2 = m + tc::lg2(s);  // log2 units
            for (int k = c0 + lane; k < c1; k += 32)
                l[k] = wn * tc::ex2(logit2(l[k], c[k]) - lse2);
            if (lane == 0) llw[g] += (double)wn * (double)(lse2 * LN2);
        }
        for (int k = gs[n_groups] + lane; k < kp; k += 32) l[k] = 0.0f;
    }
}

// One thread per (component, feature), grid-stride, components fastest. S column-major
// (ld >= rk rows, columns [f (fp) | 1 | pad]): the float32 GEMM sums; sf (rk, f) and nk (rk)
// float64.
__global__ void __launch_bounds__(GMM_LK_NT)
lk_flush(float* __restrict__ S, int rk, int ld, int fp, int f, double* __restrict__ sf,
         double* __restrict__ nk) {
    const long long total = (long long)rk * (f + 1);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int k = (int)(i % rk), j = (int)(i / rk);
        if (j == f) {
            float* s = S + (long long)fp * ld + k;
            nk[k] += (double)*s;
            *s = 0.0f;
        } else {
            float* s = S + (long long)j * ld + k;
            sf[(long long)k * f + j] += (double)*s;
            *s = 0.0f;
        }
    }
}

// ---- The float64 E-step (LargeKPass._accumulate_f64; config.large_k_f64) ----
// Where float64 runs on tensor cores (compute capability 8.0, 9.0, 10.0: DMMA), the
// log-densities are one cuBLAS float64 GEMM of float64 features [x, x^2] (diag) or [x, |x|^2]
// (spherical) with float64 weights: no digit of the expanded form's cancelling terms is lost, at
// 67 TFLOPS (H100/H200) against the float32 GEMM's 40-46. The statistics are cuBLAS TF32 GEMMs
// (strided batched: each slice of rows sums into a float32 slot of its own, lk_flush64 adds the
// slots into float64, so no float32 sum runs over more than a slice) of the responsibilities
// rounded to the nearest TF32 once (r~: N_k and every moment weigh a row by the same r~, the
// weights of one weighted mean) with split features
//   F = [hi(x) (d) | lo(x) (d) | hi(s) (ns) | lo(s) (ns) | 1 | 0 ...]   (LDF per row)
//   s = x^2 (diag, ns = d) or |x|^2 (spherical, ns = 1), hi = nearest TF32, lo = the rest (TF32)
// so sum r~ x is float32-exact in two products.
//   lk_features64 : B64 (rows, fp) float64 [x | s] and F (rows, ldf) float32 of a row chunk
//   lk_weights64  : W (kp, fp) and c (kp) float64 (lk_weights' values, unrounded)
//   lk_rows64     : per row and restart, the log-sum-exp of L + c (float64), the
//                   log-likelihood (float64 per warp) and r~ = tf32(w_n exp(L + c - lse)) into R
//   lk_flush64    : float64 statistics += the slots' float32 sums (hi + lo per moment)

namespace lk {
// the nearest TF32 to v, and the nearest TF32 to what it leaves
__device__ __forceinline__ void split_tf32(double v, float& hi, float& lo) {
    hi = tc::round_tf32((float)v);
    lo = tc::round_tf32((float)(v - (double)hi));
}
}  // namespace lk

// One warp per row, grid-stride. X (rows, d) float32, centred.
__global__ void __launch_bounds__(GMM_LK_NT)
lk_features64(const float* __restrict__ X, long long rows, int d, int fp, bool diag, int ldf,
              double* __restrict__ B, float* __restrict__ F) {
    const int lane = threadIdx.x & 31;
    const int ns = diag ? d : 1;
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    for (long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
         row < rows; row += warps) {
        const float* x = X + row * d;
        double sq = 0.0;  // |x|^2 (spherical)
        if (!diag) {
            for (int j = lane; j < d; j += 32) sq = fma((double)x[j], (double)x[j], sq);
            sq = gmm::warp_sum(sq);
        }
        double* b = B + row * fp;
        for (int j = lane; j < fp; j += 32) {
            double v = 0.0;
            if (j < d) {
                v = x[j];
            } else if (diag && j < 2 * d) {
                const double u = x[j - d];
                v = u * u;
            } else if (!diag && j == d) {
                v = sq;
            }
            b[j] = v;
        }
        float* f = F + row * ldf;
        for (int j = lane; j < ldf; j += 32) {
            float v = 0.0f, hi, lo;
            if (j < 2 * d) {
                lk::split_tf32(x[j < d ? j : j - d], hi, lo);
                v = j < d ? hi : lo;
            } else if (j < 2 * d + 2 * ns) {
                const int e = (j - 2 * d) % ns;
                const double s = diag ? (double)x[e] * (double)x[e] : sq;
                lk::split_tf32(s, hi, lo);
                v = j < 2 * d + ns ? hi : lo;
            } else if (j == 2 * d + 2 * ns) {
                v = 1.0f;
            }
            f[j] = v;
        }
    }
}

// lk_weights' values unrounded (float64)
__global__ void __launch_bounds__(GMM_LK_NT)
lk_weights64(const double* __restrict__ weights, const double* __restrict__ means,
             const double* __restrict__ prec_chol, int rk, int kp, int d, bool diag, int fp,
             double* __restrict__ W, double* __restrict__ c) {
    fill_weights(weights, means, prec_chol, rk, kp, d, diag, fp, W, c);
}

// One warp per row, grid-stride; groups as lk_rows. L (rows x kp) float64 GEMM sums, R (rows x
// kp) float32 r~ (0 for inactive groups and padding). The log-sum-exp in float64 (a float32
// online sum of 2^((v - max) log2 e) per lane, merged across the warp).
__global__ void __launch_bounds__(GMM_LK_NT)
lk_rows64(const double* __restrict__ L, long long rows, int kp, const double* __restrict__ c,
          const int* __restrict__ gs, int n_groups, const int* __restrict__ active,
          const float* __restrict__ sample_weight, double* __restrict__ ll_partial,
          float* __restrict__ R) {
    const int lane = threadIdx.x & 31;
    const int wpb = blockDim.x >> 5;
    const long long gw = (long long)blockIdx.x * wpb + (threadIdx.x >> 5);
    const long long warps = (long long)gridDim.x * wpb;
    constexpr double LOG2E = 1.4426950408889634;
    const double neg_inf = __longlong_as_double(0xfff0000000000000ULL);
    double* llw = ll_partial + gw * n_groups;  // added to (the caller zeroes it per pass)
    for (long long row = gw; row < rows; row += warps) {
        const double* l = L + row * kp;
        float* r = R + row * kp;
        const float wn = sample_weight != nullptr ? sample_weight[row] : 1.0f;
        for (int g = 0; g < n_groups; ++g) {
            const int c0 = gs[g], c1 = gs[g + 1];
            if (active != nullptr && !active[g]) {
                for (int k = c0 + lane; k < c1; k += 32) r[k] = 0.0f;
                continue;
            }
            double m = neg_inf;
            float s = 0.0f;
            for (int k = c0 + lane; k < c1; k += 32) {
                const double v = l[k] + c[k];
                if (v == neg_inf) continue;  // a component of weight 0
                if (v > m) {
                    s = s * tc::ex2((float)((m - v) * LOG2E)) + 1.0f;
                    m = v;
                } else {
                    s += tc::ex2((float)((v - m) * LOG2E));
                }
            }
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) {
                const double mo = __shfl_xor_sync(0xffffffffu, m, off);
                const float so = __shfl_xor_sync(0xffffffffu, s, off);
                const double mn = fmax(m, mo);
                s = (m == neg_inf ? 0.0f : s * tc::ex2((float)((m - mn) * LOG2E))) +
                    (mo == neg_inf ? 0.0f : so * tc::ex2((float)((mo - mn) * LOG2E)));
                m = mn;
            }
            const double lse = m + log((double)s);
            for (int k = c0 + lane; k < c1; k += 32)
                r[k] = tc::round_tf32(wn * tc::ex2((float)((l[k] + c[k] - lse) * LOG2E)));
            if (lane == 0) llw[g] += (double)wn * lse;
        }
        for (int k = gs[n_groups] + lane; k < kp; k += 32) r[k] = 0.0f;
    }
}

// One thread per (component, statistic), grid-stride, components fastest. S: nb slots of
// (kp x ldf) column-major float32 sums (slot b at S + b kp ldf); sf (rk, d + ns) and nk (rk)
// float64, added to.
__global__ void __launch_bounds__(GMM_LK_NT)
lk_flush64(const float* __restrict__ S, int nb, int rk, int kp, int ldf, int d, int ns,
           double* __restrict__ sf, double* __restrict__ nk) {
    const int f = d + ns;
    const long long total = (long long)rk * (f + 1);
    const long long slot = (long long)kp * ldf;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int k = (int)(i % rk), j = (int)(i / rk);
        const int hi = j == f ? 2 * f : (j < d ? j : d + j);
        const int lo = j < d ? d + j : 2 * d + ns + (j - d);
        double v = 0.0;
        for (int b = 0; b < nb; ++b) {
            const float* s = S + b * slot;
            v += (double)s[(long long)hi * kp + k];
            if (j < f) v += (double)s[(long long)lo * kp + k];
        }
        if (j == f) {
            nk[k] += v;
        } else {
            sf[(long long)k * f + j] += v;
        }
    }
}
