// Full covariance: the M-step and the E-step constants on the device, one block per (restart,
// component), float64 throughout (the pass itself is two cuBLAS GEMMs over quadratic features,
// see gmm_core/_cupy_engine.py). Each replaces a chain of small CuPy operations (batched
// Cholesky, solve, products, fancy indexing, casts) that cost more than the pass's GEMMs' share
// of an iteration: launch-bound work on 32 x 32 matrices.
//
//   full_mstep     : statistics -> weights, means, covariances (scikit-learn's formulas, with the
//                    reg_covar ridge and the mean-term factor 2 - nk_raw / nk of
//                    gmm_core/_gaussian.py), precision Cholesky factors U = (L^-1)^T of the
//                    Cholesky factor L of each covariance. A covariance that is not positive
//                    definite yields NaN factors (the estimator's loop checks them), as the CuPy
//                    Cholesky does.
//   full_constants : (weights, means, U) -> the pass's GEMM weights and constants:
//                    log w + log N(x) = phi(x) . M[:, rk] + c[rk], phi(x) = [x_i x_j (i <= j), x],
//                    M = -1/2 [P_ij (x2 off the diagonal); -2 P mu], P = U U^T,
//                    c = log w + sum log U_dd - D/2 log 2 pi - 1/2 mu^T P mu.

#ifndef GMM_FULL_NT
#define GMM_FULL_NT 256
#endif

namespace gmmf {
__host__ __device__ constexpr int triu_index(int i, int j, int D) {  // np.triu_indices order
    return i * D - i * (i - 1) / 2 + (j - i);
}
}  // namespace gmmf

// stats: nk (RK), sx (RK, D), sxx (RK, D, D); outputs restart-major like Params.
template <int D>
__global__ void __launch_bounds__(GMM_FULL_NT)
full_mstep(const double* __restrict__ nk_raw, const double* __restrict__ sx,
           const double* __restrict__ sxx, int K, double reg_covar, double eps,
           double* __restrict__ weights, double* __restrict__ means,
           double* __restrict__ covariances, double* __restrict__ pchol) {
    constexpr int NT = GMM_FULL_NT, DP = D + 1;  // padded rows: column walks hit distinct banks
    __shared__ double s_l[D * DP];                // covariance, then its Cholesky factor L
    __shared__ double s_y[D * DP];                // L^-1
    __shared__ double s_mu[D];
    __shared__ double s_total;
    const int rk = blockIdx.x, r = rk / K, t = threadIdx.x;
    const double nk = nk_raw[rk] + eps;
    if (t == 0) {
        double total = 0.0;
        for (int k = 0; k < K; ++k) total += nk_raw[r * K + k] + eps;
        s_total = total;
    }
    for (int d = t; d < D; d += NT) s_mu[d] = sx[(size_t)rk * D + d] / nk;
    __syncthreads();
    const double factor = 2.0 - nk_raw[rk] / nk;
    for (int e = t; e < D * D; e += NT) {
        const int i = e / D, j = e - i * D;
        double c = sxx[(size_t)rk * D * D + e] / nk - s_mu[i] * s_mu[j] * factor;
        if (i == j) c += reg_covar;
        s_l[i * DP + j] = c;
        covariances[(size_t)rk * D * D + e] = c;
    }
    if (t == 0) weights[rk] = nk / s_total;
    for (int d = t; d < D; d += NT) means[(size_t)rk * D + d] = s_mu[d];
    __syncthreads();
    // right-looking Cholesky, lower triangle (a negative pivot gives NaN, which propagates)
    for (int j = 0; j < D; ++j) {
        if (t == 0) s_l[j * DP + j] = sqrt(s_l[j * DP + j]);
        __syncthreads();
        const double pivot = s_l[j * DP + j];
        for (int i = j + 1 + t; i < D; i += NT) s_l[i * DP + j] /= pivot;
        __syncthreads();
        const int m = D - 1 - j;  // trailing block: rows/columns j+1 .. D-1, lower triangle
        for (int e = t; e < m * m; e += NT) {
            const int i = j + 1 + e / m, k = j + 1 + e % m;
            if (k <= i) s_l[i * DP + k] -= s_l[i * DP + j] * s_l[k * DP + j];
        }
        __syncthreads();
    }
    // Y = L^-1 by forward substitution, one column per thread
    for (int c = t; c < D; c += NT) {
        for (int i = 0; i < c; ++i) s_y[i * DP + c] = 0.0;
        for (int i = c; i < D; ++i) {
            double v = i == c ? 1.0 : 0.0;
            for (int k = c; k < i; ++k) v -= s_l[i * DP + k] * s_y[k * DP + c];
            s_y[i * DP + c] = v / s_l[i * DP + i];
        }
    }
    __syncthreads();
    for (int e = t; e < D * D; e += NT) {  // U = Y^T (upper triangular)
        const int i = e / D, j = e - i * D;
        pchol[(size_t)rk * D * D + e] = s_y[j * DP + i];
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
