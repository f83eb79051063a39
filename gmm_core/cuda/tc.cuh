// Helpers shared by the fused passes (em_diag.cu, em_full.cu, em_largek_tc.cu): the 3xTF32
// split, mma.sync m16n8k8 TF32, the approximate exp2 / log2 the passes use for log-sum-exp, the
// truncation correction, cp.async (namespace tc),
// a warp's float64 sum (namespace gmm).
#pragma once

namespace gmm {
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}
}  // namespace gmm

namespace tc {
// hi = x rounded to the nearest TF32 (an integer add and a LOP3; cvt.rna is emulated in several
// instructions), lo = the exact float32 rest, of which the mma reads the top 10 mantissa bits:
// hi + lo carries x to ~2^-22 relative. Rounding (not truncating) hi gives lo either sign, so
// the errors left (lo's dropped bits, the dropped lo * lo product) average out over a sum
// instead of all pulling a sum of products down (a bias that grows with (|mu| / sigma)^2 in a
// covariance computed from uncentred second moments).
__device__ __forceinline__ void split(float x, unsigned& hi, unsigned& lo) {
    hi = (__float_as_uint(x) + 0x1000u) & 0xffffe000u;
    lo = __float_as_uint(x - __uint_as_float(hi));
}
// x rounded to the nearest TF32 (hi of split)
__device__ __forceinline__ float round_tf32(float x) {
    return __uint_as_float((__float_as_uint(x) + 0x1000u) & 0xffffe000u);
}
// 2^x and log2 without the denormal fix-ups of __expf / __logf (results below 2^-126 flush to 0)
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ float lg2(float x) {
    float y;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ void mma(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                    unsigned b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();  // the launcher never picks this kernel below sm_80
#endif
}
// c += a b, m16n8k16 with FP16 operands (BF16 = true: BF16; two per register, the lower k in
// the low 16 bits) and float32 accumulation (the FP16 probes, benchmarks/probe_*.py; the
// screened large-K pass's in-kernel BF16 screen, lks_mma)
#define TC_MMA16(TYPE)                                                                       \
    asm("mma.sync.aligned.m16n8k16.row.col.f32." TYPE "." TYPE ".f32 {%0,%1,%2,%3}, "       \
        "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"                                            \
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                    \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))
template <bool BF16 = false>
__device__ __forceinline__ void mma16(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                      unsigned b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if (BF16) {
        TC_MMA16("bf16");
    } else {
        TC_MMA16("f16");
    }
#else
    __trap();
#endif
}
#undef TC_MMA16
// a warp's m16n8 accumulator tiles (M x N of them, 4 floats per thread each), zeroed
template <int M, int N>
__device__ __forceinline__ void zero(float (&a)[M][N][4]) {
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int j = 0; j < N; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) a[m][j][e] = 0.0f;
}
// An mma's float32 sum truncates (rounds toward zero): its result lacks on average half a unit
// in its last place (ulp), with its sign. untruncate adds that back. (Sums run over 4 k-steps
// and corrected by an estimate from the last one's ulp were 3e-5 to 7e-5 nats off; uncorrected
// per-k-step sums -7e-5: docs/benchmarks.md.)
__device__ __forceinline__ float untruncate(float r) {
    const float se = __uint_as_float(__float_as_uint(r) & 0xff800000u);  // sign * 2^exponent
    return __fmaf_rn(se, 5.9604644775390625e-08f, r);                     // + sign * ulp / 2
}
// an online log-sum-exp (log2 units: max m, sum s of 2^(v - m)) merged with another
__device__ __forceinline__ void lse_merge(float& m, float& s, float mo, float so) {
    const float mn = fmaxf(m, mo);
    s = s * ex2(m - mn) + so * ex2(mo - mn);
    m = mn;
}
// cp.async (sm_80+): 16 or 4 bytes global -> shared, commit a group, wait for all but N
__device__ __forceinline__ void cp16(void* smem, const void* gmem) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp4(void* smem, const void* gmem) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
}
// c += a b in 3xTF32, small products first
__device__ __forceinline__ void mma3(float (&c)[4], const unsigned (&ah)[4],
                                     const unsigned (&al)[4], unsigned bh0, unsigned bh1,
                                     unsigned bl0, unsigned bl1) {
    mma(c, al, bh0, bh1);
    mma(c, ah, bl0, bl1);
    mma(c, ah, bh0, bh1);
}
}  // namespace tc
