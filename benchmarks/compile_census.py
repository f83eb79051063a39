"""Which lines of a cold first ``fit`` compile kernels, and how long each compilation takes.

    PYTHONPATH=. python3 benchmarks/compile_census.py [--case telemetry] [--predict]

Runs in a fresh, empty ``CUPY_CACHE_DIR`` (made here unless one is set). Every NVRTC compilation
(CuPy's generated elementwise/reduction kernels and gmm_core's own ``.cu`` sources alike) is
recorded with its time, the kernels it defines and the innermost ``gmm_core`` frames that asked
for it; the table groups them by calling line. Use it to find which array operations of the fit
path still cost a compilation when the cache is empty.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: the name of a kernel defined in a CUDA source (CuPy's generated ones and gmm_core's)
KERNEL_NAME = r"__global__\s+(?:void\s+)?(?:__launch_bounds__\([^)]*\)\s*)?(?:void\s+)?(\w+)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", default="telemetry")
    parser.add_argument("--predict", action="store_true", help="also predict() after the fit")
    args = parser.parse_args()
    os.environ.setdefault("CUPY_CACHE_DIR", tempfile.mkdtemp(prefix="census-"))
    import cupy as cp
    from cupy.cuda import compiler

    from benchmarks.public_api import cases
    from gmm_core import GaussianMixture

    records: list[tuple[float, str, str]] = []
    original = compiler._NVRTCProgram.compile

    def compile_and_record(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return original(self, *a, **k)
        finally:
            dt = time.perf_counter() - t0
            names = re.findall(KERNEL_NAME, self.src)
            frames = [
                f"{Path(f.filename).name}:{f.lineno} {f.name}"
                for f in traceback.extract_stack()
                if "gmm_core" in f.filename
            ]
            site = " < ".join(reversed(frames[-3:]))
            records.append((dt, ",".join(names[:3]) or self.name, site))

    compiler._NVRTCProgram.compile = compile_and_record
    case = next(c for c in cases(False) if c["name"] == args.case)
    X = cp.asarray(case["X"])
    cp.cuda.Device().synchronize()
    t0 = time.perf_counter()
    gm = GaussianMixture(case["k"], covariance_type=case["cov"], backend="cupy").fit(X)
    cp.cuda.Device().synchronize()
    wall = time.perf_counter() - t0
    if args.predict:
        t1 = time.perf_counter()
        gm.predict(X)
        cp.cuda.Device().synchronize()
        print(f"   predict after the fit: {time.perf_counter() - t1:.2f} s")
    print(
        f"== census {args.case}: cold fit {wall:.2f} s, n_iter {gm.n_iter_}, "
        f"{len(records)} compilations, {sum(r[0] for r in records):.2f} s in NVRTC"
    )
    print("   fit_timings_:", {k: round(v, 3) for k, v in gm.fit_timings_.items()})
    by_site: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for dt, names, site in records:
        by_site[site].append((dt, names))
    for site, items in sorted(by_site.items(), key=lambda kv: -sum(i[0] for i in kv[1])):
        total = sum(i[0] for i in items)
        print(f"{total:7.3f} s {len(items):3d}x  {site}")
        for dt, names in items:
            print(f"            {dt:6.3f} {names[:110]}")


if __name__ == "__main__":
    main()
