"""One telemetry-sized fused pass under Nsight Compute (``ncu``): where the kernel's time goes.

    ncu --kernel-name regex:diag_pass --launch-skip 2 --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats \
        python3 benchmarks/profile_fused.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import cupy as cp

    from gmm_core._cupy import CupyEngine
    from gmm_core._gaussian import Params

    n, d, k = 10_000_000, 16, 32
    shared = "--shared" in sys.argv
    rs = cp.random.RandomState(0)
    X = rs.standard_normal((n, d), dtype=cp.float32) * 2
    engine = CupyEngine(shared_accumulators=shared)
    data = engine.prepare(X, None, "diag")
    means = X[rs.randint(0, n, size=k)].astype(cp.float64)[None]
    pc = cp.ones((1, k, d)) * 0.5
    params = Params(cp.full((1, k), 1.0 / k), means, 1.0 / pc**2, pc)
    for _ in range(4):
        engine.accumulate(data, params, cp.ones(1, bool))
    cp.cuda.Device().synchronize()


if __name__ == "__main__":
    main()
