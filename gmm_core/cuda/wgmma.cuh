// Hopper's warp-group MMA (wgmma, sm_90a only): TF32 m64n128k8 with A from registers or shared
// memory, the no-swizzle K-major shared-memory layout and its descriptor, and the fences.
// Layout sources and the checks that pinned them down: benchmarks/wgmma.py (its docstring) and
// benchmarks/probe_wgmma.py (each element's place, measured on an H200).
//
// wgmma exists only on the arch-specific target sm_90a, where __CUDA_ARCH_FEAT_SM90_ALL is
// defined; elsewhere the wrappers compile to nothing and WGMMA_OK is 0, so a kernel using them
// must refuse to run (trap) where WGMMA_OK is 0.
#pragma once

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WGMMA_OK 1
#else
#define WGMMA_OK 0
#endif

namespace wg {
__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
// matrix descriptor (PTX ISA "Matrix Descriptor Format"; CUTLASS cute::GmmaDescriptor): start
// address >> 4 in bits 0-13, leading byte offset >> 4 in 16-29, stride byte offset >> 4 in
// 32-45, no swizzle. Here LBO = 128 (the two K halves of an 8-row group), SBO = 256 (8-row
// groups).
__device__ __forceinline__ unsigned long long desc(const void* tile) {
    return static_cast<unsigned long long>((smem_u32(tile) & 0x3FFFFu) >> 4)
         | (static_cast<unsigned long long>(128u >> 4) << 16)
         | (static_cast<unsigned long long>(256u >> 4) << 32);
}
// the descriptor of the tile `words` 32-bit words past d's (a multiple of 4: 16 bytes); the
// start address field cannot carry out (shared addresses are below 2^18)
__device__ __forceinline__ unsigned long long desc_at(unsigned long long d, int words) {
    return d + static_cast<unsigned long long>(words >> 2);
}
// word of element (row r, k) of a rows x 8 TF32 K-major tile in that layout: core matrix
// (r / 8, k / 4) is 8 rows x 16 bytes, rows contiguous
__device__ __forceinline__ int tile_word(int r, int k) {
    return (r >> 3) * 64 + (k >> 2) * 32 + (r & 7) * 4 + (k & 3);
}
// shared memory written by ordinary stores, read next by wgmma (the async proxy): this fence in
// each writing thread, then a barrier
__device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void fence() {
#if WGMMA_OK
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void commit() {
#if WGMMA_OK
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void wait() {
#if WGMMA_OK
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// keeps the compiler from moving accumulator reads or writes across an asynchronous wgmma
// (CUTLASS warpgroup_fence_operand)
template <int R> __device__ __forceinline__ void fence_acc(float (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

#define GMM_WG_D64                                                                             \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "   \
    "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "    \
    "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, "    \
    "%53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define GMM_WG_OUT64(d)                                                                         \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]),             \
        "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),          \
        "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),          \
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]),          \
        "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),          \
        "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),          \
        "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),          \
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]),          \
        "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]),          \
        "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// d (+)= A B, m64n128k8 TF32, A from registers (the mma.sync m16n8k8 A fragment of warp w's
// rows 16w..16w+15), B from shared memory; scale_d 0: d = A B (CUTLASS SM90_64x128x8_F32TF32TF32_RS_TN)
__device__ __forceinline__ void mma_rs(float (&d)[64], const unsigned (&a)[4],
                                       unsigned long long desc_b, int scale_d) {
#if WGMMA_OK
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %68, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 " GMM_WG_D64
        ", {%64, %65, %66, %67}, %69, p, 1, 1;\n}\n"
        : GMM_WG_OUT64(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(scale_d), "l"(desc_b)
        : "memory");
#endif
}
// d (+)= A B, m64n128k8 TF32, both from shared memory (SM90_64x128x8_F32TF32TF32_SS_TN)
__device__ __forceinline__ void mma_ss(float (&d)[64], unsigned long long desc_a,
                                       unsigned long long desc_b, int scale_d) {
#if WGMMA_OK
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 " GMM_WG_D64
        ", %64, %65, p, 1, 1;\n}\n"
        : GMM_WG_OUT64(d)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d)
        : "memory");
#endif
}
}  // namespace wg
