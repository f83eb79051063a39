"""Where the screened large-K pass's time goes, per step and chunk size (device events).

    SCIPY_ARRAY_API=1 PYTHONPATH=. python3 benchmarks/profile_large_k_sparse.py --out p.json

``bench_large_k``'s case (1M x 128, K = 1024) at the parameters of a 6-iteration fit from its
start (the steady state of the public API's iterations): the pass's median time (5 runs, no
events) and, with ``large_k_sparse.profile`` on, each step's device milliseconds (mean of 3
passes), for several screening chunk sizes (``large_k_sparse.CHUNK_BYTES``); the float32 GEMM pass
beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_large_k import make_data  # noqa: E402
from benchmarks.large_k_sparse import after_six, profiled  # noqa: E402
from benchmarks.public_api import timed  # noqa: E402
from benchmarks.report import environment, log  # noqa: E402


def case(X: Any, cov: str, chunks: list[int]) -> dict[str, Any]:
    from gmm_core._cupy import CupyEngine, large_k_sparse

    params = after_six(X, cov)
    engine = CupyEngine()
    data = engine.prepare(X, None, cov)
    out: dict[str, Any] = {}
    engine.config.large_k_sparse = False
    out["float32_gemm_ms"] = 1e3 * timed(lambda: engine.large_k.accumulate(data, params), 5)[0]
    log(f"  {cov} float32 GEMM pass {out['float32_gemm_ms']:.2f} ms")
    engine.config.large_k_sparse = True
    default = large_k_sparse.CHUNK_BYTES
    for mb in chunks:
        large_k_sparse.CHUNK_BYTES = mb << 20
        ms, steps, _ = profiled(engine, data, params)
        out[f"chunk_{mb}MB"] = {"ms": ms, "steps_ms": steps}
        table = "  ".join(f"{k} {v:.2f}" for k, v in sorted(steps.items(), key=lambda t: -t[1]))
        log(f"  {cov} sparse, {mb} MB chunks: {ms:.2f} ms | {table}")
    large_k_sparse.CHUNK_BYTES = default
    # lks_select at 3 blocks per SM (80 registers, no spills) against the default 4
    engine.large_k.options = ("-DLKS_SELECT_BLOCKS=3",)
    large_k_sparse.SELECT_BLOCKS_PER_SM = 3
    out["select_3_blocks_ms"] = 1e3 * timed(lambda: engine.large_k.accumulate(data, params), 5)[0]
    engine.large_k.options = ()
    large_k_sparse.SELECT_BLOCKS_PER_SM = 4
    log(f"  {cov} sparse, lks_select at 3 blocks per SM: {out['select_3_blocks_ms']:.2f} ms")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--covs", default="spherical,diag")
    parser.add_argument("--chunks", default="8,16,32,64", help="MB, comma list")
    args = parser.parse_args()
    report: dict[str, Any] = {"environment": environment(), "cases": {}}
    X = make_data()
    for cov in args.covs.split(","):
        report["cases"][cov] = case(X, cov, [int(v) for v in args.chunks.split(",")])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
