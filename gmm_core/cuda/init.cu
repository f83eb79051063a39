// Device initialisation (gmm_core/_init.py) and the data's own preparation (gmm_core/_cupy):
// every step over rows of the data or per-restart state that would otherwise be a chain of CuPy
// array operations, each a kernel NVRTC compiles on a process's first fit.
//
// k-means++ seeding, every restart of a fit in the same launches. ``closest`` holds, per restart,
// the squared distance of every sample to its nearest chosen centre (float32, (R, ld) with this
// chunk's rows starting at column ``row0``). Distances are computed exactly as sum (x - c)^2 (no
// expanded quadratic form, so nothing cancels), the differences in the data's type and the sum in
// float64. Per centre:
//
//   kpp_block_sums : sums of ``rows`` consecutive distances of every restart (float64)
//   kpp_sample     : candidate l of restart r = the first row whose cumulative distance reaches
//                    u[r, l] times the restart's total (the block sums find its block)
//   gather_rows    : the candidates' rows (row blocks of streamed data: one launch per block)
//   kpp_potentials : pot[c] += sum_rows min(closest[r(c), row], |x_row - cand_c|^2) for the
//                    candidates c = r * n_trials + l of every restart r (scikit-learn's greedy
//                    k-means++ keeps the candidate with the smallest potential)
//   kpp_choose     : that candidate becomes the restart's next centre (float64) and row index
//   kpp_update     : closest[r, row] = min(closest[r, row], |x_row - centre_r|^2)
//
// ``closest`` is float32 whatever the data (4 bytes per sample and restart; it only weighs the
// sampling of the next candidates), the potentials are float64.
//
// Lloyd (lloyd_step): new centres from a pass's statistics, the shift, the stopping rule.
// Data: column_stats (moments and finite check in one pass), centre_rows (X - shift).
//
// Only scalar types are template parameters (every kernel is one, so a module holds only the
// kernel it was compiled for): D, the number of candidates and of restarts are runtime values,
// so one small module serves every shape (no compile for a new shape).

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

// Rows of at most GMM_KPP_REG_D features stay in a thread's registers while it measures them
// against every candidate or restart: read from global memory for each, a warp's load of one
// feature of 32 rows touches 32 cache lines (on telemetry's 16 features, 11 SM cycles per
// candidate and row: model selection's seeding of 32 restarts took 131 ms). The sums are
// sqdist's, term for term (the same bits).
#ifndef GMM_KPP_REG_D
#define GMM_KPP_REG_D 32
#endif
template <typename T>
__device__ __forceinline__ void load_row(const T* __restrict__ x, int d, T (&xr)[GMM_KPP_REG_D]) {
#pragma unroll
    for (int j = 0; j < GMM_KPP_REG_D; ++j) xr[j] = j < d ? x[j] : T(0);
}

template <typename T>
__device__ __forceinline__ double sqdist_reg(const T (&xr)[GMM_KPP_REG_D], const T* __restrict__ y,
                                             int d) {
    double s = 0.0;
#pragma unroll
    for (int j = 0; j < GMM_KPP_REG_D; ++j) {
        if (j < d) {
            const double t = (double)(xr[j] - y[j]);
            s += t * t;
        }
    }
    return s;
}

// Shared memory of the block reductions below (s_warp): 33 doubles.
//
// Sum of v over the block's threads in a fixed order (warps, then warp sums in order): the same
// bits every time. Valid in thread 0.
__device__ __forceinline__ double block_sum(double v, double* s_warp) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) s_warp[threadIdx.x >> 5] = v;
    __syncthreads();
    double total = 0.0;
    if (threadIdx.x == 0)
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) total += s_warp[w];
    __syncthreads();  // s_warp may be written again by the caller's next call
    return total;
}

// Inclusive prefix sum of v over the block's threads in thread order (blockDim.x a multiple of
// 32); `total` gets the last thread's prefix (the block's sum), bit for bit. Every thread must
// call.
__device__ __forceinline__ double block_scan(double v, double* s_warp, double& total) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 1; o < 32; o <<= 1) {
        const double u = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += u;
    }
    if (lane == 31) s_warp[w] = v;
    __syncthreads();
    if (w == 0) {
        double x = lane < nw ? s_warp[lane] : 0.0;
        for (int o = 1; o < 32; o <<= 1) {
            const double u = __shfl_up_sync(0xffffffffu, x, o);
            if (lane >= o) x += u;
        }
        if (lane < nw) s_warp[lane] = x;  // inclusive prefixes of the warp sums
    }
    __syncthreads();
    if (w > 0) v += s_warp[w - 1];
    if (threadIdx.x == blockDim.x - 1) s_warp[32] = v;
    __syncthreads();
    total = s_warp[32];
    __syncthreads();  // every thread has read s_warp before the next call writes it
    return v;
}

// Running sums over [begin, end) in chunks of blockDim.x (block_scan, in order): the total, and
// the first index whose running sum prefix + x[begin] + ... + x[i] reaches `value` (-1 where
// none does) with the running sum before it (`before`). Both add the same chunk sums in the same
// order, so the total equals the last running sum bit for bit. Every thread must call and gets the
// result; `load(i)` returns element i as a double.
template <typename Load>
__device__ double block_total(long long begin, long long end, Load load, double* s_warp) {
    double prefix = 0.0;
    for (long long i0 = begin; i0 < end; i0 += blockDim.x) {
        const long long i = i0 + threadIdx.x;
        double chunk_total;
        block_scan(i < end ? load(i) : 0.0, s_warp, chunk_total);
        prefix += chunk_total;
    }
    return prefix;
}

template <typename Load>
__device__ long long block_find(long long begin, long long end, double prefix, double value,
                                Load load, double* s_warp, int* s_hit, double* s_before,
                                double& before) {
    for (long long i0 = begin; i0 < end; i0 += blockDim.x) {
        const long long i = i0 + threadIdx.x;
        double chunk_total;
        const double p = prefix + block_scan(i < end ? load(i) : 0.0, s_warp, chunk_total);
        if (threadIdx.x == 0) *s_hit = 0x7fffffff;
        __syncthreads();
        if (i < end && p >= value) atomicMin(s_hit, (int)threadIdx.x);
        __syncthreads();
        const int hit = *s_hit;
        if (hit != 0x7fffffff && (int)threadIdx.x == (hit > 0 ? hit - 1 : 0))
            *s_before = hit > 0 ? p : prefix;
        __syncthreads();
        if (hit != 0x7fffffff) {
            before = *s_before;
            __syncthreads();  // every thread has read the shared values before a next call
            return i0 + hit;
        }
        prefix += chunk_total;
    }
    before = prefix;
    return -1;
}
}  // namespace gmmi

// Dynamic shared memory: n_restarts * n_trials doubles (the block's partial potentials).
template <typename T>
__global__ void __launch_bounds__(GMM_INIT_NT)
kpp_potentials(const T* __restrict__ X, long long n, int d, const T* __restrict__ cand,
               int n_restarts, int n_trials, const float* __restrict__ closest, long long ld,
               long long row0, const T* __restrict__ weights, double* __restrict__ pot) {
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
        const bool in_registers = d <= GMM_KPP_REG_D;  // the same for every thread
        T xr[GMM_KPP_REG_D];
        if (in_registers) gmmi::load_row(x, d, xr);
        for (int c = 0; c < n_cand; ++c) {
            double v = 0.0;
            if (valid) {
                const double cl = (double)closest[(long long)(c / n_trials) * ld + row0 + row];
                const T* y = cand + (long long)c * d;
                double s = in_registers ? gmmi::sqdist_reg(xr, y, d) : gmmi::sqdist(x, y, d);
                if (weights != nullptr) s *= (double)weights[row0 + row];
                v = s < cl ? s : cl;
            }
            for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
            if (lane == 0) atomicAdd(s_pot + c, v);
        }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < n_cand; c += blockDim.x) atomicAdd(pot + c, s_pot[c]);
}

// reset != 0: the first centre (closest starts at +inf, so it is not read: no fill launch).
// weights (nullptr: unweighted): closest holds w_n min_c |x_n - c|^2, so the sampling draws
// rows with probability proportional to w_n D(x_n)^2 and the potentials sum w_n min(...), as
// scikit-learn's weighted k-means++ (w >= 0: w min(a, b) = min(w a, w b)).
template <typename T>
__global__ void __launch_bounds__(GMM_INIT_NT)
kpp_update(const T* __restrict__ X, long long n, int d, const T* __restrict__ centres,
           int n_restarts, float* __restrict__ closest, long long ld, long long row0,
           const T* __restrict__ weights, int reset) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    const float inf = __int_as_float(0x7f800000);
    for (long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x; row < n;
         row += stride) {
        const T* x = X + row * d;
        const double wn = weights != nullptr ? (double)weights[row0 + row] : 1.0;
        const bool in_registers = d <= GMM_KPP_REG_D;  // the same for every thread
        T xr[GMM_KPP_REG_D];
        if (in_registers) gmmi::load_row(x, d, xr);
        for (int r = 0; r < n_restarts; ++r) {
            const T* y = centres + (long long)r * d;
            const double s =
                wn * (in_registers ? gmmi::sqdist_reg(xr, y, d) : gmmi::sqdist(x, y, d));
            float* cl = closest + (long long)r * ld + row0 + row;
            const float old = reset ? inf : *cl;
            // rounding keeps the new value <= the old
            if (s < (double)old) *cl = (float)s;
            else if (reset) *cl = old;
        }
    }
}

// Block b of restart r: sums[r * n_sums + b] = sum of closest[r, b * rows : (b + 1) * rows] in
// float64, in a fixed order. Grid (n_sums, R); closest is (R, n), of type C (float32 here).
template <typename C>
__global__ void __launch_bounds__(GMM_INIT_NT)
kpp_block_sums(const C* __restrict__ closest, long long n, int rows, int n_sums,
               double* __restrict__ sums) {
    __shared__ double s_warp[33];
    const long long begin = (long long)blockIdx.x * rows;
    const long long end = min(n, begin + rows);
    const C* cl = closest + (long long)blockIdx.y * n;
    double v = 0.0;
    for (long long i = begin + threadIdx.x; i < end; i += blockDim.x) v += (double)cl[i];
    v = gmmi::block_sum(v, s_warp);
    if (threadIdx.x == 0) sums[(long long)blockIdx.y * n_sums + blockIdx.x] = v;
}

// Candidate l of restart r (block (l, r)): the first row whose cumulative distance reaches
// u[r * u_ld + l] times the restart's total (scikit-learn's searchsorted on the cumulative sum);
// ids[r * n_trials + l] = that row. The running sums over the block sums find the block of
// `rows` rows that holds it, a running sum over those rows the row; rounding can leave a block's
// rows a hair short of the block's sum: then its last row.
template <typename C>
__global__ void __launch_bounds__(GMM_INIT_NT)
kpp_sample(const C* __restrict__ closest, long long n, int rows, int n_sums,
           const double* __restrict__ sums, const double* __restrict__ u, long long u_ld,
           int n_trials, long long* __restrict__ ids) {
    __shared__ double s_warp[33];
    __shared__ double s_before;
    __shared__ int s_hit;
    const int l = blockIdx.x, r = blockIdx.y;
    const double* s = sums + (long long)r * n_sums;
    const C* cl = closest + (long long)r * n;
    const auto load_sum = [&](long long b) { return s[b]; };
    const auto load_row = [&](long long i) { return (double)cl[i]; };
    const double total = gmmi::block_total(0, n_sums, load_sum, s_warp);
    const double value = u[(long long)r * u_ld + l] * total;
    double before;
    long long block = gmmi::block_find(0, n_sums, 0.0, value, load_sum, s_warp, &s_hit,
                                       &s_before, before);
    if (block < 0) {  // value above the total: only NaN gets here
        block = n_sums - 1;
        before = total - s[block];
    }
    const long long begin = block * rows, end = min(n, begin + rows);
    double unused;
    long long row = gmmi::block_find(begin, end, before, value, load_row, s_warp, &s_hit,
                                     &s_before, unused);
    if (row < 0) row = end - 1;
    if (threadIdx.x == 0) ids[(long long)r * n_trials + l] = row;
}

// ids[i] (global rows) -> out[i * out_ld : i * out_ld + d] for the ids within this block of rows
// [row0, row0 + rows) of the data (one launch per block of streamed data).
template <typename T>
__global__ void __launch_bounds__(GMM_INIT_NT)
gather_rows(const T* __restrict__ X, long long rows, int d, long long row0,
            const long long* __restrict__ ids, int n_ids, T* __restrict__ out, long long out_ld) {
    const long long total = (long long)n_ids * d;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
        const long long i = e / d;
        const int j = (int)(e - i * d);
        const long long local = ids[i] - row0;
        if (local >= 0 && local < rows) out[i * out_ld + j] = X[local * d + j];
    }
}

// Restart r (block r) takes its candidate with the smallest potential (the first of equal ones,
// as argmin) as centre c: centres[r, c] (float64, (R, K, d)) and chosen[r] (the data's type, the
// next kpp_update's centre) = cand[r * n_trials + best], indices[r, c] = cand_ids[...]. With
// n_trials == 1 the potentials are not read (the first centre).
template <typename T>
__global__ void __launch_bounds__(GMM_INIT_NT)
kpp_choose(const T* __restrict__ cand, const double* __restrict__ pot,
           const long long* __restrict__ cand_ids, int n_trials, int d, int c, int k,
           double* __restrict__ centres, long long* __restrict__ indices, T* __restrict__ chosen) {
    const int r = blockIdx.x;
    const double* p = pot + (long long)r * n_trials;
    int best = 0;
    for (int l = 1; l < n_trials; ++l)
        if (p[l] < p[best]) best = l;
    const long long src = (long long)r * n_trials + best;
    if (threadIdx.x == 0) indices[(long long)r * k + c] = cand_ids[src];
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const T v = cand[src * d + j];
        centres[((long long)r * k + c) * d + j] = (double)v;
        chosen[(long long)r * d + j] = v;
    }
}

// ------------------------------------------------------------------------------------------------
// One Lloyd iteration's update of every restart still iterating (block r: restart r), from the
// statistics of its pass: a centre becomes the mean of its samples, sx / nk (a centre without
// samples stays), n_iter += 1, and the restart stops once its centres moved by at most tol (sum of
// squares). A restart that stopped keeps everything. nk (R, K), sx and centres (R, K, d), of type
// T (float64 here).
template <typename T>
__global__ void __launch_bounds__(GMM_INIT_NT)
lloyd_step(const T* __restrict__ nk, const T* __restrict__ sx, int k, int d, double tol,
           T* __restrict__ centres, int* __restrict__ active, long long* __restrict__ n_iter) {
    __shared__ double s_warp[33];
    const int r = blockIdx.x;
    if (!active[r]) return;  // the same for the whole block
    const long long base = (long long)r * k * d;
    double moved = 0.0;
    for (int e = threadIdx.x; e < k * d; e += blockDim.x) {
        const T count = nk[(long long)r * k + e / d];
        const T old = centres[base + e];
        const T now = count > T(0) ? sx[base + e] / count : old;
        moved += (double)(now - old) * (double)(now - old);
        centres[base + e] = now;
    }
    moved = gmmi::block_sum(moved, s_warp);
    if (threadIdx.x == 0) {
        n_iter[r] += 1;
        active[r] = moved > tol;
    }
}

// ------------------------------------------------------------------------------------------------
// out = X - shift, row-major (n, d), shift in the data's type (the subtraction CuPy would do:
// same bits); out may be X itself.
template <typename T>
__global__ void __launch_bounds__(GMM_INIT_NT)
centre_rows(const T* X, long long n, int d, const T* __restrict__ shift, T* out) {
    const long long total = n * d;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    int col = (int)(i % d);
    const int step = (int)(stride % d);
    for (; i < total; i += stride) {
        out[i] = X[i] - shift[col];
        col += step;
        if (col >= d) col -= d;
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
