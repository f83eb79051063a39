// Device initialisation: the two data passes of k-means++ seeding (gmm_core/_init.py).
//
// Every restart of a fit is seeded in the same passes. ``closest`` holds, per restart, the squared
// distance of every sample to its nearest chosen centre (float32, (R, ld) with this chunk's rows
// starting at column ``row0``). Distances are computed exactly as sum (x - c)^2 (no expanded
// quadratic form, so nothing cancels), the differences in the data's type and the sum in float64.
//
//   kpp_potentials : pot[c] += sum_rows min(closest[r(c), row], |x_row - cand_c|^2) for the
//                    candidates c = r * n_trials + l of every restart r (scikit-learn's greedy
//                    k-means++ keeps the candidate with the smallest potential)
//   kpp_update     : closest[r, row] = min(closest[r, row], |x_row - centre_r|^2)
//
// ``closest`` is float32 whatever the data (4 bytes per sample and restart; it only weighs the
// sampling of the next candidates), the potentials are float64.
//
// Only the scalar type is a template parameter: D, the number of candidates and of restarts are
// runtime values, so one small module serves every shape (no compile for a new shape).

#ifndef GMM_INIT_NT
#define GMM_INIT_NT 256
#endif

namespace gmmi {
template <typename T>
__device__ __forceinline__ double sqdist(const T* __restrict__ x, const T* __restrict__ y, int d) {
    double s = 0.0;
    for (int j = 0; j < d; ++j) {
        const double t = (double)(x[j] - y[j]);
        s += t * t;
    }
    return s;
}
}  // namespace gmmi

// Dynamic shared memory: n_restarts * n_trials doubles (the block's partial potentials).
template <typename T>
__global__ void __launch_bounds__(GMM_INIT_NT)
kpp_potentials(const T* __restrict__ X, long long n, int d, const T* __restrict__ cand,
               int n_restarts, int n_trials, const float* __restrict__ closest, long long ld,
               long long row0, double* __restrict__ pot) {
    extern __shared__ double s_pot[];
    const int n_cand = n_restarts * n_trials;
    for (int c = threadIdx.x; c < n_cand; c += blockDim.x) s_pot[c] = 0.0;
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long base = (long long)blockIdx.x * blockDim.x; base < n; base += stride) {
        const long long row = base + threadIdx.x;
        const bool valid = row < n;
        const T* x = X + (valid ? row : 0) * d;
        for (int c = 0; c < n_cand; ++c) {
            double v = 0.0;
            if (valid) {
                const double cl = (double)closest[(long long)(c / n_trials) * ld + row0 + row];
                const double s = gmmi::sqdist(x, cand + (long long)c * d, d);
                v = s < cl ? s : cl;
            }
            for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
            if (lane == 0) atomicAdd(s_pot + c, v);
        }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < n_cand; c += blockDim.x) atomicAdd(pot + c, s_pot[c]);
}

template <typename T>
__global__ void __launch_bounds__(GMM_INIT_NT)
kpp_update(const T* __restrict__ X, long long n, int d, const T* __restrict__ centres,
           int n_restarts, float* __restrict__ closest, long long ld, long long row0) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x; row < n;
         row += stride) {
        const T* x = X + row * d;
        for (int r = 0; r < n_restarts; ++r) {
            const double s = gmmi::sqdist(x, centres + (long long)r * d, d);
            float* cl = closest + (long long)r * ld + row0 + row;
            if (s < (double)*cl) *cl = (float)s;  // rounding keeps the new value <= the old
        }
    }
}

// Column statistics of a row-major (n, d) array in one pass over it (the data's moments and the
// finite check, gmm_core/_cupy/checks.py): block b writes partial[b] = [sum x (d) | sum x^2 (d) |
// max |x| over the finite values | number of non-finite values], float64. Thread t of the grid
// owns column t % d of the rows t / d + k * sweep (consecutive threads read consecutive
// elements: coalesced). A block sums its threads of one column in thread order, and the host
// sums the blocks in order: no atomics, so the same data give the same bits every time.
template <typename T>
__global__ void __launch_bounds__(GMM_INIT_NT)
column_stats(const T* __restrict__ X, long long n, int d, double* __restrict__ partial) {
    __shared__ double s1[GMM_INIT_NT], s2[GMM_INIT_NT], sm[GMM_INIT_NT], sb[GMM_INIT_NT];
    const long long first = (long long)blockIdx.x * blockDim.x;
    const long long tid = first + threadIdx.x;
    const long long sweep = ((long long)gridDim.x * blockDim.x) / d;  // rows per sweep
    double a = 0.0, b = 0.0, m = 0.0, bad = 0.0;
    if (tid < sweep * d) {
        const long long col = tid % d;
        for (long long row = tid / d; row < n; row += sweep) {
            const double v = (double)X[row * d + col];
            if (isfinite(v)) {
                a += v;
                b += v * v;
                m = fmax(m, fabs(v));
            } else {
                bad += 1.0;
            }
        }
    }
    s1[threadIdx.x] = a;
    s2[threadIdx.x] = b;
    sm[threadIdx.x] = m;
    sb[threadIdx.x] = bad;
    __syncthreads();
    double* out = partial + (long long)blockIdx.x * (2 * d + 2);
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        double x1 = 0.0, x2 = 0.0;
        for (int j = (int)(((c - first % d) % d + d) % d); j < (int)blockDim.x; j += d) {
            x1 += s1[j];
            x2 += s2[j];
        }
        out[c] = x1;
        out[d + c] = x2;
    }
    if (threadIdx.x == 0) {
        double mm = 0.0, bb = 0.0;
        for (int j = 0; j < (int)blockDim.x; ++j) {
            mm = fmax(mm, sm[j]);
            bb += sb[j];
        }
        out[2 * d] = mm;
        out[2 * d + 1] = bb;
    }
}
