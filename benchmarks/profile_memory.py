"""Where the device memory of a default ``fit`` goes: the live pool blocks at its high-water mark.

    PYTHONPATH=. python3 benchmarks/profile_memory.py [--rows 2000000] [--features 16] [--k 8]

A CuPy memory hook records every block taken from the pool with the gmm_core frames that asked
for it; at each new peak the live blocks are kept, and the largest are printed at the end.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import cupy as cp
    import numpy as np
    from cupy.cuda import memory_hook
    from sklearn.datasets import make_blobs

    from gmm_core import GaussianMixture

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--cov", default="diag")
    args = parser.parse_args()

    class Trace(memory_hook.MemoryHook):
        name = "trace"

        def __init__(self) -> None:
            self.live: dict[int, tuple[int, str]] = {}
            self.current = self.peak = 0
            self.at_peak: list[tuple[int, str]] = []

        def malloc_postprocess(self, **kw: Any) -> None:
            size = int(kw["mem_size"])
            frames = [
                f"{Path(f.filename).name}:{f.lineno}:{f.name}"
                for f in traceback.extract_stack()[:-1]
                if "gmm_core" in f.filename
            ]
            self.live[int(kw["mem_ptr"])] = (size, " < ".join(reversed(frames[-4:])))
            self.current += size
            if self.current > self.peak:
                self.peak = self.current
                self.at_peak = sorted(self.live.values(), reverse=True)

        def free_postprocess(self, **kw: Any) -> None:
            got = self.live.pop(int(kw["mem_ptr"]), None)
            if got:
                self.current -= got[0]

    X, _ = make_blobs(args.rows, n_features=args.features, centers=args.k, random_state=0)
    X = X.astype(np.float32)
    for kind, data in (("numpy", X), ("cupy", cp.asarray(X))):
        GaussianMixture(args.k, covariance_type=args.cov, backend="cupy", random_state=0).fit(data)
        trace = Trace()
        with trace:
            GaussianMixture(args.k, covariance_type=args.cov, backend="cupy", random_state=0).fit(
                data
            )
        print(
            f"== {kind} input {X.shape} K={args.k} {args.cov}: data {X.nbytes / 1e6:.1f} MB, "
            f"peak {trace.peak / 1e6:.1f} MB ({trace.peak / X.nbytes:.2f}x)"
        )
        for size, where in trace.at_peak[:12]:
            print(f"   {size / 1e6:9.2f} MB  {where}")


if __name__ == "__main__":
    main()
