"""compute-sanitizer target: one small full_pass_tc pass (several tiles per block, a partial
last tile, two component groups, two restarts), checked against the GEMM path.

    compute-sanitizer --tool racecheck python3 benchmarks/sanitize_full.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> int:
    import cupy as cp
    from gpu_fixtures import make_data, random_params

    from gmm_core._cupy import CupyEngine

    X = make_data(1_900, 24, 17, np.float32, seed=3)
    params = random_params(X, "full", 17, 2).map(cp.asarray)
    shift = X.mean(0)
    gemm = CupyEngine(tensor_cores=False)
    want = gemm.accumulate(gemm.prepare(X, shift, "full"), params, cp.ones(2, bool))
    status = 0
    for force_global in (False, True):  # U fragments in shared memory, then through L1
        engine = CupyEngine(tensor_cores=True)
        engine._n_sm = 4  # four blocks: several tiles each
        engine._full_tc_force_global_u = force_global
        data = engine.prepare(X, shift, "full")
        assert engine._full_tc_ok(data, 17)
        got = engine.accumulate(data, params, cp.ones(2, bool))
        worst = max(
            float(cp.abs(getattr(got, n) - getattr(want, n)).max() / cp.abs(getattr(want, n)).max())
            for n in ("loglik", "nk", "sx", "sxx")
        )
        where = "global" if force_global else "shared"
        print(
            f"full_pass_tc (U in {where} memory) vs GEMM path: worst relative difference "
            f"{worst:.2e}"
        )
        status |= worst >= 1e-4
    return status


if __name__ == "__main__":
    raise SystemExit(main())
