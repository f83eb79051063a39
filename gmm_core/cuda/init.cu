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
