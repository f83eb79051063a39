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
