"""What cuBLAS's integer tensor cores give the large-K E-step's product shape (a probe).

    PYTHONPATH=. python3 benchmarks/probe_int8_gemm.py --out int8.json

The large-K pass's E-step is ``L = W B^T`` per row chunk: ``W`` the components' weights
(K x F), ``B`` the chunk's features (rows x F), ``L`` (K x rows, column-major) written once and
read by the row kernel. Sliced into int8 digits (the Ozaki scheme) each product is exact in
int32, so float64-level log-densities would cost a few int8 GEMMs, one per digit order, at the
integer rate (1,979 TOPS dense on an H100/H200) instead of one float64 GEMM at 67 TFLOPS. This
times, for the issue-17 case (K = 1024, F = 128 and 256, chunks of 2,048 to 16,384 rows), the
cuBLAS int8 GEMM (``COMPUTE_32I``, "TN" as IMMA wants it, inner dimension F times the digits
of one order) beside the float64 and TF32 GEMMs of the same chunk, as effective TOPS of the
products and as milliseconds per 1M rows; the int8 result is checked exactly against an int64
product on the host. What it does not time: the digit split and the row kernel.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import environment  # noqa: E402

K = 1024
N_TOTAL = 1 << 20
#: cudaDataType / cublasComputeType values (library_types.h, cublas_api.h)
R_8I, R_32I, R_32F, R_64F = 3, 10, 0, 1
COMPUTE_32I, COMPUTE_TF32, COMPUTE_64F = 72, 77, 70


def timed_ms(fn: Any, reps: int = 20) -> float:
    import cupy

    fn()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(reps):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def gemm_tn(a: Any, b: Any, c: Any, a_type: int, c_type: int, compute: int, one: Any) -> None:
    """``c (m x n, column-major) = a^T b``: a is (m x k) and b (n x k), both row-major."""
    import cupy
    from cupy_backends.cuda.libs import cublas

    m, k = a.shape
    n = b.shape[0]
    zero = np.zeros_like(one)
    cublas.gemmEx(
        cupy.cuda.device.get_cublas_handle(), 1, 0, m, n, k, one.ctypes.data, a.data.ptr,
        a_type, k, b.data.ptr, a_type, k, zero.ctypes.data, c.data.ptr, c_type, m, compute, -1,
    )  # fmt: skip


def case(rows: int, inner: int) -> dict[str, Any]:
    import cupy

    rng = np.random.default_rng(0)
    w8 = rng.integers(-127, 128, size=(K, inner), dtype=np.int8)
    b8 = rng.integers(-127, 128, size=(rows, inner), dtype=np.int8)
    a, b = cupy.asarray(w8), cupy.asarray(b8)
    c = cupy.empty((rows, K), cupy.int32)
    one_i = np.ones(1, np.int32)
    gemm_tn(a, b, c, R_8I, R_32I, COMPUTE_32I, one_i)
    exact = bool(np.array_equal(cupy.asnumpy(c), b8.astype(np.int64) @ w8.astype(np.int64).T))
    t_int8 = timed_ms(lambda: gemm_tn(a, b, c, R_8I, R_32I, COMPUTE_32I, one_i))
    a64, b64 = a.astype(cupy.float64), b.astype(cupy.float64)
    c64 = cupy.empty((rows, K), cupy.float64)
    one_d = np.ones(1, np.float64)
    t_f64 = timed_ms(lambda: gemm_tn(a64, b64, c64, R_64F, R_64F, COMPUTE_64F, one_d))
    a32, b32 = a.astype(cupy.float32), b.astype(cupy.float32)
    c32 = cupy.empty((rows, K), cupy.float32)
    one_f = np.ones(1, np.float32)
    t_tf32 = timed_ms(lambda: gemm_tn(a32, b32, c32, R_32F, R_32F, COMPUTE_TF32, one_f))
    ops = 2.0 * rows * K * inner
    per_1m = N_TOTAL / rows
    out: dict[str, Any] = {"rows": rows, "inner": inner, "int8_exact": exact}
    for name, t in (("int8", t_int8), ("float64", t_f64), ("tf32", t_tf32)):
        out[f"{name}_ms"] = t
        out[f"{name}_tops"] = ops / t / 1e9
        out[f"{name}_ms_per_1m_rows"] = t * per_1m
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    env = environment()
    print(f"{'rows':>6} {'inner':>5} | {'int8 TOPS':>9} {'ms/1M':>6} | {'f64 TFLOPS':>10} "
          f"{'ms/1M':>6} | {'tf32 TFLOPS':>11} {'ms/1M':>6} | exact")  # fmt: skip
    for rows in (2048, 4096, 8192, 16384):
        for inner in (128, 256, 384, 512, 768):
            r = case(rows, inner)
            results.append(r)
            print(
                f"{rows:6d} {inner:5d} | {r['int8_tops']:9.0f} {r['int8_ms_per_1m_rows']:6.2f} | "
                f"{r['float64_tops']:10.1f} {r['float64_ms_per_1m_rows']:6.2f} | "
                f"{r['tf32_tops']:11.0f} {r['tf32_ms_per_1m_rows']:6.2f} | {r['int8_exact']}",
                flush=True,
            )
            # after every shape: a time limit keeps what was measured (H100 run cut at 14 of 20)
            args.out.write_text(json.dumps({"environment": env, "cases": results}, indent=1))


if __name__ == "__main__":
    main()
