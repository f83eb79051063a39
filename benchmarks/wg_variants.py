"""``diag_pass_wg`` per compile-time variant: one pass of 8 restarts over 10M x 16, K = 32.

    PYTHONPATH=. python3 benchmarks/wg_variants.py [DEFINES ...]

Each argument is a variant: comma-separated compiler options of the pass
(``DiagPassWG.options``, e.g. ``-DGMM_WG_FLUSH=32``), ``-`` for none. Per variant: 3 warm-up
passes, then the median of 5 rounds of 10 passes through the engine's ``accumulate``
(parameters, pass, reduction), the rounds interleaved across the variants so that a clock
drift hits them alike. ``ncu -k regex:diag_pass_wg --launch-skip 2 --launch-count 1`` over a
run with one variant profiles its third pass. Results: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import cupy

    from benchmarks.tune_fused import make_case
    from gmm_core._cupy import CupyEngine
    from gmm_core._gaussian import Params

    X, shift, (w, means, var) = make_case(10_000_000, 16, 32, 8)
    Xc = (X - shift.astype(np.float32)).astype(np.float32)
    engine = CupyEngine()
    data = engine.prepare(cupy.asarray(Xc), None, "diag")
    p = Params(*(cupy.asarray(a) for a in (w, means, var, 1 / np.sqrt(var))))
    passes = engine.diag_pass_wg
    plans = passes.plans(data, *means.shape[:2])
    if plans is None:
        raise SystemExit("diag_pass_wg does not serve this GPU (sm_90 needed) or GMM_CORE_WGMMA=0")
    variants = sys.argv[1:] or ["-"]
    times: dict[str, list[float]] = {v: [] for v in variants}
    for round_ in range(5 if len(variants) > 1 else 1):
        for v in variants:
            type(passes).options = tuple(o for o in v.split(",") if o != "-")
            for _ in range(3 if round_ == 0 else 1):
                passes.accumulate(data, p, plans)
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            for _ in range(10):
                passes.accumulate(data, p, plans)
            end.record()
            end.synchronize()
            times[v].append(cupy.cuda.get_elapsed_time(start, end) / 10)
    for v, t in times.items():
        print(f"{v:45s} median {statistics.median(t):.3f} ms per pass  {[round(x, 3) for x in t]}")


if __name__ == "__main__":
    main()
