"""What the fused passes' instruction can reach: mma.sync TF32 (and FP16/BF16) throughput here.

    PYTHONPATH=. python3 benchmarks/probe_mma_peak.py [--out build/mma_peak.json]

The fused EM passes (gmm_core/cuda/em_diag.cu, em_full.cu) issue ``mma.sync.m16n8k8`` TF32
(through ``tc::mma``), the instruction of sm_80. Hopper's quoted dense TF32 peak (495 TFLOPS on
an H100/H200 SXM) is reached only by ``wgmma`` (warp-group MMA from shared memory); how much of
it ``mma.sync`` gets is what bounds any pass built on it. This probe runs only mma.sync (no
loads, independent accumulator chains, every SM busy) and, for scale, float32 FMAs, and prints
TFLOPS (median of 5 launches, CUDA events). The per-restart floor of a pass at the measured
rate is printed for the telemetry case (10M x 16, K = 32, diag: 2,080 multiply-adds per sample
in 3xTF32 = 3 products each).

FP16 and BF16 ``m16n8k16`` chains run beside TF32: three FP16 products carry what three TF32
products carry (11 significant bits each; ``benchmarks/tc_emulate.py`` emulates their sums), so
their measured rate over TF32's is what a fused pass would gain by them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SOURCE = r"""
// one m16n8 accumulator chain step of each instruction probed (operands as raw registers)
struct Tf32 {  // m16n8k8 TF32: 2 x 16 x 8 x 8 = 2048 flops per warp
    static constexpr unsigned mask = 0xffffffffu;  // operands as the earlier runs had them
    static __device__ void step(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, "
            "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};
struct F16 {  // m16n8k16 FP16 -> float32: 4096 flops per warp
    static constexpr unsigned mask = 0x3c003c00u;  // halves of at most 1: nothing overflows
    static __device__ void step(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
            "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};
struct Bf16 {  // m16n8k16 BF16 -> float32: 4096 flops per warp
    static constexpr unsigned mask = 0x3c003c00u;
    static __device__ void step(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
            "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

template <class Op, int CH>
__device__ void mma_chains(float* out, int iters) {
    unsigned a[4], b0, b1;
    const float t = 1.0f + threadIdx.x * 1e-7f;
    for (int i = 0; i < 4; ++i) a[i] = __float_as_uint(t + i * 1e-3f) & Op::mask;
    b0 = __float_as_uint(t * 0.5f) & Op::mask;
    b1 = __float_as_uint(t * 0.25f) & Op::mask;
    float c[CH][4];
    for (int j = 0; j < CH; ++j)
        for (int q = 0; q < 4; ++q) c[j][q] = 0.0f;
    for (int it = 0; it < iters; ++it) {
#pragma unroll
        for (int j = 0; j < CH; ++j) Op::step(c[j], a, b0, b1);
    }
    float s = 0.0f;
    for (int j = 0; j < CH; ++j)
        for (int q = 0; q < 4; ++q) s += c[j][q];
    if (s == 1234.5f) out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
extern "C" __global__ void mma4(float* out, int iters) { mma_chains<Tf32, 4>(out, iters); }
extern "C" __global__ void mma8(float* out, int iters) { mma_chains<Tf32, 8>(out, iters); }
extern "C" __global__ void f16x4(float* out, int iters) { mma_chains<F16, 4>(out, iters); }
extern "C" __global__ void f16x8(float* out, int iters) { mma_chains<F16, 8>(out, iters); }
extern "C" __global__ void bf16x8(float* out, int iters) { mma_chains<Bf16, 8>(out, iters); }

extern "C" __global__ void ffma8(float* out, int iters) {
    float v[8];
    const float t = 1.0f + threadIdx.x * 1e-7f;
    for (int j = 0; j < 8; ++j) v[j] = t + j;
    for (int it = 0; it < iters; ++it) {
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = fmaf(v[j], 0.999999f, 1e-7f);
    }
    float s = 0.0f;
    for (int j = 0; j < 8; ++j) s += v[j];
    if (s == 1234.5f) out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
"""

#: telemetry 10M x 16, K = 32, diag: E-step W^T [x, x^2] (32 x 32) and statistics R^T [x, x^2]
#: (32 x 33, N_k with them) multiply-adds per sample
TELEMETRY_MACS = 32 * 32 + 32 * 33
TELEMETRY_ROWS = 10_000_000


def measure(kernel: Any, flops_per_thread_iter: float, warps: int, blocks_per_sm: int) -> float:
    import cupy as cp

    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    grid, block = sms * blocks_per_sm, 32 * warps
    out = cp.zeros(grid * block, cp.float32)
    iters = 4096
    kernel((grid,), (block,), (out, cp.int32(iters)))  # warm-up (and compile)
    times = []
    for _ in range(5):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        kernel((grid,), (block,), (out, cp.int32(iters)))
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return grid * block * iters * flops_per_thread_iter / statistics.median(times) / 1e12


def main() -> None:
    import cupy as cp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    module = cp.RawModule(code=SOURCE, options=("-std=c++17",))
    rows: list[dict[str, Any]] = []
    # an m16n8k8 is 2 * 16 * 8 * 8 = 2048 flops per warp (64 per thread), an m16n8k16 twice that
    kernels = (("mma4", 4, 64), ("mma8", 8, 64), ("f16x4", 4, 128), ("f16x8", 8, 128))
    for name, chains, per_thread in (*kernels, ("bf16x8", 8, 128)):
        for warps, per_sm in ((4, 1), (4, 2), (8, 1), (8, 2), (16, 1)):
            tf = measure(module.get_function(name), per_thread * chains, warps, per_sm)
            rows.append({"kernel": name, "warps": warps, "blocks_per_sm": per_sm, "tflops": tf})
    for warps, per_sm in ((8, 2), (16, 2)):
        tf = measure(module.get_function("ffma8"), 16.0, warps, per_sm)
        rows.append({"kernel": "ffma8", "warps": warps, "blocks_per_sm": per_sm, "tflops": tf})
    best_mma = max(r["tflops"] for r in rows if r["kernel"].startswith("mma"))
    best_f16 = max(r["tflops"] for r in rows if r["kernel"].startswith("f16"))
    flops = 2.0 * TELEMETRY_MACS * TELEMETRY_ROWS * 3  # 3xTF32: three products
    restart_ms = flops / (best_mma * 1e12) * 1e3
    print(f"{'kernel':8} {'warps':>5} {'blocks/SM':>9} {'TFLOPS':>8}")
    for r in rows:
        print(f"{r['kernel']:8} {r['warps']:5d} {r['blocks_per_sm']:9d} {r['tflops']:8.1f}")
    print(
        f"best mma.sync TF32: {best_mma:.1f} TFLOPS; telemetry 3xTF32 products per restart at "
        f"that rate: {restart_ms:.3f} ms (8 restarts: {8 * restart_ms:.2f} ms, + 0.13 ms reading)"
    )
    print(f"best mma.sync FP16: {best_f16:.1f} TFLOPS ({best_f16 / best_mma:.2f}x TF32)")
    if args.out:
        from benchmarks.report import environment

        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "environment": environment(),
                    "rows": rows,
                    "best_mma_sync_tf32_tflops": best_mma,
                    "best_mma_sync_fp16_tflops": best_f16,
                    "telemetry_restart_products_ms": restart_ms,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
