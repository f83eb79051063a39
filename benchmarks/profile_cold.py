"""What a cold first ``fit`` compiles: every kernel compilation, with its time, in a fresh process.

    PYTHONPATH=. CUPY_CACHE_DIR=$(mktemp -d) python3 benchmarks/profile_cold.py [--case telemetry]

Prints the fit's wall time and phases, the number of modules compiled into the (empty) kernel
cache, where gmm_core's kernels came from (prebuilt cubins, ``python -m gmm_core.build_kernels``,
or NVRTC; ``GMM_CORE_PREBUILT_KERNELS=0`` forces NVRTC), and a cProfile of the fit (gmm_core
functions by cumulative time, all by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", default="telemetry")
    args = parser.parse_args()
    t_start = time.perf_counter()
    import cupy as cp

    from benchmarks.public_api import cases
    from gmm_core import GaussianMixture, _cuda_loader, _prebuilt

    t_import = time.perf_counter() - t_start
    case = next(c for c in cases(False) if c["name"] == args.case)
    X = cp.asarray(case["X"])
    cp.cuda.Device().synchronize()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    gm = GaussianMixture(case["k"], covariance_type=case["cov"], backend="cupy").fit(X)
    cp.cuda.Device().synchronize()
    prof.disable()
    wall = time.perf_counter() - t0
    print(f"== cold {args.case}: fit {wall:.2f} s (imports {t_import:.2f} s), n_iter {gm.n_iter_}")
    print("   fit_timings_:", {k: round(v, 3) for k, v in gm.fit_timings_.items()})
    cache = Path(os.environ.get("CUPY_CACHE_DIR", Path.home() / ".cupy" / "kernel_cache"))
    # CuPy's modules lie at the top; prebuilt cubins are unpacked into a folder of their own
    files = [f for f in cache.glob("*") if f.is_file()] if cache.exists() else []
    print(f"   {len(files)} modules compiled into {cache}")
    print(
        f"   gmm_core kernels: {len(_prebuilt.served)} from prebuilt cubins "
        f"({_prebuilt.load_seconds:.2f} s unpacking and loading, "
        f"{'on' if _prebuilt.enabled() else 'off'}: {_prebuilt.prebuilt_dir()}), "
        f"{_cuda_loader.compile_seconds:.2f} s of NVRTC compiles (summed over threads)"
    )
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(r"gmm_core", 30)
    stats.sort_stats("tottime").print_stats(15)
    print(out.getvalue())


if __name__ == "__main__":
    main()
