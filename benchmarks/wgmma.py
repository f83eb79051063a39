"""Hopper's warp-group MMA (``wgmma``, sm_90a) for the benchmarks: instruction wrappers, the
shared-memory operand layout and its descriptors, and building a CUDA module for sm_90a.

``benchmarks/probe_wgmma.py`` checks these layouts element by element on the GPU and times the
instruction; ``benchmarks/wgmma_pass.py`` builds an EM pass on them. ``preamble()`` is what a
source using them starts with (descriptor offsets, ``make_desc``, ``tile_offset``, fences,
``probe_arch``); ``wgmma_function(form, n)`` the wrapper of one ``m64n<n>k8`` TF32 shape.

``build_module`` compiles for sm_90a, the arch-specific target wgmma needs:
- backend ``nvrtc``: ``cupy.RawModule(code=..., options=NVRTC_OPTIONS)``. CuPy appends its own
  ``-arch=sm_90``; NVRTC 13.0 then still builds sm_90a (checked without a GPU). A compile error,
  or a build without the sm_90a features, falls back to nvcc.
- backend ``nvcc``: ``nvcc -gencode=arch=compute_90a,code=sm_90a --cubin``, the cubin loaded
  from its file (CuPy's own nvcc backend adds a plain sm_90 target, and nvcc refuses --cubin
  for two targets).
The wgmma wrappers compile to nothing outside sm_90a (``__CUDA_ARCH_FEAT_SM90_ALL``), since nvcc
13.0's ``-arch=sm_90a`` also runs a plain compute_90 pass that rejects wgmma; the kernel
``probe_arch`` tells the host which build it loaded, and a build without wgmma is refused.

Layout sources (each repeated where it is used in the CUDA source):

* matrix descriptor bits: start address >> 4 in bits 0-13, leading byte offset (LBO) >> 4 in
  16-29, stride byte offset (SBO) >> 4 in 32-45, base offset 49-51 (0 here), swizzle mode 62-63
  (0 = none): PTX ISA "Matrix Descriptor Format" (asynchronous-warpgroup-level-matrix-shared-
  memory-layout-matrix-descriptor, as tabled by Modular's WGMMADescriptor docs); CUTLASS
  ``cute/arch/mma_sm90_desc.hpp`` (GmmaDescriptor bitfield).
* no-swizzle K-major layout: core matrix = 8 rows x 16 bytes (8 x 4 TF32), its rows contiguous
  (128 bytes); LBO = byte distance between core matrices adjacent in K, SBO = between core
  matrices adjacent in M/N (8-row groups): PTX ISA ("Leading dimension byte offset of matrix A
  or B is the distance, in bytes, between two adjacent core matrices in the K dimension"; the
  stride byte offset the same "in the M or N dimension"; and, in its tcgen05 descriptor section,
  "K-Major, No-Swizzling: the stride from the first column to the second column of the 8x2 tile
  in the 128-bit element type normalized matrix"); CUTLASS ``cute/atom/mma_traits_sm90_gmma.hpp``
  make_gmma_desc<Major::K>: canonical INTERLEAVE layout ``((8,n),2):((1,SBO),LBO)`` in 16-byte
  units (8 rows 16 bytes apart, 8-row groups SBO apart, the two K halves LBO apart). Here
  LBO = 128, SBO = 256; the probe's check also runs the swapped pair when it fails.
* A from registers, m64nNk8 TF32 (four .b32 per thread; warp w holds rows 16w..16w+15, the
  mma.sync m16n8k8 A fragment): a0 = (g, q), a1 = (g + 8, q), a2 = (g, q + 4), a3 = (g + 8, q + 4)
  with g = lane / 4, q = lane % 4, rows offset by 16w: CUTLASS ``GMMA::ALayout_64x8``
  (``((4,8,4),(2,2)):((64,1,16),(8,256))`` over the column-major 64 x 8 tile).
* accumulator D, m64nNk8 f32 (N/2 per thread): register i of thread t holds row
  16 (t / 32) + (t % 32) / 4 + 8 ((i / 2) % 2), column 8 (i / 4) + 2 (t % 4) + i % 2: CUTLASS
  ``GMMA::CLayout_64xN`` (``((4,8,4),(2,2,N/8)):((128,1,16),(64,8,512))`` over the column-major
  64 x N tile; the PTX ISA gives it as a figure). The check finds each register's real place if
  this is wrong.
* instruction form (tf32 has no transpose immediates; scale-d as a predicate):
  ``wgmma.mma_async.sync.aligned.m64nNk8.f32.tf32.tf32 d, {a0..a3} | a-desc, b-desc, p, 1, 1``:
  CUTLASS ``cute/arch/mma_sm90_gmma.hpp`` (SM90_64xNx8_F32TF32TF32_RS_TN / _SS_TN, whose traits
  in mma_traits_sm90_gmma.hpp name ALayout_64x8 and CLayout_64xN); ptxas 13.0 accepts it.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: the repository (gmm_core/cuda/tc.cuh is inlined by sources that use its helpers)
REPO = Path(__file__).resolve().parents[1]
#: rows of every wgmma (the instruction's M)
M = 64
#: descriptor byte offsets of the layout this file stages: K-adjacent core matrices 128 bytes
#: apart (LBO), 8-row groups 256 bytes apart (SBO); see the module docstring
LBO, SBO = 128, 256
NVRTC_OPTIONS = ("-std=c++17", "--gpu-architecture=sm_90a")
NVCC_ARCH = "-gencode=arch=compute_90a,code=sm_90a"

COMMON = r"""
// wgmma exists only on the arch-specific target sm_90a, where __CUDA_ARCH_FEAT_SM90_ALL is
// defined. nvcc 13.0's -arch=sm_90a also runs a plain compute_90 pass, which rejects wgmma:
// there the wrappers below compile to nothing (as CUTLASS's CUTE_ARCH_MMA_SM90A_ENABLED), and
// probe_arch tells the host which build it loaded, so a stub build is never checked or timed.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WGMMA_OK 1
#else
#define WGMMA_OK 0
#endif

extern "C" __global__ void probe_arch(int* out) {
    out[0] = WGMMA_OK;
#if defined(__CUDA_ARCH__)
    out[1] = __CUDA_ARCH__;
#endif
}

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// wgmma matrix descriptor (PTX ISA "Matrix Descriptor Format"; CUTLASS cute::GmmaDescriptor):
// bits 0-13 start address >> 4, 16-29 leading byte offset >> 4, 32-45 stride byte offset >> 4,
// 49-51 base offset (0), 62-63 swizzle mode (0: none, the "interleave" layout).
__device__ __forceinline__ unsigned long long make_desc(const void* tile, unsigned lbo,
                                                        unsigned sbo) {
    return static_cast<unsigned long long>((smem_u32(tile) & 0x3FFFFu) >> 4)
         | (static_cast<unsigned long long>((lbo & 0x3FFFFu) >> 4) << 16)
         | (static_cast<unsigned long long>((sbo & 0x3FFFFu) >> 4) << 32);
}

// Word offset of element (r, k) of a rows x 8 TF32 K-major tile in the no-swizzle canonical
// layout: core matrix (r / 8, k / 4) is 8 rows x 16 bytes, rows contiguous (128 bytes); the two
// core matrices of an 8-row group adjacent in K 128 bytes apart (LBO = 128), 8-row groups 256
// bytes apart (SBO = 256). PTX ISA "Shared Memory Matrix Layout" / "Strides"; CUTLASS
// make_gmma_desc<Major::K>: INTERLEAVE ((8,n),2):((1,SBO),LBO) in 16-byte units.
__device__ __forceinline__ int tile_offset(int r, int k) {
    return (r >> 3) * 64 + (k >> 2) * 32 + (r & 7) * 4 + (k & 3);
}

// Tile s of the rows x (8 ksteps) row-major matrix src (its k-columns 8s..8s+7) to
// dst + s * rows * 8 in the layout above.
__device__ void stage_tiles(float* dst, const float* src, int rows, int ksteps) {
    const int K = 8 * ksteps;
    for (int idx = threadIdx.x; idx < rows * K; idx += blockDim.x) {
        const int r = idx / K, kk = idx % K;
        dst[(kk >> 3) * rows * 8 + tile_offset(r, kk & 7)] = src[idx];
    }
}

// Shared memory written by ordinary stores and read next by the tensor cores (async proxy):
// a proxy fence in each writing thread, then the barrier.
__device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void wg_fence() {
#if WGMMA_OK
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_commit() {
#if WGMMA_OK
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wg_wait() {
#if WGMMA_OK
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Keeps the compiler from moving accumulator reads or writes across the asynchronous wgmma
// (CUTLASS warpgroup_fence_operand).
template <int R>
__device__ __forceinline__ void fence_acc(float (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Pseudo-random operand in [-0.5, 0.5) for the throughput kernels (values do not matter for
// the rate, but real-looking data draws real power).
__device__ __forceinline__ float pseudo(unsigned i) {
    return __uint_as_float(0x3f800000u | ((i * 2654435761u) >> 9)) - 1.5f;
}
"""


def preamble() -> str:
    """The descriptor offsets (``DESC_LBO``, ``DESC_SBO``) and :data:`COMMON`."""
    return f"#define DESC_LBO {LBO}u\n#define DESC_SBO {SBO}u\n" + COMMON


def wgmma_function(form: str, n: int) -> str:
    """``wgmma_<form>_n<n>(d, a | desc_a, desc_b, scale_d)``: one m64n<n>k8 TF32 instruction.

    Form as CUTLASS ``SM90_64xNx8_F32TF32TF32_{RS,SS}_TN``: scale-d a predicate (false: D = A B,
    true: D = A B + D), imm-scale-a = imm-scale-b = 1; TF32 takes no transpose immediates
    (both operands K-major).
    """
    r = n // 2
    d_list = ", ".join(f"%{i}" for i in range(r))
    outputs = ", ".join(f'"+f"(d[{i}])' for i in range(r))
    if form == "rs":
        params = "const unsigned (&a)[4], unsigned long long desc_b"
        a_operand = f"{{%{r}, %{r + 1}, %{r + 2}, %{r + 3}}}"
        b_operand, p_operand = f"%{r + 4}", f"%{r + 5}"
        inputs = '"r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d)'
    else:
        params = "unsigned long long desc_a, unsigned long long desc_b"
        a_operand, b_operand, p_operand = f"%{r}", f"%{r + 1}", f"%{r + 2}"
        inputs = '"l"(desc_a), "l"(desc_b), "r"(scale_d)'
    return f"""
__device__ __forceinline__ void wgmma_{form}_n{n}(float (&d)[{r}], {params}, int scale_d) {{
#if WGMMA_OK
    asm volatile(
        "{{\\n"
        ".reg .pred p;\\n"
        "setp.ne.b32 p, {p_operand}, 0;\\n"
        "wgmma.mma_async.sync.aligned.m64n{n}k8.f32.tf32.tf32 "
        "{{{d_list}}}, {a_operand}, {b_operand}, p, 1, 1;\\n"
        "}}\\n"
        : {outputs}
        : {inputs}
        : "memory");
#endif
}}
"""


def built_arch(module: Any) -> tuple[bool, int]:
    """(whether the loaded build has wgmma, i.e. is sm_90a; its __CUDA_ARCH__), from probe_arch."""
    import cupy as cp

    out = cp.zeros(2, cp.int32)
    module.get_function("probe_arch")((1,), (1,), (out,))
    flag, arch = (int(v) for v in cp.asnumpy(out))
    return flag == 1, arch


def build_module(backend: str, source: str) -> tuple[Any, str]:
    """The module, built for sm_90a and loaded, and the backend that built it.

    nvrtc: cupy.RawModule with --gpu-architecture=sm_90a (CuPy appends -arch=sm_90; NVRTC 13.0
    builds sm_90a from the pair); on a compile error, or a build without wgmma (probe_arch),
    nvcc. nvcc: ``nvcc -gencode=arch=compute_90a,code=sm_90a --cubin``, loaded from the file
    (CuPy's own nvcc backend adds a plain sm_90 target, and --cubin refuses two targets).
    """
    import cupy as cp

    if backend == "nvrtc":
        try:
            module = cp.RawModule(code=source, options=NVRTC_OPTIONS, backend="nvrtc")
            has_wgmma, arch = built_arch(module)  # RawModule compiles lazily: compiles here
            if has_wgmma:
                return module, "nvrtc"
            print(f"NVRTC built __CUDA_ARCH__ {arch} without sm_90a features; trying nvcc")
        except Exception as exc:  # CompileException, or NVRTC missing
            lines = str(exc).strip().splitlines()
            head = lines[0] if lines else type(exc).__name__
            print(f"NVRTC did not build for sm_90a ({head}); trying nvcc")
            if len(lines) > 1:
                print("\n".join(lines[1:12]))
    nvcc = os.environ.get("NVCC") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    folder = Path(tempfile.mkdtemp(prefix="wgmma_"))
    cu, cubin = folder / "module.cu", folder / "module.cubin"
    cu.write_text(source)
    cmd = [nvcc, "-std=c++17", NVCC_ARCH, "--cubin", "-o", str(cubin), str(cu)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(" ".join(cmd))
        print(done.stdout + done.stderr)
        raise SystemExit("nvcc did not build the probe for sm_90a")
    module = cp.RawModule(path=str(cubin))
    has_wgmma, arch = built_arch(module)
    if not has_wgmma:
        raise SystemExit(f"nvcc's build (__CUDA_ARCH__ {arch}) lacks the sm_90a features")
    return module, "nvcc"


def partial_stats(partial: Any, r: int, k: int, d: int) -> dict[str, np.ndarray]:
    """A diag pass's block partials ([R K (1 + 2D)] statistics, then R log-likelihoods, float64)
    summed over blocks: N_k, sum r x, sum r x^2 and the log-likelihoods on the host."""
    import cupy as cp

    total = cp.asnumpy(partial.sum(0))
    c = 1 + 2 * d
    s = total[: r * k * c].reshape(r, k, c)
    return {
        "nk": s[..., 0],
        "sx": s[..., 1 : 1 + d],
        "sxx": s[..., 1 + d :],
        "ll": total[r * k * c :],
    }


class BlockPartialPass:
    """A research pass whose ``launch(Xc, params)`` returns (run, block partials)."""

    def launch(self, Xc: Any, params: tuple) -> tuple[Any, Any]:
        raise NotImplementedError

    def stats(self, Xc: Any, params: tuple) -> dict[str, np.ndarray]:
        """One pass's statistics (``partial_stats``) on the host."""
        run, partial = self.launch(Xc, params)
        run()
        return partial_stats(partial, *params[1].shape)


def timed_ms(run: Callable[[], Any], repeat: int = 5) -> float:
    """Median milliseconds of ``repeat`` calls of ``run`` (after a warm-up), CUDA events."""
    import cupy as cp

    run()
    times = []
    for _ in range(repeat):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        run()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def skip_reason() -> str | None:
    """Why this GPU cannot run the probe (None: it is compute capability 9.0)."""
    try:
        import cupy as cp

        if cp.cuda.runtime.getDeviceCount() == 0:
            return "no CUDA device"
        cc = cp.cuda.Device().compute_capability
    except Exception as exc:  # no driver, no device, no CuPy
        return f"no CUDA device ({type(exc).__name__}: {exc})"
    if cc != "90":
        return f"this GPU is compute capability {cc[:-1]}.{cc[-1]}"
    return None
