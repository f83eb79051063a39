// Bookkeeping of the estimator's EM loop on the device (gmm_core/_em_loop.py with a CuPy engine:
// full and tied covariance, streamed data), so that an iteration needs no host round trip and no
// generated CuPy kernels. Per iteration, after the pass and the M-step, one launch (em_update):
//
//   keep   (every block) restarts that stopped iterating keep their parameters (the M-step's new
//          arrays are overwritten with the old values there), and a non-finite precision factor
//          of a restart still iterating sets *failed (the loop raises at its next read of the
//          flags: a covariance that is not positive definite). A stopped restart's new values are
//          discarded unread, so they are not checked: its pass may have skipped it (zeros).
//   track  (the last block of each grid row, after every block of the row has read the restart's
//          active flag) the restart's lower bound loglik / weight_sum, its change, the history
//          row of this iteration (NaN once stopped), the iteration count and the convergence
//          test |change| < tol, as scikit-learn's loop.
//
// Two launches (keep, then track) cost 3.2 us each at base clocks on an H200, as much as their
// work: the full case's iteration is 1.1 ms.
//
// Parameters are float64, restart-major and C-contiguous (Params of gmm_core/_gaussian.py); the
// flags are int32.
//
// loop_mstep: the M-step of diag and spherical covariances in one launch (gmm_core/_gaussian.py's
// m_step with check=False, the same float64 operations in the same order, so the same values
// but for the order of two sums), in place of some fifteen generated CuPy kernels whose launches
// kept the device idle for ~0.8 ms per large-K iteration.

#ifndef GMM_LOOP_NT
#define GMM_LOOP_NT 256
#endif

namespace gmml {
// a[r * n + i] = b[r * n + i] for the restart of this grid row, over the threads of its blocks
__device__ __forceinline__ void keep(double* __restrict__ a, const double* __restrict__ b,
                                     long long n, int r) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        a[(long long)r * n + i] = b[(long long)r * n + i];
}
// max(v, 0) as NumPy's maximum: a NaN stays NaN (the loop's flags then catch it)
__device__ __forceinline__ double floor0(double v) { return isnan(v) ? v : fmax(v, 0.0); }
}  // namespace gmml

// Grid (blocks, R): grid row r handles restart r. n_*: values per restart of each array.
// history: (max_iter, R), row it - 1 written; it counts from 1. arrivals: (R,) zeros (the last
// block of a row resets its counter).
__global__ void __launch_bounds__(GMM_LOOP_NT)
em_update(double* __restrict__ weights, const double* __restrict__ old_weights,
          long long n_weights, double* __restrict__ means, const double* __restrict__ old_means,
          long long n_means, double* __restrict__ covariances,
          const double* __restrict__ old_covariances, long long n_covariances,
          double* __restrict__ pchol, const double* __restrict__ old_pchol, long long n_pchol,
          int* __restrict__ active, int* __restrict__ failed, const double* __restrict__ loglik,
          double weight_sum, int it, double tol, double* __restrict__ bound,
          double* __restrict__ change, double* __restrict__ history, int* __restrict__ converged,
          int* __restrict__ n_iter, unsigned* __restrict__ arrivals) {
    const int r = blockIdx.y, n_restarts = gridDim.y;
    const bool keep_old = !active[r];  // read before this block arrives (below)
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n_pchol;
         i += stride) {
        const long long at = (long long)r * n_pchol + i;
        if (keep_old) pchol[at] = old_pchol[at];
        else if (!isfinite(pchol[at])) *failed = 1;
    }
    if (keep_old) {
        gmml::keep(weights, old_weights, n_weights, r);
        gmml::keep(means, old_means, n_means, r);
        gmml::keep(covariances, old_covariances, n_covariances, r);
    }
    __shared__ bool last;
    __syncthreads();  // every thread of the block has read active[r]
    if (threadIdx.x == 0) {
        __threadfence();
        last = atomicAdd(arrivals + r, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!last || threadIdx.x != 0) return;
    arrivals[r] = 0u;  // every block of the row has arrived: none reads active[r] any more
    const double nan = __longlong_as_double(0x7ff8000000000000LL);
    double* row = history + (long long)(it - 1) * n_restarts;
    if (keep_old) {  // its pass may have skipped it (zero statistics): no change to report
        change[r] = nan;
        row[r] = nan;
        return;
    }
    const double now = loglik[r] / weight_sum;
    const double delta = now - bound[r];
    change[r] = delta;
    bound[r] = now;
    row[r] = now;
    n_iter[r] = it;
    if (fabs(delta) < tol) {  // NaN: not converged, as the host loop
        converged[r] = 1;
        active[r] = 0;
    }
}

// Grid (blocks, R), one thread per component of restart r = blockIdx.y (grid-stride), its D
// features in a rolled loop. nk_raw (R, K), sx (R, K, D), sxx (R, K, D) diag or (R, K)
// spherical, shift (D) or null: float64. Writes weights (R, K), means (R, K, D), covariances
// and pchol (R, K, D) diag or (R, K) spherical:
//   nk = nk_raw + eps, mu = (sx - eps shift) / nk,
//   cross = mu (2 sx - nk_raw mu) / nk (per feature),
//   diag: var = max(sxx / nk - cross, 0) + reg_covar;
//   spherical: var = max(sxx / nk - sum_d cross, 0) / D + reg_covar;
//   pchol = 1 / sqrt(var) (not finite for var <= 0: the loop's flags catch it),
//   weights = nk / sum_k nk (the sum over the restart's components in a fixed order, by warp 0
//   of every block).
// Rounded intrinsics keep each operation as CuPy's separate kernels round it (no contraction).
__global__ void __launch_bounds__(GMM_LOOP_NT)
loop_mstep(const double* __restrict__ nk_raw, const double* __restrict__ sx,
           const double* __restrict__ sxx, int K, int D, bool diag, double reg_covar, double eps,
           const double* __restrict__ shift, double* __restrict__ weights,
           double* __restrict__ means, double* __restrict__ covariances,
           double* __restrict__ pchol) {
    __shared__ double s_total;
    const int r = blockIdx.y;
    if (threadIdx.x < 32) {
        double part = 0.0;
        for (int k = threadIdx.x; k < K; k += 32) part += __dadd_rn(nk_raw[r * K + k], eps);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1)
            part += __shfl_xor_sync(0xffffffffu, part, off);
        if (threadIdx.x == 0) s_total = part;
    }
    __syncthreads();
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < K; k += gridDim.x * blockDim.x) {
        const long long rk = (long long)r * K + k;
        const double n_raw = nk_raw[rk], nk = __dadd_rn(n_raw, eps);
        weights[rk] = __ddiv_rn(nk, s_total);
        double cross_sum = 0.0;
        for (int d = 0; d < D; ++d) {
            const long long at = rk * D + d;
            const double s = sx[at];
            const double top = shift == nullptr ? s : __dsub_rn(s, __dmul_rn(eps, shift[d]));
            const double mu = __ddiv_rn(top, nk);
            means[at] = mu;
            const double cross =
                __ddiv_rn(__dmul_rn(mu, __dsub_rn(__dmul_rn(2.0, s), __dmul_rn(n_raw, mu))), nk);
            if (diag) {
                const double var =
                    __dadd_rn(gmml::floor0(__dsub_rn(__ddiv_rn(sxx[at], nk), cross)), reg_covar);
                covariances[at] = var;
                pchol[at] = __ddiv_rn(1.0, __dsqrt_rn(var));
            } else {
                cross_sum = __dadd_rn(cross_sum, cross);
            }
        }
        if (!diag) {
            const double var = __dadd_rn(
                __ddiv_rn(gmml::floor0(__dsub_rn(__ddiv_rn(sxx[rk], nk), cross_sum)), (double)D),
                reg_covar);
            covariances[rk] = var;
            pchol[rk] = __ddiv_rn(1.0, __dsqrt_rn(var));
        }
    }
}
