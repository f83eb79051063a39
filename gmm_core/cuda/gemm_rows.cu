// Row-wise steps around the GEMM path's cuBLAS product (gmm_core/_cupy/gemm.py): the quadratic
// features of a row chunk going in, and what scoring reduces each sample's weighted
// log-densities to coming out. Each replaces a few CuPy operations (fancy indexing, products, a
// concatenation; max/exp/sum/log or argmax, a broadcast add) that NVRTC would compile on a
// process's first fit or first predict.
//
//   quad_features : out[row] = [x_i x_j for the pairs (pi[p], pj[p]) | x], the data's type:
//                   full covariance the upper triangle i <= j (np.triu_indices order), diag and
//                   spherical the squares (i = j)
//   score_rows    : wlp[row, k] = lp[row, k] + c[k] (one mixture's weighted log-densities from
//                   the GEMM), then per mode: 0 argmax (the first largest), 1 log-sum-exp, 2 the
//                   posterior probabilities exp(wlp - lse), 3 wlp itself; in the data's type, as
//                   the CuPy operations (max, isfinite/where, exp, sum, log) computed them

#ifndef GMM_ROWS_NT
#define GMM_ROWS_NT 256
#endif

// Block (32, 8): threadIdx.x walks a row's columns, threadIdx.y the rows of a block's group;
// grid-stride over groups of 8 rows.
template <typename T>
__global__ void __launch_bounds__(GMM_ROWS_NT)
quad_features(const T* __restrict__ X, long long n, int d, const long long* __restrict__ pi,
              const long long* __restrict__ pj, int n_pairs, T* __restrict__ out) {
    const int width = n_pairs + d;
    for (long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y; row < n;
         row += (long long)gridDim.x * blockDim.y) {
        const T* x = X + row * d;
        T* o = out + row * width;
        for (int c = threadIdx.x; c < width; c += blockDim.x)
            o[c] = c < n_pairs ? x[pi[c]] * x[pj[c]] : x[c - n_pairs];
    }
}

// One thread per row; lp (n, k) row-major, c (k,). labels (n,) for mode 0, values (n,) for mode
// 1, out (n, k) for modes 2 and 3 (the other outputs may be null).
template <typename T>
__global__ void __launch_bounds__(GMM_ROWS_NT)
score_rows(const T* __restrict__ lp, long long n, int k, const T* __restrict__ c, int mode,
           long long* __restrict__ labels, T* __restrict__ values, T* __restrict__ out) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x; row < n;
         row += stride) {
        const T* a = lp + row * k;
        if (mode == 3) {
            for (int j = 0; j < k; ++j) out[row * k + j] = a[j] + c[j];
            continue;
        }
        // the largest value (argmax: its first index; a NaN wins, as NumPy's argmax)
        T best = a[0] + c[0];
        int at = 0;
        for (int j = 1; j < k; ++j) {
            const T v = a[j] + c[j];
            if (!isnan(best) && (v > best || isnan(v))) {
                best = v;
                at = j;
            }
        }
        if (mode == 0) {
            labels[row] = at;
            continue;
        }
        const T m = isfinite(best) ? best : T(0);
        T sum = T(0);
        for (int j = 0; j < k; ++j) sum += exp(a[j] + c[j] - m);
        const T lse = log(sum) + m;
        if (mode == 1) {
            values[row] = lse;
            continue;
        }
        for (int j = 0; j < k; ++j) out[row * k + j] = exp(a[j] + c[j] - lse);
    }
}
