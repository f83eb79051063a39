"""What Hopper's warp-group MMA reaches in TF32: wgmma m64nNk8 correctness and throughput (sm_90a).

    PYTHONPATH=. python3 benchmarks/probe_wgmma.py [--out build/wgmma.json] [--backend nvrtc|nvcc]
        [--force] [--dump-source FILE]

The fused EM passes issue ``mma.sync.m16n8k8`` TF32 (``benchmarks/probe_mma_peak.py`` measures
it); Hopper's quoted dense TF32 peak (495 TFLOPS on an H100/H200 SXM) is reached only through
``wgmma.mma_async`` (one warp group of 128 threads, B from shared memory through a 64-bit matrix
descriptor, A from registers or shared memory). This probe, on a compute-capability-9.0 GPU only
(anything else: "skipped", exit 0):

1. checks that ``wgmma.mma_async.sync.aligned.m64nNk8.f32.tf32.tf32`` computes what this file
   assumes, for N = 64, 128, 256, with A from registers (RS) and from shared memory (SS): one warp
   group, K = 64 (8 instructions chained on one accumulator), B (and A) staged in the
   no-swizzle K-major core-matrix layout, every output element compared with NumPy float64 on
   TF32-exact random inputs; two structured inputs check the accumulator rows and columns alone.
   The normwise relative error must stay under 1e-4 (TF32-exact products, float32
   accumulation: ~1e-7 to 1e-6; a wrong descriptor or fragment layout gives O(0.1 to 1)). On a
   failure it prints what it can infer (where each accumulator register's value really belongs,
   whether swapped LBO/SBO or swapped A registers pass), writes the JSON and exits 1 before any
   timing (``--force`` times anyway, still exiting 1);
2. times back-to-back wgmma m64n256k8 and m64n128k8 (RS and SS; 1 or 2 accumulator sets; 1 to 4
   warp groups per CTA, 1 or 2 CTAs per SM, one grid wave of CTAs on every SM), 4 instructions per
   commit group with one group left in flight (``wgmma.wait_group 1``), and prints TFLOPS
   (2 * 64 * N * 8 flops per instruction per warp group; median of 5 launches, CUDA events);
3. times ``mma.sync.m16n8k8`` TF32 with probe_mma_peak's kernels for scale, and prints the floors
   both rates imply for the telemetry case (10M x 16, K = 32, diag, 3xTF32): per restart
   3 products x 2,080 multiply-adds per sample x 2 flops x 1e7 samples, and per EM iteration with
   n_init = 8: 8 x that + 0.13 ms to read the 640 MB.

The building blocks (the wrappers, the descriptor and core-matrix layout with their sources,
the sm_90a build) are ``benchmarks/wgmma.py``'s. The CUDA source is generated
(``cuda_source()``); ``--dump-source FILE`` writes it and exits, without a GPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.probe_mma_peak import SOURCE as MMA_SYNC_SOURCE  # noqa: E402
from benchmarks.probe_mma_peak import TELEMETRY_MACS, TELEMETRY_ROWS  # noqa: E402
from benchmarks.probe_mma_peak import measure as measure_mma_sync  # noqa: E402
from benchmarks.wgmma import (  # noqa: E402
    LBO,
    SBO,
    M,
    build_module,
    preamble,
    skip_reason,
    timed_ms,
    wgmma_function,
)

#: N of the correctness kernels
CHECK_NS = (64, 128, 256)
#: k-steps (8 TF32 each) of the correctness kernels: K = 64
CHECK_KSTEPS = 8
#: normwise relative error above which a product is wrong (TF32-exact inputs: ~1e-7 to 1e-6)
TOLERANCE = 1e-4
#: wgmma instructions (distinct B tiles) per accumulator set per commit group
TP_UNROLL = 4
#: throughput kernels: (form, N, accumulator sets, warp groups per CTA, CTAs per SM); each
#: fits in registers (__launch_bounds__(128 w, b)) and in 48 KB of shared memory per CTA
TP_VARIANTS: tuple[tuple[str, int, int, int, int], ...] = tuple(
    (form, n, sets, wgs, per_sm)
    for form in ("rs", "ss")
    for n, sets, wgs, per_sm in (
        (256, 1, 1, 1),
        (256, 1, 2, 1),
        (256, 1, 3, 1),
        (256, 1, 1, 2),
        (128, 1, 2, 1),
        (128, 1, 2, 2),
        (128, 1, 4, 1),
        (128, 2, 2, 1),
        (128, 2, 1, 2),
    )
)
#: flops a throughput launch aims at (about 5 ms at 500 TFLOPS)
TP_TARGET_FLOPS = 2.5e12
#: the telemetry case's read of its 640 MB (10M x 16 float32) per iteration, ms
TELEMETRY_READ_MS = 0.13
#: restarts of the telemetry case's per-iteration floor
TELEMETRY_N_INIT = 8


def _check_kernel(form: str, n: int) -> str:
    """``check_<form>_n<n>(A, B, out, lbo, sbo, a_swap)``: one warp group, D = A B^T, K = 64.

    A: 64 x K, B: n x K, both row-major float32 (TF32-exact) in global memory; out: the raw
    accumulators, thread t's register i at out[t * n/2 + i] (the host maps them to (row, col)).
    lbo / sbo: the descriptor's byte offsets (the staged layout is fixed: 128 / 256 is right,
    256 / 128 the swapped guess). a_swap (RS): load a1 and a2 the other way round (diagnosis).
    """
    r = n // 2
    if form == "rs":
        staging = f"    stage_tiles(sB, B, {n}, CHECK_KSTEPS);"
        operands = """\
    const int K = 8 * CHECK_KSTEPS;
    // A fragment from registers: warp w holds rows 16w..16w+15 of each 64 x 8 k-step,
    // a0 = (g, q), a1 = (g + 8, q), a2 = (g, q + 4), a3 = (g + 8, q + 4) (CUTLASS
    // GMMA::ALayout_64x8; the mma.sync m16n8k8 TF32 A fragment).
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const int r0 = 16 * warp + g;
    unsigned a[CHECK_KSTEPS][4];
#pragma unroll
    for (int s = 0; s < CHECK_KSTEPS; ++s) {
        const float* As = A + 8 * s;
        a[s][0] = __float_as_uint(As[r0 * K + q]);
        a[s][1] = __float_as_uint(a_swap ? As[r0 * K + q + 4] : As[(r0 + 8) * K + q]);
        a[s][2] = __float_as_uint(a_swap ? As[(r0 + 8) * K + q] : As[r0 * K + q + 4]);
        a[s][3] = __float_as_uint(As[(r0 + 8) * K + q + 4]);
    }"""
        issue = f"wgmma_rs_n{n}(d, a[s], make_desc(sB + s * {n} * 8, lbo, sbo), 1);"
    else:
        staging = f"""\
    float* sA = smem + CHECK_KSTEPS * {n} * 8;
    stage_tiles(sB, B, {n}, CHECK_KSTEPS);
    stage_tiles(sA, A, {M}, CHECK_KSTEPS);"""
        operands = "    (void)a_swap;"
        issue = (
            f"wgmma_ss_n{n}(d, make_desc(sA + s * {M} * 8, lbo, sbo), "
            f"make_desc(sB + s * {n} * 8, lbo, sbo), 1);"
        )
    return f"""
extern "C" __global__ void __launch_bounds__(128, 1)
check_{form}_n{n}(const float* A, const float* B, float* out, unsigned lbo, unsigned sbo,
                  int a_swap) {{
    extern __shared__ __align__(128) float smem[];
    float* sB = smem;
{staging}
    fence_proxy_async();
    __syncthreads();
{operands}
    float d[{r}];
#pragma unroll
    for (int i = 0; i < {r}; ++i) d[i] = 0.0f;
    fence_acc(d);
    wg_fence();
#pragma unroll
    for (int s = 0; s < CHECK_KSTEPS; ++s) {{
        // K-step s: its tiles start s * rows * 32 bytes further; the instructions chain on
        // the same accumulators without a fence between them (same shape)
        {issue}
    }}
    wg_commit();
    wg_wait<0>();
    fence_acc(d);
#pragma unroll
    for (int i = 0; i < {r}; ++i) out[threadIdx.x * {r} + i] = d[i];
}}
"""


def tp_name(form: str, n: int, sets: int, wgs: int, per_sm: int) -> str:
    return f"tp_{form}_n{n}_s{sets}_w{wgs}_b{per_sm}"


def tp_shared_bytes(form: str, n: int) -> int:
    """Dynamic shared memory of a throughput CTA: TP_UNROLL B tiles (+ TP_UNROLL A tiles, SS)."""
    return TP_UNROLL * n * 8 * 4 + (TP_UNROLL * M * 8 * 4 if form == "ss" else 0)


def _tp_kernel(form: str, n: int, sets: int, wgs: int, per_sm: int) -> str:
    """Back-to-back wgmma m64n<n>k8: per iteration, per warp group, TP_UNROLL x sets instructions.

    Each warp group issues, per iteration, the TP_UNROLL B tiles (distinct shared-memory
    addresses) into each of its ``sets`` accumulator sets, commits them as one group and waits
    until at most one group is in flight (CUTLASS's mainloop: warpgroup_arrive, gemm,
    commit_batch, warpgroup_wait<1>). The warp groups of a CTA share the tiles (SS: the A tiles
    too; the rate does not depend on the addresses).
    """
    r = n // 2
    # B tile u at smem + u * n * 8 words: 2n descriptor units (16 bytes) further; SS: A tile u
    # (64 x 8 TF32, 2048 bytes = 128 units) after the B tiles
    if form == "rs":
        operands = """\
    unsigned a[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) a[j] = __float_as_uint(pseudo(7919u * threadIdx.x + j + 3u));"""
        issue = f"wgmma_rs_n{n}(d[s], a, desc_b + {2 * n}ull * u, 1);"
    else:
        operands = (
            "    const unsigned long long desc_a = "
            f"make_desc(smem + {TP_UNROLL * n * 8}, DESC_LBO, DESC_SBO);"
        )
        issue = f"wgmma_ss_n{n}(d[s], desc_a + 128ull * u, desc_b + {2 * n}ull * u, 1);"
    return f"""
extern "C" __global__ void __launch_bounds__({128 * wgs}, {per_sm})
{tp_name(form, n, sets, wgs, per_sm)}(float* out, int iters) {{
    extern __shared__ __align__(128) float smem[];
    const int words = {tp_shared_bytes(form, n) // 4};
    for (int i = threadIdx.x; i < words; i += blockDim.x) smem[i] = pseudo(i + 1);
    fence_proxy_async();
    __syncthreads();
    const unsigned long long desc_b = make_desc(smem, DESC_LBO, DESC_SBO);
{operands}
    float d[{sets}][{r}];
#pragma unroll
    for (int s = 0; s < {sets}; ++s)
#pragma unroll
        for (int i = 0; i < {r}; ++i) d[s][i] = 0.0f;
    for (int it = 0; it < iters; ++it) {{
#pragma unroll
        for (int s = 0; s < {sets}; ++s) fence_acc(d[s]);
        wg_fence();
#pragma unroll
        for (int u = 0; u < TP_UNROLL; ++u)
#pragma unroll
            for (int s = 0; s < {sets}; ++s) {issue}
        wg_commit();
        wg_wait<1>();
#pragma unroll
        for (int s = 0; s < {sets}; ++s) fence_acc(d[s]);
    }}
    wg_wait<0>();
    float sum = 0.0f;
#pragma unroll
    for (int s = 0; s < {sets}; ++s) {{
        fence_acc(d[s]);
#pragma unroll
        for (int i = 0; i < {r}; ++i) sum += d[s][i];
    }}
    if (sum == 1234.5f) out[blockIdx.x * blockDim.x + threadIdx.x] = sum;
}}
"""


def cuda_source() -> str:
    """The probe's CUDA source: wgmma wrappers, the correctness and the throughput kernels."""
    defines = f"#define CHECK_KSTEPS {CHECK_KSTEPS}\n#define TP_UNROLL {TP_UNROLL}\n"
    parts = [defines, preamble()]
    shapes = sorted({(form, n) for form in ("rs", "ss") for n in CHECK_NS})
    shapes += sorted({(f, n) for f, n, *_ in TP_VARIANTS} - set(shapes))
    parts += [wgmma_function(form, n) for form, n in shapes]
    parts += [_check_kernel(form, n) for form in ("rs", "ss") for n in CHECK_NS]
    parts += [_tp_kernel(*variant) for variant in TP_VARIANTS]
    return "".join(parts)


# ------------------------------------------------------------------------------------------
# host side


def tf32(x: np.ndarray) -> np.ndarray:
    """float32 rounded to TF32 (10 mantissa bits, nearest even), as float32."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    bits = (bits + np.uint32(0xFFF) + ((bits >> np.uint32(13)) & np.uint32(1))) & np.uint32(
        0xFFFFE000
    )
    return bits.view(np.float32)


def d_layout(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of accumulator register i of thread t, arrays of shape (128, n / 2).

    CUTLASS GMMA::CLayout_64xN ((4,8,4),(2,2,N/8)):((128,1,16),(64,8,512)) over the column-major
    64 x N tile: the mma.sync m16n8 C fragment per warp (16 rows), repeated over N / 8 columns.
    """
    t = np.arange(128)[:, None]
    i = np.arange(n // 2)[None, :]
    warp, lane = t // 32, t % 32
    row = 16 * warp + lane // 4 + 8 * ((i // 2) % 2)
    col = 8 * (i // 4) + 2 * (lane % 4) + i % 2
    return np.broadcast_to(row, (128, n // 2)), np.broadcast_to(col, (128, n // 2))


def inputs(test: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(A 64 x K, B n x K) float32, TF32-exact.

    random: uniform in [-1, 1) rounded to TF32 (every element distinct in practice);
    rows: A[m, k] = m + 1, B = 1, so D[m, c] = K (m + 1) checks the rows of the accumulator
    layout (and the A rows) whatever the k-order; cols: A = 1, B[c, k] = c + 1, D = K (c + 1)
    checks its columns (and B's N-direction, SBO) likewise.
    """
    k = 8 * CHECK_KSTEPS
    if test == "random":
        a = tf32(rng.uniform(-1, 1, (M, k)).astype(np.float32))
        b = tf32(rng.uniform(-1, 1, (n, k)).astype(np.float32))
    elif test == "rows":
        a = np.repeat(np.arange(1, M + 1, dtype=np.float32)[:, None], k, axis=1)
        b = np.ones((n, k), np.float32)
    else:
        a = np.ones((M, k), np.float32)
        b = np.repeat(np.arange(1, n + 1, dtype=np.float32)[:, None], k, axis=1)
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


def run_check(
    module: Any, form: str, n: int, a: np.ndarray, b: np.ndarray, lbo: int, sbo: int, a_swap: int
) -> np.ndarray:
    """The raw accumulators (128, n / 2) of check_<form>_n<n> on A, B."""
    import cupy as cp

    kernel = module.get_function(f"check_{form}_n{n}")
    shared = CHECK_KSTEPS * 8 * 4 * (n + (M if form == "ss" else 0))
    if shared > 48 * 1024:
        kernel.max_dynamic_shared_size_bytes = shared
    out = cp.full(128 * (n // 2), np.nan, cp.float32)
    args = (cp.asarray(a), cp.asarray(b), out, np.uint32(lbo), np.uint32(sbo), np.int32(a_swap))
    kernel((1,), (128,), args, shared_mem=shared)
    cp.cuda.Device().synchronize()
    return cp.asnumpy(out).reshape(128, n // 2)


def compare(raw: np.ndarray, ref: np.ndarray, n: int, test: str) -> dict[str, Any]:
    """Every element of D (raw mapped through d_layout) against ref; a diagnosis if it fails.

    The diagnosis says where each wrong register's value belongs: on the random input the
    reference element it equals (to 1e-6 of the largest; elements are distinct in practice, so
    with right operands and a wrong D layout every register finds its place), on the structured
    inputs the row (rows) or column (cols) its value K (index + 1) names.
    """
    rows, cols = d_layout(n)
    covered = np.unique(rows * n + cols).size
    d = np.full((M, n), np.nan)
    d[rows, cols] = raw
    scale = float(np.abs(ref).max())
    err = np.abs(d - ref)
    rel = float(np.nanmax(err) / scale) if np.isfinite(d).all() else float("inf")
    result: dict[str, Any] = {
        "max_rel_err": rel,
        "layout_covers_all": covered == M * n,
        "pass": bool(covered == M * n and rel < TOLERANCE),
    }
    if result["pass"]:
        return result
    result["bad_elements"] = int((~(err <= TOLERANCE * scale)).sum())
    values = raw.ravel().astype(np.float64)
    if test == "random":
        flat = ref.ravel()
        order = np.argsort(flat)
        pos = np.clip(np.searchsorted(flat[order], values), 1, flat.size - 1)
        lo, hi = order[pos - 1], order[pos]
        near = np.where(np.abs(flat[lo] - values) <= np.abs(flat[hi] - values), lo, hi)
        matched = np.abs(flat[near] - values) <= 1e-6 * scale
        same = matched & (near == (rows * n + cols).ravel())
        where = [f"the value of ({k // n}, {k % n})" for k in near.tolist()]
    else:
        index = values / (8 * CHECK_KSTEPS) - 1  # D = K (index + 1)
        assumed = (rows if test == "rows" else cols).ravel()
        matched = (index == np.round(index)) & (index >= 0) & (index < (M if test == "rows" else n))
        same = matched & (index == assumed)
        where = [f"{test[:-1]} {int(v)}'s value" if v == round(v) else "" for v in index.tolist()]
    result["registers_matching_some_element"] = int(matched.sum())
    result["registers_at_assumed_place"] = int(same.sum())
    examples = []
    for idx in np.flatnonzero(~same)[:4].tolist():
        t, i = divmod(idx, n // 2)
        found = where[idx] if matched[idx] else f"{values[idx]:.6g}, no element's value"
        examples.append(f"thread {t} d{i}: assumed ({rows[t, i]}, {cols[t, i]}), holds {found}")
    result["examples"] = examples
    return result


def correctness(module: Any, rng: np.random.Generator) -> tuple[bool, list[dict[str, Any]]]:
    """All check kernels on the three inputs; on a failure the alternative guesses too."""
    results: list[dict[str, Any]] = []
    ok = True
    for form in ("rs", "ss"):
        for n in CHECK_NS:
            for test in ("random", "rows", "cols"):
                a, b = inputs(test, n, rng)
                ref = a.astype(np.float64) @ b.astype(np.float64).T
                res = compare(run_check(module, form, n, a, b, LBO, SBO, 0), ref, n, test)
                res.update(form=form, n=n, test=test, lbo=LBO, sbo=SBO, a_swap=0)
                results.append(res)
                ok &= res["pass"]
                if res["pass"] or test != "random":
                    continue
                # diagnosis: which other guess would have computed this product right
                guesses = [(SBO, LBO, 0)] + ([(LBO, SBO, 1), (SBO, LBO, 1)] if form == "rs" else [])
                for lbo, sbo, swap in guesses:
                    alt = compare(run_check(module, form, n, a, b, lbo, sbo, swap), ref, n, test)
                    alt.update(form=form, n=n, test=test, lbo=lbo, sbo=sbo, a_swap=swap)
                    alt["diagnosis_only"] = True
                    results.append(alt)
    return ok, results


def print_correctness(results: list[dict[str, Any]]) -> None:
    print(
        f"{'form':4} {'N':>4} {'input':7} {'LBO':>4} {'SBO':>4} {'a_swap':>6} {'max rel err':>12}"
    )
    for r in results:
        tag = "ok" if r["pass"] else "FAIL"
        if r.get("diagnosis_only"):
            tag = "(diagnosis) " + ("would pass" if r["pass"] else "fails too")
        print(
            f"{r['form']:4} {r['n']:4d} {r['test']:7} {r['lbo']:4d} {r['sbo']:4d} "
            f"{r['a_swap']:6d} {r['max_rel_err']:12.3g}  {tag}"
        )
        if not r["pass"] and not r.get("diagnosis_only"):
            print(
                f"      {r['bad_elements']} of {M * r['n']} elements wrong; "
                f"{r['registers_matching_some_element']} registers hold some element's value, "
                f"{r['registers_at_assumed_place']} at the (row, col) assumed"
            )
            for line in r["examples"]:
                print("      " + line)


def throughput(module: Any) -> list[dict[str, Any]]:
    """Every TP_VARIANTS kernel timed (a launch error is recorded in its row, not raised)."""
    import cupy as cp

    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    rows: list[dict[str, Any]] = []
    for number, (form, n, sets, wgs, per_sm) in enumerate(TP_VARIANTS):
        kernel = module.get_function(tp_name(form, n, sets, wgs, per_sm))
        grid, block, shared = sms * per_sm, 128 * wgs, tp_shared_bytes(form, n)
        flops_per_iter = grid * wgs * TP_UNROLL * sets * 2.0 * M * n * 8
        iters = max(16, int(TP_TARGET_FLOPS / flops_per_iter))
        out = cp.zeros(grid * block, cp.float32)
        row: dict[str, Any] = {
            "instruction": f"wgmma m64n{n}k8 {form.upper()}",
            "form": form,
            "n": n,
            "accumulator_sets": sets,
            "warp_groups_per_cta": wgs,
            "ctas_per_sm": per_sm,
            "iters": iters,
            "shared_bytes": shared,
        }
        try:
            row["registers"] = int(kernel.num_regs)
            row["local_bytes"] = int(kernel.local_size_bytes)
            launch = functools.partial(
                kernel, (grid,), (block,), (out, np.int32(iters)), shared_mem=shared
            )
            if number == 0:  # bring the clocks up before the first timing
                for _ in range(10):
                    launch()
            seconds = 1e-3 * timed_ms(launch)
        except Exception as exc:  # a launch that fails is reported, the others still run
            row.update(error=f"{type(exc).__name__}: {exc}", ms=float("nan"), tflops=float("nan"))
        else:
            row.update(ms=seconds * 1e3, tflops=flops_per_iter * iters / seconds / 1e12)
        rows.append(row)
    return rows


def mma_sync_rates() -> list[dict[str, Any]]:
    import cupy as cp

    module = cp.RawModule(code=MMA_SYNC_SOURCE, options=("-std=c++17",))
    rows = []
    # an m16n8k8 is 2 * 16 * 8 * 8 = 2048 flops per warp: 64 per thread, 8 chains
    for warps, per_sm in ((4, 2), (8, 1), (8, 2), (16, 1)):
        tf = measure_mma_sync(module.get_function("mma8"), 64.0 * 8, warps, per_sm)
        rows.append({"kernel": "mma8", "warps": warps, "blocks_per_sm": per_sm, "tflops": tf})
    return rows


def best_of(rows: list[dict[str, Any]], form: str) -> float:
    """The highest rate of the rows of ``form`` that ran (nan if none did)."""
    rates = [r["tflops"] for r in rows if r["form"] == form and "error" not in r]
    return max(rates) if rates else float("nan")


def floors(rate_tflops: float) -> dict[str, float]:
    """Telemetry case (10M x 16, K = 32, diag, 3xTF32) at ``rate_tflops``."""
    flops = 3 * 2.0 * TELEMETRY_MACS * TELEMETRY_ROWS
    products_ms = flops / (rate_tflops * 1e12) * 1e3
    return {
        "tflops": rate_tflops,
        "restart_products_ms": products_ms,
        "restart_iteration_floor_ms": products_ms + TELEMETRY_READ_MS,
        "n_init8_iteration_floor_ms": TELEMETRY_N_INIT * products_ms + TELEMETRY_READ_MS,
    }


def write(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    try:
        from benchmarks.report import environment

        payload = {"environment": environment(), **payload}
    except Exception as exc:  # never lose the results over the bookkeeping
        payload = {"environment_error": repr(exc), **payload}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--backend", choices=("nvrtc", "nvcc"), default="nvrtc")
    parser.add_argument(
        "--force", action="store_true", help="time even if the correctness check fails"
    )
    parser.add_argument("--dump-source", type=Path, help="write the CUDA source there and exit")
    args = parser.parse_args()
    source = cuda_source()
    if args.dump_source:
        args.dump_source.write_text(source)
        print(f"wrote {args.dump_source}")
        return

    reason = skip_reason()
    if reason:
        message = f"skipped: needs sm_90 (compute capability 9.0, an H100/H200): {reason}"
        print(message)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"skipped": message}, indent=1))
        return

    module, backend = build_module(args.backend, source)
    print(f"compiled for sm_90a with {backend}")
    rows, cols = d_layout(16)
    sample = " ".join(f"d{i}=({rows[5, i]},{cols[5, i]})" for i in range(8))
    print(
        "D layout assumed (m64nNk8 f32): thread t register i -> row 16(t/32) + (t%32)/4 + "
        f"8((i/2)%2), col 8(i/4) + 2(t%4) + i%2; e.g. thread 5: {sample}"
    )
    payload: dict[str, Any] = {
        "backend": backend,
        "descriptor": {"lbo": LBO, "sbo": SBO, "swizzle": "none", "k_steps": CHECK_KSTEPS},
        "tolerance": TOLERANCE,
    }
    try:
        ok, checks = correctness(module, np.random.default_rng(12345))
    except Exception as exc:  # a kernel fault (bad descriptor address, ...): report, stop
        print(f"wgmma correctness kernels FAILED to run: {type(exc).__name__}: {exc}")
        write(args.out, {**payload, "correct": False, "error": f"{type(exc).__name__}: {exc}"})
        sys.exit(1)
    print_correctness(checks)
    payload.update(correct=ok, correctness=checks)
    if not ok:
        print("wgmma correctness check FAILED: the layouts above are wrong; not timing")
        if not args.force:
            write(args.out, payload)
            sys.exit(1)
        print("--force: timing anyway")

    tp_rows = throughput(module)
    mma_rows = mma_sync_rates()
    print(
        f"{'instruction':18} {'sets':>4} {'WG/CTA':>6} {'CTA/SM':>6} {'regs':>4} {'spill':>5} "
        f"{'ms':>7} {'TFLOPS':>7}"
    )
    for r in tp_rows:
        print(
            f"{r['instruction']:18} {r['accumulator_sets']:4d} {r['warp_groups_per_cta']:6d} "
            f"{r['ctas_per_sm']:6d} {r.get('registers', -1):4d} {r.get('local_bytes', -1):5d} "
            f"{r['ms']:7.3f} {r['tflops']:7.1f}" + (f"  {r['error']}" if "error" in r else "")
        )
    for r in mma_rows:
        print(
            f"{'mma.sync m16n8k8':18} {8:4d} {'-':>6} {r['blocks_per_sm']:6d} {'':4} {'':5} "
            f"{'':7} {r['tflops']:7.1f}  ({r['warps']} warps/CTA)"
        )
    best = {
        "mma.sync m16n8k8": max(r["tflops"] for r in mma_rows),
        "wgmma RS (A in registers)": best_of(tp_rows, "rs"),
        "wgmma SS (A in shared memory)": best_of(tp_rows, "ss"),
    }
    floor = {name: floors(rate) for name, rate in best.items()}
    print(
        f"telemetry 10M x 16, K = 32, diag, 3xTF32 ({3 * TELEMETRY_MACS} multiply-adds per sample "
        f"per restart; + {TELEMETRY_READ_MS} ms reading 640 MB per iteration):"
    )
    for name, f in floor.items():
        print(
            f"  {name:30} {f['tflops']:6.1f} TFLOPS: products {f['restart_products_ms']:.3f} ms "
            f"per restart; iteration floor 1 restart {f['restart_iteration_floor_ms']:.3f} ms, "
            f"n_init={TELEMETRY_N_INIT} {f['n_init8_iteration_floor_ms']:.3f} ms"
        )
    payload.update(throughput=tp_rows, mma_sync=mma_rows, best_tflops=best, telemetry_floors=floor)
    write(args.out, payload)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
