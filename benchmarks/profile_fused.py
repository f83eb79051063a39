"""One benchmark-sized fused pass under Nsight Compute (``ncu``): where the kernel's time goes.

    ncu --kernel-name regex:diag_pass --launch-skip 2 --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats \
        python3 benchmarks/profile_fused.py [--restarts R] [--full]

Default: telemetry 10M x 16, K=32, diag (``--restarts 8``: eight restarts side by side, as
``n_init=8``); ``--full``: 1M x 32, K=16, full covariance (``full_pass_tc``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import cupy as cp

    from gmm_core._cupy import CupyEngine
    from gmm_core._gaussian import Params

    full = "--full" in sys.argv
    restarts = int(sys.argv[sys.argv.index("--restarts") + 1]) if "--restarts" in sys.argv else 1
    n, d, k = (1_000_000, 32, 16) if full else (10_000_000, 16, 32)
    cov = "full" if full else "diag"
    shared = "--shared" in sys.argv
    rs = cp.random.RandomState(0)
    X = rs.standard_normal((n, d), dtype=cp.float32) * 2
    engine = CupyEngine(shared_accumulators=shared)
    data = engine.prepare(X, None, cov)
    means = X[rs.randint(0, n, size=(restarts, k))].astype(cp.float64)
    if full:
        pc = cp.broadcast_to(cp.eye(d) * 0.5, (restarts, k, d, d)).copy()
        covs = cp.broadcast_to(cp.eye(d) * 4.0, (restarts, k, d, d)).copy()
    else:
        pc = cp.ones((restarts, k, d)) * 0.5
        covs = 1.0 / pc**2
    params = Params(cp.full((restarts, k), 1.0 / k), means, covs, pc)
    for _ in range(4):
        engine.accumulate(data, params, cp.ones(restarts, bool))
    cp.cuda.Device().synchronize()


if __name__ == "__main__":
    main()
