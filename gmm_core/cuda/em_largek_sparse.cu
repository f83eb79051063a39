// The large-K pass with a screened E-step (gmm_core/_cupy/large_k_sparse.py): diag and spherical
// EM passes for many components where each sample's responsibilities sit on a few of them.
//
// In many dimensions a sample's log-densities over hundreds of components spread over hundreds
// of nats: all but a few responsibilities are below exp(-30) and add nothing a float32 (or a
// float64 sum over a million samples) keeps. The pass finds those few with a cheap product and
// a proven error bound, computes only them exactly, and sums the statistics over them alone:
//
// 1. screening (cuBLAS TF32 GEMM, one per row chunk; the caller): G = f . W^T with the large-K
//    pass's weights (lk_weights: w_k = [mu_k p_k, -p_k / 2], c_k), f = [x, x^2] (diag) or f = x
//    (spherical: the -p_k |x|^2 / 2 term is added here exactly, so the product's error scales
//    with |x| |mu_k p_k| and not with |x|^2 p_k). A TF32 product reads each operand to 2^-10
//    relative and sums in float32: |G~ - G| <= U |f| |w_k| (Cauchy-Schwarz, U = 2^-8: twice the
//    operands' and the inner sum's rounding together).
// 2. lks_select (one warp per row): per restart, v_k = G~ + c_k (- p_k |x|^2 / 2) and its bound
//    b_k; lo = max_k (v_k - b_k) is below the true maximum, so a component with
//    v_k + b_k < lo - T has a responsibility below exp(-T): it is skipped. The others (at most
//    LKS_CMAX per restart) get their log-densities exactly, in float64 from x - mu_k, and the
//    row's log-sum-exp, log-likelihood and responsibilities over them. T = log(n) + 17 (the
//    caller) keeps what is skipped below a float32 ulp of one sample's weight in any sum over
//    all rows. Rows with more candidates are listed for the dense pass (em_largek.cu), which
//    takes them whole; a data chunk whose pairs overflow their capacity goes through the dense
//    pass entirely.
// 3. the pairs' keys (component << 32 | row) are sorted (thrust's radix sort, the caller) and
//    lks_order_keys finds each one's responsibility in its row's pairs: each component's rows
//    in row order, so the sums are deterministic;
// 4. lks_reduce (one block per run of a few hundred of a component's pairs): N_k, sum r x and
//    sum r x^2 (diag) or r |x|^2 (spherical) in float64; lks_combine adds each component's
//    runs in order into the pass's statistics.
//
// The screen in BF16 (large_k_sparse.SCREEN = "bf16"): operands and product rounded to
// bfloat16 (lks_bf16, lks_features16; cuBLAS, float32 sums), half the bytes written and read,
// at U = 5 * 2^-8: operands 2^-8 relative each (a product within 2^-7 + 2^-16), the float32
// sums within inner * 2^-23 <= 2^-14 (inner <= 512), the product's rounding to bfloat16 2^-8
// (2^-7 were it truncated): about 3.03 * 2^-8, or 4.04 * 2^-8 truncated.
//
//   lks_norms  : the screen's bounds per component and the exact density's constant
//   lks_bf16, lks_features16 : the BF16 screen's operands
//   lks_select<float>, lks_select<unsigned short> : step 2 on a TF32 or a BF16 screen
//   lks_mma<diag>, lks_exact : steps 1 and 2 with the screen in tensor-core tiles ("mma")
//   lks_order_keys : step 3's layout
//   lks_reduce, lks_combine : step 4
//   lks_gather : the listed rows (and their weights) packed for the dense pass
#include "tc.cuh"

#ifndef LKS_NT
#define LKS_NT 256
#endif
// most candidates per row and restart: one per lane
#define LKS_CMAX 32
// lks_select's blocks per SM (its launch bounds; large_k_sparse.SELECT_BLOCKS_PER_SM)
#ifndef LKS_SELECT_BLOCKS
#define LKS_SELECT_BLOCKS 4
#endif
// most features a warp holds in registers (8 per lane)
#define LKS_MAXD 256

// One thread per component (rk), grid-stride. W (kp, fp) and c (kp): the screening weights and
// constants (lk_weights), of which the first `inner` columns of W enter the product; weights
// (rk), prec_chol (rk, d) diag or (rk,) spherical: float64. With q_k = -p_k / 2 (spherical: W's
// column d; 0 for diag, whose product holds the x^2 terms) and n_k = |W[k, :inner]|, a row's
// screened log-density is v_k = G~_k + c_k + q_k |x|^2 with |v_k - true| <= U |f| n_k +
// 4e-6 (|c_k| + |q_k| |x|^2) = b_k, and the kernels evaluate v_k -+ b_k as one chain,
//   fma(U |f|, C, fma(|x|^2, B, G~ + A)),
// from bnd (6, kp): lower (A, B, C) = (c - 4e-6 |c|, q - 4e-6 |q|, -n (1 + 1e-4)) and upper
// (c + 4e-6 |c|, q + 4e-6 |q|, n (1 + 1e-4)). What float32 rounds besides G~: c_k and q_k
// (one rounding each), |x|^2 (a float32 sum over d features: up to ~d/2 ulp, ~13 at d = 256
// in the worst order, 8e-7 relative), B and A (one each) and the chain's three steps, each of
// at most |G~| + |c| + |q| |x|^2: about 17 ulp (1.0e-6) of |c| + |q| |x|^2 in all, inside the
// 4e-6, and 3 ulp of |G~| <= |f| n_k, inside the 1e-4 of U |f| n_k (U >= 2^-8). e0[k] =
// log pi_k + log det U_k - d/2 log 2 pi.
__global__ void __launch_bounds__(LKS_NT)
lks_norms(const float* __restrict__ W, const float* __restrict__ c, int fp, int inner, int rk,
          int kp, const double* __restrict__ weights, const double* __restrict__ prec_chol,
          int d, bool diag, float* __restrict__ bnd, double* __restrict__ e0) {
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < kp; k += gridDim.x * blockDim.x) {
        if (k >= rk) {  // padding to whole float4s: never a candidate
            const float ninf = __int_as_float(0xff800000);
            bnd[k] = ninf;
            bnd[3 * kp + k] = ninf;
            for (int j : {1, 2, 4, 5}) bnd[j * kp + k] = 0.0f;
            continue;
        }
        const float* w = W + (long long)k * fp;
        double s = 0.0;
        for (int j = 0; j < inner; ++j) s += (double)w[j] * (double)w[j];
        const double n = sqrt(s) * (1.0 + 1e-4);
        const double ck = c[k], qk = diag ? 0.0 : (double)w[d];
        bnd[k] = (float)(ck - 4e-6 * fabs(ck));
        bnd[kp + k] = (float)(qk - 4e-6 * fabs(qk));
        bnd[2 * kp + k] = (float)(-n);
        bnd[3 * kp + k] = (float)(ck + 4e-6 * fabs(ck));
        bnd[4 * kp + k] = (float)(qk + 4e-6 * fabs(qk));
        bnd[5 * kp + k] = (float)n;
        double log_det = 0.0;
        if (diag) {
            for (int e = 0; e < d; ++e) log_det += log(prec_chol[(long long)k * d + e]);
        } else {
            log_det = d * log(prec_chol[k]);
        }
        e0[k] = log(weights[k]) + log_det - 0.5 * d * 1.8378770664093453;
    }
}

// float32 as bfloat16 bits, rounded to nearest even (NaN kept a NaN)
__device__ __forceinline__ unsigned short lks_to_bf16(float v) {
    const unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// One warp per row, grid-stride: A (rows, cols; row stride lda) as bfloat16 bits into B (rows,
// ldb), columns [cols, ldb) zero.
__global__ void __launch_bounds__(LKS_NT)
lks_bf16(const float* __restrict__ A, long long rows, int cols, int lda,
         unsigned short* __restrict__ B, int ldb) {
    const int lane = threadIdx.x & 31;
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    for (long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows;
         r += warps) {
        for (int j = lane; j < ldb; j += 32)
            B[r * ldb + j] = j < cols ? lks_to_bf16(A[r * lda + j]) : (unsigned short)0;
    }
}

// One warp per row, grid-stride: the diag screen's features [x, x^2] of X (rows, d) as bfloat16
// bits into B (rows, ldb), zero past 2 d.
__global__ void __launch_bounds__(LKS_NT)
lks_features16(const float* __restrict__ X, long long rows, int d, int ldb,
               unsigned short* __restrict__ B) {
    const int lane = threadIdx.x & 31;
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    for (long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows;
         r += warps) {
        for (int j = lane; j < d; j += 32) {
            const float x = X[r * d + j];
            B[r * ldb + j] = lks_to_bf16(x);
            B[r * ldb + d + j] = lks_to_bf16(x * x);
        }
        for (int j = 2 * d + lane; j < ldb; j += 32) B[r * ldb + j] = 0;
    }
}

namespace lks {
// A screened value: float32 (TF32 screen) or bfloat16 bits (BF16 screen).
__device__ __forceinline__ float value(float v) { return v; }
__device__ __forceinline__ float value(unsigned short h) {
    return __uint_as_float((unsigned)h << 16);
}
// Four screened values from k4 * 4 (16 or 8 bytes, aligned).
__device__ __forceinline__ float4 load4(const float* l, int k4) {
    return reinterpret_cast<const float4*>(l)[k4];
}
__device__ __forceinline__ float4 load4(const unsigned short* l, int k4) {
    const uint2 u = reinterpret_cast<const uint2*>(l)[k4];
    return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
                       __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u));
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

// A screened log-density's bound v_k - b_k or v_k + b_k from its product g, (a, b, c) one
// half of lks_norms' bnd, |x|^2 and U |f| (every kernel evaluates it so, rounded: the same
// bits wherever it is evaluated).
__device__ __forceinline__ float bound(float g, float a, float b, float c, float sq, float ufn) {
    return __fmaf_rn(ufn, c, __fmaf_rn(sq, b, __fadd_rn(g, a)));
}

// A row's screened log-densities' bounds v_k -+ b_k (lks_norms). Rounded operations only:
// every pass over a row must find the same candidates, and the vector and scalar forms the
// same values.
template <class T>
struct Screen {
    const T* l;        // the row's G~ (kp): float32 or bfloat16 bits
    const float* bnd;  // (6, kp)
    int kp;
    float sq, ufn;
    bool vec;  // four components per lane and load (the restarts' ranges 16-byte aligned)
    __device__ __forceinline__ float eval(float g, float a, float b, float c) const {
        return bound(g, a, b, c, sq, ufn);
    }
    // lo: the restart's max_k (v_k - b_k) (at most its true maximum)
    __device__ __forceinline__ float low(int c0, int c1, int lane) const {
        float lo = __int_as_float(0xff800000);
        if (vec) {
            const float4* a4 = reinterpret_cast<const float4*>(bnd);
            const float4* b4 = reinterpret_cast<const float4*>(bnd + kp);
            const float4* c4 = reinterpret_cast<const float4*>(bnd + 2 * kp);
            for (int k4 = (c0 >> 2) + lane; k4 < (c1 >> 2); k4 += 32) {
                const float4 g = load4(l, k4), a = a4[k4], b = b4[k4], c = c4[k4];
                lo = fmaxf(lo, eval(g.x, a.x, b.x, c.x));
                lo = fmaxf(lo, eval(g.y, a.y, b.y, c.y));
                lo = fmaxf(lo, eval(g.z, a.z, b.z, c.z));
                lo = fmaxf(lo, eval(g.w, a.w, b.w, c.w));
            }
        } else {
            for (int k = c0 + lane; k < c1; k += 32)
                lo = fmaxf(lo, eval(value(l[k]), bnd[k], bnd[kp + k], bnd[2 * kp + k]));
        }
        return warp_max(lo);  // -inf components (weight 0) drop out of the max
    }
    // The candidates of components [k0, k0 + span) (span = 32, or 128 with vec) as ballots:
    // mask[e] bit j: component k0 + j (scalar) or k0 + 4 j + e (vec) has v + b >= thr.
    __device__ __forceinline__ void ballots(int k0, int c1, float thr, int lane,
                                            unsigned* mask) const {
        if (vec) {
            // lanes past the restart's range vote no whatever thr is (a sentinel below thr is
            // thr itself where |thr| > 2^24 or thr = -inf: a Lloyd pass's log-densities ~1e11)
            const int k = k0 + 4 * lane;
            const bool in = k < c1;
            float4 u = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (in) {
                const float4 g = load4(l, k >> 2);
                const float4 a = reinterpret_cast<const float4*>(bnd + 3 * kp)[k >> 2];
                const float4 b = reinterpret_cast<const float4*>(bnd + 4 * kp)[k >> 2];
                const float4 c = reinterpret_cast<const float4*>(bnd + 5 * kp)[k >> 2];
                u = make_float4(eval(g.x, a.x, b.x, c.x), eval(g.y, a.y, b.y, c.y),
                                eval(g.z, a.z, b.z, c.z), eval(g.w, a.w, b.w, c.w));
            }
            mask[0] = __ballot_sync(0xffffffffu, in && u.x >= thr);
            mask[1] = __ballot_sync(0xffffffffu, in && u.y >= thr);
            mask[2] = __ballot_sync(0xffffffffu, in && u.z >= thr);
            mask[3] = __ballot_sync(0xffffffffu, in && u.w >= thr);
        } else {
            const int k = k0 + lane;
            const bool cand = k < c1 &&
                              eval(value(l[k]), bnd[3 * kp + k], bnd[4 * kp + k],
                                   bnd[5 * kp + k]) >= thr;
            mask[0] = __ballot_sync(0xffffffffu, cand);
            mask[1] = mask[2] = mask[3] = 0u;
        }
    }
    __device__ __forceinline__ int span() const { return vec ? 128 : 32; }
    __device__ __forceinline__ int component(int k0, int e, int j) const {
        return vec ? k0 + 4 * j + e : k0 + j;
    }
};

// The exact log-density of component kk at the row held in xr (feature lane + 32 t), float64
// from x - mu, summed across the warp (every lane gets it).
__device__ __forceinline__ double exact(const float* xr, int kk, int d, bool diag,
                                        const double* __restrict__ means,
                                        const double* __restrict__ prec_chol,
                                        const double* __restrict__ e0, int lane) {
    const double* mu = means + (long long)kk * d;
    double s = 0.0;
#pragma unroll
    for (int j = 0; j < LKS_MAXD / 32; ++j) {
        const int i = lane + 32 * j;
        if (i < d) {
            const double diff = (double)xr[j] - mu[i];
            const double pc = diag ? prec_chol[(long long)kk * d + i] : 1.0;
            s = fma(pc * pc * diff, diff, s);
        }
    }
    s = gmm::warp_sum(s);
    if (!diag) s *= prec_chol[kk] * prec_chol[kk];
    return e0[kk] - 0.5 * s;
}

// The log-sum-exp over the n candidates the lanes hold (lane j < n: e), float64.
__device__ __forceinline__ double lse_of(double e, int n, int lane) {
    double m = lane < n ? e : __longlong_as_double(0xfff0000000000000ULL);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) m = fmax(m, __shfl_xor_sync(0xffffffffu, m, off));
    return m + log(gmm::warp_sum(lane < n ? exp(e - m) : 0.0));
}

// How many candidates one ballot set holds.
__device__ __forceinline__ int count(const unsigned* mask) {
    return __popc(mask[0]) + __popc(mask[1]) + __popc(mask[2]) + __popc(mask[3]);
}

// The ballot sets of components [c0, c1) against thr in order, each passed to fn(k0, mask)
// until fn returns false. (Two or four spans screened together, their loads in flight at once,
// measured slower: docs/benchmarks.md.)
template <class T, class F>
__device__ __forceinline__ void spans(const Screen<T>& sc, int c0, int c1, float thr, int lane,
                                      F&& fn) {
    for (int k0 = c0; k0 < c1; k0 += sc.span()) {
        unsigned mask[4];
        sc.ballots(k0, c1, thr, lane, mask);
        if (!fn(k0, mask)) return;
    }
}

// The candidates of one ballot set (Screen::ballots at k0) computed exactly, in order: lane j
// keeps the j-th of the restart's (its component and log-density); n counts them.
template <class T>
__device__ __forceinline__ void take(const Screen<T>& sc, unsigned* mask, int k0, const float* xr,
                                     int d, bool diag, const double* __restrict__ means,
                                     const double* __restrict__ prec_chol,
                                     const double* __restrict__ e0, int lane, int& n, int& mine,
                                     double& emine) {
    for (int e = 0; e < 4; ++e) {
        while (mask[e]) {
            const int kk = sc.component(k0, e, __ffs(mask[e]) - 1);
            mask[e] &= mask[e] - 1;
            const double ex = exact(xr, kk, d, diag, means, prec_chol, e0, lane);
            if (lane == n) {
                mine = kk;
                emine = ex;
            }
            ++n;
        }
    }
}

// A restart's n candidates (lane j < n: component mine, log-density emine) written out: their
// pairs from p0, the components' pair counts, and w lse added to the warp's log-likelihood.
__device__ __forceinline__ void emit(int n, int mine, double emine, float w,
                                     unsigned long long rkey, long long p0,
                                     unsigned long long* __restrict__ keys,
                                     double* __restrict__ rv, int* __restrict__ counts,
                                     double* ll, int lane) {
    // one finite candidate: its log-density is the row's log-sum-exp and its responsibility 1
    // (what lse_of and exp give for n = 1, without their float64 exp and log; an infinite one
    // takes them, for their NaN)
    const double first = __shfl_sync(0xffffffffu, emine, 0);
    const bool single = n == 1 && isfinite(first);
    const double lse = single ? first : lse_of(emine, n, lane);
    if (lane < n) {
        keys[p0 + lane] = ((unsigned long long)mine << 32) | rkey;
        rv[p0 + lane] = single ? (double)w : (double)w * exp(emine - lse);
        atomicAdd(counts + mine, 1);
    }
    if (lane == 0) *ll += (double)w * lse;
}

// A row of X (d <= LKS_MAXD) in a warp's registers: feature lane + 32 j in xr[j], 0 past d.
__device__ __forceinline__ void load_row(const float* __restrict__ X, long long row, int d,
                                         int lane, float (&xr)[LKS_MAXD / 32]) {
#pragma unroll
    for (int j = 0; j < LKS_MAXD / 32; ++j) {
        const int i = lane + 32 * j;
        xr[j] = i < d ? X[row * d + i] : 0.0f;
    }
}

// A row's total pairs reserved (n_pairs counts every reservation): its first pair, written to
// rowbase[at], or -1 past cap (nothing written: the caller takes the chunk through the dense
// pass). Every lane gets the same.
__device__ __forceinline__ long long reserve(int total, unsigned long long* __restrict__ n_pairs,
                                             long long cap, long long* __restrict__ rowbase,
                                             long long at, int lane) {
    unsigned long long b0 = 0;
    if (lane == 0) b0 = atomicAdd(n_pairs, (unsigned long long)total);
    const long long base = (long long)__shfl_sync(0xffffffffu, b0, 0);
    if (base + total > cap) return -1;
    if (lane == 0) rowbase[at] = base;
    return base;
}
}  // namespace lks

// One warp per row of a screening chunk, grid-stride. L (rows, kp): the chunk's G~ (T: float32,
// or bfloat16 bits); X (rows, d) its rows (centred float32, d <= LKS_MAXD); groups (restarts, at most 32) are column ranges
// [gs[g], gs[g + 1]) of kp. means (rk, d), prec_chol (rk, d) diag or (rk,), e0 (rk): float64.
// Rows are numbered from row0 within the data chunk (the pairs' and the list's row index).
// A row with no candidate in a restart (all weights 0) or more than LKS_CMAX is listed
// (overflow, n_overflow) for the dense pass. The others reserve their pairs at once:
// keys[p] = component << 32 | row, rv[p] = w_n r from rowbase[row]; counts[k] counts component
// k's pairs. n_pairs counts every reservation: past cap nothing is written, and the caller,
// seeing n_pairs > cap, takes the whole data chunk through the dense pass instead (so which
// rows are kept never depends on the order of the atomics).
// ll_partial (warps of the grid, n_groups): each warp adds its kept rows' w_n lse (float64), in
// a fixed order for a fixed grid: deterministic.
template <class T>
__global__ void __launch_bounds__(LKS_NT, LKS_SELECT_BLOCKS)
lks_select(const T* __restrict__ L, long long rows, int kp, const float* __restrict__ X,
           int d, bool diag, const float* __restrict__ bnd, const double* __restrict__ means,
           const double* __restrict__ prec_chol, const double* __restrict__ e0,
           const int* __restrict__ gs, int n_groups, const int* __restrict__ active,
           const float* __restrict__ sample_weight, float u, float margin, long long row0,
           unsigned long long* __restrict__ keys, double* __restrict__ rv, long long cap,
           unsigned long long* __restrict__ n_pairs, int* __restrict__ counts,
           int* __restrict__ overflow, unsigned int* __restrict__ n_overflow,
           double* __restrict__ ll_partial, long long* __restrict__ rowbase) {
    __shared__ float thr_s[LKS_NT / 32][32];
    const int lane = threadIdx.x & 31;
    const int wpb = blockDim.x >> 5;
    float* thr = thr_s[threadIdx.x >> 5];
    const long long gw = (long long)blockIdx.x * wpb + (threadIdx.x >> 5);
    const long long warps = (long long)gridDim.x * wpb;
    double* llw = ll_partial + gw * n_groups;
    // one restart: its candidates' exact log-densities computed as they are found (two reads
    // of the row's G~); several: counted first, then computed (three reads)
    const bool one = n_groups == 1 && (active == nullptr || active[0]);
    // four components per lane and load where every restart's range is 16-byte aligned
    bool vec = (kp & 3) == 0 && ((size_t)L) % (4 * sizeof(T)) == 0;
    for (int g = 0; g <= n_groups; ++g) vec = vec && (gs[g] & 3) == 0;
    for (long long row = gw; row < rows; row += warps) {
        // the row in registers: feature lane + 32 t
        float xr[LKS_MAXD / 32];
        lks::load_row(X, row, d, lane, xr);
        float sq = 0.0f, s4 = 0.0f;
#pragma unroll
        for (int t = 0; t < LKS_MAXD / 32; ++t) {
            sq = fmaf(xr[t], xr[t], sq);
            s4 = fmaf(xr[t] * xr[t], xr[t] * xr[t], s4);
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            sq += __shfl_xor_sync(0xffffffffu, sq, off);
            s4 += __shfl_xor_sync(0xffffffffu, s4, off);
        }
        const lks::Screen<T> sc{L + row * kp, bnd, kp, sq, u * sqrtf(diag ? sq + s4 : sq) * 1.000001f,
                             vec};
        int total = 0, mine = 0;
        double emine = 0.0;
        bool listed = false;
        if (one) {
            const int c0 = gs[0], c1 = gs[1];
            const float t = __fsub_rn(sc.low(c0, c1, lane), margin);
            lks::spans(sc, c0, c1, t, lane, [&](int k0, unsigned* mask) {
                if (total + lks::count(mask) > LKS_CMAX) {
                    listed = true;
                    return false;
                }
                lks::take(sc, mask, k0, xr, d, diag, means, prec_chol, e0, lane, total, mine,
                          emine);
                return true;
            });
            listed = listed || total == 0;
        } else {
            // phase 1: every active restart's threshold and candidates counted
            for (int g = 0; g < n_groups && !listed; ++g) {
                if (active != nullptr && !active[g]) continue;
                const int c0 = gs[g], c1 = gs[g + 1];
                const float t = __fsub_rn(sc.low(c0, c1, lane), margin);
                if (lane == 0) thr[g] = t;
                int n = 0;
                lks::spans(sc, c0, c1, t, lane, [&](int, unsigned* mask) {
                    n += lks::count(mask);
                    return n <= LKS_CMAX;
                });
                if (n == 0 || n > LKS_CMAX) listed = true;
                total += n;
            }
            __syncwarp();
        }
        if (listed) {
            if (lane == 0) overflow[atomicAdd(n_overflow, 1u)] = (int)(row0 + row);
            continue;
        }
        long long base = lks::reserve(total, n_pairs, cap, rowbase, row0 + row, lane);
        if (base < 0) continue;  // the chunk goes through the dense pass
        const float wrow = sample_weight != nullptr ? sample_weight[row] : 1.0f;
        const unsigned long long rkey = (unsigned long long)(row0 + row);
        if (one) {
            lks::emit(total, mine, emine, wrow, rkey, base, keys, rv, counts, llw, lane);
            continue;
        }
        // phase 2: per restart, the candidates' exact log-densities (lane j keeps the j-th),
        // the log-sum-exp and responsibilities over them
        for (int g = 0; g < n_groups; ++g) {
            if (active != nullptr && !active[g]) continue;
            const int c0 = gs[g], c1 = gs[g + 1];
            int n = 0;
            lks::spans(sc, c0, c1, thr[g], lane, [&](int k0, unsigned* mask) {
                lks::take(sc, mask, k0, xr, d, diag, means, prec_chol, e0, lane, n, mine, emine);
                return true;
            });
            lks::emit(n, mine, emine, wrow, rkey, base, keys, rv, counts, llw + g, lane);
            base += n;
        }
    }
}

// The screen in tensor-core tiles (the "mma" screen): step 1 and the screening of step 2 in
// one kernel, the product never leaving the SM. A block holds 128 rows as bfloat16 features
// in shared memory and streams the components' bfloat16 weights through them in tiles of 128
// (32 inner indices a stage, double-buffered by cp.async), mma.sync m16n8k16 with float32
// sums. Per tile, the running lo (the max of v_k - b_k over every component so far, this
// tile's included: at most the row's final lo; the four columns of warps exchange theirs
// through shared memory, one barrier a tile) screens the tile's components: where
// up16(v_k + b_k) (the bound rounded up to bfloat16, as the list keeps it) reaches
// lo_run - T, the component enters the row's list, a superset of the final candidates
// (lo_run <= lo). After the last tile, one warp per row keeps the entries at or above lo - T
// (lo over all warps), under the bound U = 3 * 2^-8 (operands 2^-8 relative each, a product
// within 2^-7 + 2^-16; the mma's float32 sums, truncating, within 2^-14 at inner <= 512; the
// product never rounded), in component order, for lks_exact (one warp per row at
// lks_select's occupancy: the exact log-densities' loads hide behind 32 warps an SM, not this
// kernel's 8 or 16). A row with no candidate or more than LKS_CMAX is listed for the dense
// pass. One restart (a column range [c0, c1) of kp).
// A row whose list overflows (LKM_CAP entries: the first tiles' lo_run far below the row's
// lo, as in a fit's first passes) is not listed: it is screened again (its rows gathered by
// the caller) with its final lo as seed_in, and its list is then exactly the kept set. What
// is appended and what is kept follow one rule (up16 against a threshold), at a threshold
// never above the final one, so the kept set never depends on the order of the tiles nor on
// a seed at or below lo: which rows are listed depends on the data and the parameters alone.
namespace lkm {
constexpr int NT = 256;   // 8 warps: 2 (64 rows each) x 4 (32 components of each tile)
constexpr int BM = 128;   // rows per tile of rows
constexpr int TN = 128;   // components per tile
#ifndef LKM_KC
#define LKM_KC 32
#endif
constexpr int KC = LKM_KC;  // inner indices per weight stage (a tuning variant: 64)
static_assert(KC % 32 == 0, "lks_mma's stages: whole k16 steps, conflict-free strides");
constexpr int WS = KC / 2 + 4;  // words per component in a stage (+4: no bank conflicts)
#ifndef LKM_CAP
#define LKM_CAP 96
#endif
constexpr int CAP = LKM_CAP;  // list entries per row (the superset)
static_assert(CAP % 32 == 0 && CAP <= 128, "lks_mma's lists: whole warps of entries");
#ifndef LKM_BLOCKS
#define LKM_BLOCKS 2
#endif

// Shared memory of lks_mma, in 4-byte words from the start: the weight stages (2 x TN x WS), the
// rows' bfloat16 features (BM x (innerp / 2 + 4)), |x|^2, U |f| (BM each), each column of
// warps' lo_run after a tile (4 x BM), the list counts (BM), lists (BM x CAP) and the rows'
// seeds of lo_run (BM); end: the total
// (large_k_sparse.mma_smem gives it in bytes)
struct Layout {
    int xs, rows, sq, uf, lo, cnt, list, seed, end;
};
__host__ __device__ inline Layout layout(int innerp) {
    Layout l{};
    l.xs = innerp / 2 + 4;
    l.rows = 2 * TN * WS;
    l.sq = l.rows + BM * l.xs;
    l.uf = l.sq + BM;
    l.lo = l.uf + BM;
    l.cnt = l.lo + 4 * BM;
    l.list = l.cnt + BM;
    l.seed = l.list + BM * CAP;
    l.end = l.seed + BM;
    return l;
}

// v rounded up (toward +inf) to bfloat16 bits: a bound stays a bound
__device__ __forceinline__ unsigned up16(float v) {
    const unsigned u = __float_as_uint(v);
    return (u >> 16) + (((u & 0xffffu) != 0u && (u >> 31) == 0u) ? 1u : 0u);
}

// up16(v) >= thr exactly where v > below16(thr): the next bfloat16 under the least at or
// above thr (up16(thr))
__device__ __forceinline__ float below16(float thr) {
    const unsigned c = up16(thr);
    if (c == 0xff80u) return __int_as_float(0xff800000);  // thr = -inf: every v > -inf
    const unsigned p = (c & 0x7fffu) == 0u ? 0x8001u      // +-0: the least negative
                       : (c & 0x8000u)     ? c + 1u       // negative: away from zero
                                           : c - 1u;      // positive: toward zero
    return __uint_as_float(p << 16);
}

// A lane's 8 components of a column's 32 at kb (its fragments' columns), one half of bnd's
// bounds: the lower (upper = false) or upper (A, B, C); past c1 (padding) -inf, 0, 0
__device__ __forceinline__ void bounds_of(const float* __restrict__ bnd, int kp, int kb, int c1,
                                          int t, bool upper, float (&A)[8], float (&B)[8],
                                          float (&C)[8]) {
    const float* h = bnd + (upper ? 3 : 0) * kp;
#pragma unroll
    for (int jo = 0; jo < 8; ++jo) {
        const int k = kb + (jo >> 1) * 8 + 2 * t + (jo & 1);
        const bool in = k < c1;
        A[jo] = in ? h[k] : __int_as_float(0xff800000);
        B[jo] = in ? h[kp + k] : 0.0f;
        C[jo] = in ? h[2 * kp + k] : 0.0f;
    }
}

// one stage: components [kb, kb + TN) x inner [c KC, (c + 1) KC) of W16 (rows of innerp)
__device__ __forceinline__ void stage(unsigned* dst, const unsigned short* __restrict__ W16,
                                      int innerp, long long kb, int c) {
    for (int i = threadIdx.x; i < TN * (KC / 8); i += NT) {
        const int n = i / (KC / 8), p = i % (KC / 8);
        tc::cp16(dst + n * WS + p * 4, W16 + (kb + n) * innerp + c * KC + p * 8);
    }
}
}  // namespace lkm

// Persistent blocks, grid-stride over tiles of 128 rows. X (rows, d) centred float32, d <=
// LKS_MAXD; W16 (>= c0 + ceil((c1 - c0) / 128) * 128, innerp) the screening weights as
// bfloat16 bits, zero past the inner dimension ([x, x^2] diag, x spherical; innerp a multiple
// of 32) and finite in padding rows; bnd (6, kp) lks_norms'; u, margin lks_select's; seed_in
// (rows; nullable) a seed of lo_run per row. Writes ncand[row] (-1: listed; -2: the list
// overflowed, lo_out[row] its lo, where lo_out is given, else -1) and the candidates'
// components less c0, cand (rows, LKS_CMAX).
// Dynamic shared memory: large_k_sparse.mma_smem.
template <bool DIAG>
__global__ void __launch_bounds__(lkm::NT, LKM_BLOCKS)
lks_mma(const float* __restrict__ X, long long rows, int d, int innerp,
        const unsigned short* __restrict__ W16, int c0, int c1, const float* __restrict__ bnd,
        int kp, float u, float margin, const float* __restrict__ seed_in,
        float* __restrict__ lo_out, unsigned short* __restrict__ cand, int* __restrict__ ncand) {
    using namespace lkm;
    extern __shared__ float4 lkm_smem4[];
    unsigned* sm = reinterpret_cast<unsigned*>(lkm_smem4);
    const Layout lay = layout(innerp);
    const int xs = lay.xs;          // words per row of Xs
    unsigned* Ws = sm;              // 2 stages x TN x WS
    unsigned* Xs = sm + lay.rows;   // BM x xs: bfloat16 pairs
    float* sq_s = reinterpret_cast<float*>(sm + lay.sq);  // |x|^2 per row
    float* uf_s = reinterpret_cast<float*>(sm + lay.uf);  // U |f| per row
    float* lo_s = reinterpret_cast<float*>(sm + lay.lo);  // 4 x BM: columns' lo_run
    int* cnt_s = reinterpret_cast<int*>(sm + lay.cnt);    // list entries per row
    float* seed_s = reinterpret_cast<float*>(sm + lay.seed);  // lo_run's seed
    unsigned* list_s = sm + lay.list;                     // BM x CAP
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wr = warp & 1, wc = warp >> 1;
    const int nch = innerp / KC, ntile = (c1 - c0 + TN - 1) / TN, nq = ntile * nch;
    if (nq <= 0) return;  // no component (the host never launches this)
    const int f = DIAG ? 2 * d : d;  // features in a row
    const float ninf = __int_as_float(0xff800000);

    for (long long tile0 = (long long)blockIdx.x * BM; tile0 < rows;
         tile0 += (long long)gridDim.x * BM) {
        __syncthreads();  // the previous tile's lists read
        // the rows as bfloat16 features, |x|^2 and U |f|
        for (int r = warp; r < BM; r += NT / 32) {
            const long long gr = tile0 + r;
            unsigned short* xr16 = reinterpret_cast<unsigned short*>(Xs + r * xs);
            float sq = 0.0f, s4 = 0.0f;
            for (int i = lane; i < d; i += 32) {
                const float x = gr < rows ? X[gr * d + i] : 0.0f;
                xr16[i] = lks_to_bf16(x);
                if (DIAG) xr16[d + i] = lks_to_bf16(x * x);
                sq = fmaf(x, x, sq);
                s4 = fmaf(x * x, x * x, s4);
            }
            for (int i = f + lane; i < innerp; i += 32) xr16[i] = 0;
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) {
                sq += __shfl_xor_sync(0xffffffffu, sq, off);
                s4 += __shfl_xor_sync(0xffffffffu, s4, off);
            }
            const float uf = u * sqrtf(DIAG ? sq + s4 : sq) * 1.000001f;
            // a second screening's seed: the row's lo from the first (at most its lo)
            const float seed = gr < rows && seed_in != nullptr ? seed_in[gr] : ninf;
            if (lane == 0) {
                sq_s[r] = sq;
                uf_s[r] = uf;
                cnt_s[r] = 0;
                seed_s[r] = seed;
            }
        }
        float run[4][2];
#pragma unroll
        for (int m = 0; m < 4; ++m) run[m][0] = run[m][1] = ninf;
        float acc[4][4][4];
        stage(Ws, W16, innerp, c0, 0);
        tc::cp_commit();
        for (int q = 0; q < nq; ++q) {
            if (q + 1 < nq) {
                stage(Ws + ((q + 1) & 1) * TN * WS, W16, innerp,
                      c0 + (long long)((q + 1) / nch) * TN, (q + 1) % nch);
                tc::cp_commit();
                tc::cp_wait<1>();
            } else {
                tc::cp_wait<0>();
            }
            __syncthreads();
            const int c = q % nch;
            if (c == 0) tc::zero(acc);
            const unsigned* Wb = Ws + (q & 1) * TN * WS;
#pragma unroll
            for (int s = 0; s < KC / 16; ++s) {
                const int kw = (c * KC + s * 16) / 2;
                unsigned a[4][4];
#pragma unroll
                for (int m = 0; m < 4; ++m) {
                    const int r = wr * 64 + m * 16 + g;
                    a[m][0] = Xs[r * xs + kw + t];
                    a[m][1] = Xs[(r + 8) * xs + kw + t];
                    a[m][2] = Xs[r * xs + kw + 4 + t];
                    a[m][3] = Xs[(r + 8) * xs + kw + 4 + t];
                }
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int n = wc * 32 + j * 8 + g;
                    const unsigned b0 = Wb[n * WS + s * 8 + t], b1 = Wb[n * WS + s * 8 + 4 + t];
#pragma unroll
                    for (int m = 0; m < 4; ++m) tc::mma16<true>(acc[m][j], a[m], b0, b1);
                }
            }
            if (c == nch - 1) {  // the tile's products complete: screen them
                const int kb = c0 + (q / nch) * TN + wc * 32;
                float lA[8], lB[8], lC[8];  // the lower bounds' (A, B, C); the upper's below
                bounds_of(bnd, kp, kb, c1, t, false, lA, lB, lC);
#pragma unroll
                for (int m = 0; m < 4; ++m)
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int r = wr * 64 + m * 16 + h * 8 + g;
                        const float sq = sq_s[r], uf = uf_s[r];
                        float lo = fmaxf(run[m][h], seed_s[r]);
#pragma unroll
                        for (int jo = 0; jo < 8; ++jo)
                            lo = fmaxf(lo, lks::bound(acc[m][jo >> 1][h * 2 + (jo & 1)], lA[jo],
                                                      lB[jo], lC[jo], sq, uf));
                        lo = fmaxf(lo, __shfl_xor_sync(0xffffffffu, lo, 1));
                        lo = fmaxf(lo, __shfl_xor_sync(0xffffffffu, lo, 2));
                        if (t == 0) lo_s[wc * BM + r] = lo;
                    }
                // every column's: lo_run over every component so far, the same in each warp
                // (lo_s is rewritten only after the barrier that ends this stage)
                __syncthreads();
#pragma unroll
                for (int m = 0; m < 4; ++m)
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int r = wr * 64 + m * 16 + h * 8 + g;
                        run[m][h] = fmaxf(fmaxf(lo_s[r], lo_s[BM + r]),
                                          fmaxf(lo_s[2 * BM + r], lo_s[3 * BM + r]));
                    }
                bounds_of(bnd, kp, kb, c1, t, true, lA, lB, lC);
#pragma unroll
                for (int m = 0; m < 4; ++m)
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int r = wr * 64 + m * 16 + h * 8 + g;
                        const float sq = sq_s[r], uf = uf_s[r];
                        // appended where up16(v + b) reaches thr: the rule the list's entries
                        // are kept by, at thr <= the final threshold, so the list holds every
                        // entry it keeps whatever lo_run was on the way
                        const float app = below16(__fsub_rn(run[m][h], margin));
#pragma unroll
                        for (int jo = 0; jo < 8; ++jo) {
                            const float up = lks::bound(acc[m][jo >> 1][h * 2 + (jo & 1)],
                                                        lA[jo], lB[jo], lC[jo], sq, uf);
                            // (an upper bound of -inf: a responsibility of exactly 0, e.g.
                            // a padding component or a column that has seen only such, whose
                            // thr is -inf too; NaN never passes)
                            if (up > app && up != ninf) {
                                const int slot = atomicAdd(cnt_s + r, 1);
                                if (slot < CAP) {
                                    const int k = kb + (jo >> 1) * 8 + 2 * t + (jo & 1);
                                    list_s[r * CAP + slot] = ((unsigned)(k - c0) << 16) | up16(up);
                                }
                            }
                        }
                    }
            }
            __syncthreads();  // the stage (q & 1) is refilled next
        }
        // one warp per row: the final candidates, in component order, for lks_exact (lo: every
        // column's lo_run after the last tile, written before the last barrier)
        const float* last = lo_s;
        for (int r = warp; r < BM; r += NT / 32) {
            const long long row = tile0 + r;
            if (row >= rows) break;
            const float lo =
                fmaxf(fmaxf(last[r], last[BM + r]), fmaxf(last[2 * BM + r], last[3 * BM + r]));
            const float thr = __fsub_rn(lo, margin);
            const int n = cnt_s[r];
            if (n > CAP && lo_out != nullptr) {  // screened again from lo
                if (lane == 0) {
                    lo_out[row] = lo;
                    ncand[row] = -2;
                }
                continue;
            }
            bool listed = n > CAP;
            // lane j holds entries j + 32 e: kept where their bound reaches lo - T
            constexpr int E = CAP / 32;
            unsigned en[E], mk[E];
            int total = 0;
#pragma unroll
            for (int e = 0; e < E; ++e) {
                const int i = lane + 32 * e;
                en[e] = !listed && i < n ? list_s[r * CAP + i] : 0u;
                mk[e] = __ballot_sync(0xffffffffu,
                                      !listed && i < n && __uint_as_float(en[e] << 16) >= thr);
                total += __popc(mk[e]);
            }
            listed = listed || total == 0 || total > LKS_CMAX;
            if (listed) {
                if (lane == 0) ncand[row] = -1;
                continue;
            }
            // in component order: each kept entry's rank among the kept (components distinct)
            int rank[E];
#pragma unroll
            for (int e = 0; e < E; ++e) rank[e] = 0;
#pragma unroll
            for (int e2 = 0; e2 < E; ++e2) {
                for (unsigned mm = mk[e2]; mm; mm &= mm - 1) {
                    const unsigned o = __shfl_sync(0xffffffffu, en[e2], __ffs(mm) - 1) >> 16;
#pragma unroll
                    for (int e = 0; e < E; ++e) rank[e] += o < (en[e] >> 16);
                }
            }
#pragma unroll
            for (int e = 0; e < E; ++e)
                if ((mk[e] >> lane) & 1u) cand[row * LKS_CMAX + rank[e]] = (unsigned short)(en[e] >> 16);
            if (lane == 0) ncand[row] = total;
        }
    }
}

// One warp per row, grid-stride (lks_select's grid): the candidates lks_mma found (ncand[row]
// of them in cand[row], components from c0; -1: the row is listed), exactly: log-densities,
// log-sum-exp, pairs and the log-likelihood partials as lks_select's. -2: the row waits for
// its second screening (skipped). rows_index (nullable): each row's index in the data chunk
// (gathered rows; X, cand, ncand and sample_weight are the gathered ones), else row0 + row.
__global__ void __launch_bounds__(LKS_NT, LKS_SELECT_BLOCKS)
lks_exact(const float* __restrict__ X, long long rows, int d, bool diag,
          const unsigned short* __restrict__ cand, const int* __restrict__ ncand, int c0,
          const double* __restrict__ means, const double* __restrict__ prec_chol,
          const double* __restrict__ e0, const float* __restrict__ sample_weight, long long row0,
          unsigned long long* __restrict__ keys, double* __restrict__ rv, long long cap,
          unsigned long long* __restrict__ n_pairs, int* __restrict__ counts,
          int* __restrict__ overflow, unsigned int* __restrict__ n_overflow,
          double* __restrict__ ll_partial, long long* __restrict__ rowbase,
          const int* __restrict__ rows_index) {
    const int lane = threadIdx.x & 31;
    const long long gw = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    double* llw = ll_partial + gw;
    for (long long row = gw; row < rows; row += warps) {
        const int total = ncand[row];
        if (total == -2) continue;  // screened again later
        const long long at = rows_index != nullptr ? (long long)rows_index[row] : row0 + row;
        if (total < 0) {
            if (lane == 0) overflow[atomicAdd(n_overflow, 1u)] = (int)at;
            continue;
        }
        const int mycand = lane < total ? (int)cand[row * LKS_CMAX + lane] : 0;
        float xr[LKS_MAXD / 32];
        lks::load_row(X, row, d, lane, xr);
        int mine = 0;
        double emine = 0.0;
        for (int ci = 0; ci < total; ++ci) {
            const int kk = c0 + __shfl_sync(0xffffffffu, mycand, ci);
            const double ex = lks::exact(xr, kk, d, diag, means, prec_chol, e0, lane);
            if (lane == ci) {
                mine = kk;
                emine = ex;
            }
        }
        const long long base = lks::reserve(total, n_pairs, cap, rowbase, at, lane);
        if (base < 0) continue;  // the chunk goes through the dense pass
        const float w = sample_weight != nullptr ? sample_weight[row] : 1.0f;
        lks::emit(total, mine, emine, w, (unsigned long long)at, base, keys, rv, counts,
                  llw, lane);
    }
}

// One thread per pair, grid-stride: the keys sorted (thrust's radix sort of the keys alone),
// each one's responsibility found in its row's reservation (rowbase: a row's pairs are
// consecutive, at most 32 per restart), as row indices and responsibilities for lks_reduce.
__global__ void __launch_bounds__(LKS_NT)
lks_order_keys(const unsigned long long* __restrict__ sorted,
               const unsigned long long* __restrict__ keys, const double* __restrict__ rv,
               const long long* __restrict__ rowbase, long long n, int* __restrict__ rows_out,
               double* __restrict__ r_out) {
    for (long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x; p < n;
         p += (long long)gridDim.x * blockDim.x) {
        const unsigned long long key = sorted[p];
        const int row = (int)(key & 0xffffffffull);
        long long i = rowbase[row];
        while (keys[i] != key) ++i;
        rows_out[p] = row;
        r_out[p] = rv[i];
    }
}

// One block per item (a run of at most a few hundred of one component's pairs: a component
// holding most rows is split, so no block runs long), one thread per feature (blockDim >= d).
// The pairs in key order (lks_order_keys): item i covers [item_start[i], item_end[i]), pairs of one
// component. X (rows, d) the data chunk. Writes part (items, f + 1): [sum r x,
// sum r x^2] (diag, f = 2d) or [sum r x, sum r |x|^2] (spherical, f = d + 1), then sum r;
// float64. lks_combine adds a component's items in order: deterministic.
__global__ void __launch_bounds__(LKS_NT)
lks_reduce(const int* __restrict__ rows, const double* __restrict__ rv,
           const long long* __restrict__ item_start, const long long* __restrict__ item_end,
           const float* __restrict__ X, int d, bool diag, int f, double* __restrict__ part) {
    __shared__ double red[LKS_NT / 32];
    const int i = threadIdx.x;
    const long long s0 = item_start[blockIdx.x], s1 = item_end[blockIdx.x];
    double a = 0.0, a2 = 0.0, nsum = 0.0;
#pragma unroll 4
    for (long long p = s0; p < s1; ++p) {
        const double r = rv[p];
        nsum += r;
        if (i < d) {
            const double x = (double)X[(long long)rows[p] * d + i];
            a = fma(r, x, a);
            a2 = fma(r * x, x, a2);
        }
    }
    double* out = part + (long long)blockIdx.x * (f + 1);
    if (i < d) {
        out[i] = a;
        if (diag) out[d + i] = a2;
    }
    if (!diag) {  // sum r |x|^2: the features' sums added up across the block
        const double v = gmm::warp_sum(i < d ? a2 : 0.0);
        if ((i & 31) == 0) red[i >> 5] = v;
        __syncthreads();
        if (i == 0) {
            double t = 0.0;
            for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t += red[w];
            out[d] = t;
        }
    }
    if (i == 0) out[f] = nsum;
}

// One thread per (component, statistic), grid-stride: component k's items are
// [item_offsets[k], item_offsets[k + 1]) of part, added in order into sf (rk, f) and nk (rk).
__global__ void __launch_bounds__(LKS_NT)
lks_combine(const double* __restrict__ part, const long long* __restrict__ item_offsets, int rk,
            int f, double* __restrict__ sf, double* __restrict__ nk) {
    const long long total = (long long)rk * (f + 1);
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const int k = (int)(t / (f + 1)), j = (int)(t % (f + 1));
        double v = 0.0;
        for (long long it = item_offsets[k]; it < item_offsets[k + 1]; ++it)
            v += part[it * (f + 1) + j];
        if (j == f) {
            nk[k] += v;
        } else {
            sf[(long long)k * f + j] += v;
        }
    }
}

// One warp per listed row, grid-stride: rows[i] of X (and its weight) into out (and wout).
__global__ void __launch_bounds__(LKS_NT)
lks_gather(const float* __restrict__ X, int d, const float* __restrict__ sample_weight,
           const int* __restrict__ rows, long long n, float* __restrict__ out,
           float* __restrict__ wout) {
    const int lane = threadIdx.x & 31;
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    for (long long i = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); i < n;
         i += warps) {
        const long long row = rows[i];
        for (int j = lane; j < d; j += 32) out[i * d + j] = X[row * d + j];
        if (lane == 0 && wout != nullptr) wout[i] = sample_weight[row];
    }
}
