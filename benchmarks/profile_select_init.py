"""Where the sweep's shared initialisation spends its time (issue 17; ``gmm_core._init``).

    PYTHONPATH=. python3 benchmarks/profile_select_init.py [--rows N] [--json PATH]

Case: ``bench_select.py``'s (telemetry N x 16 float32 on the device, diag, K = 1..32, one
restart each, k-means init). Runs :func:`gmm_core._init.candidate_params` as the sweep does and,
beside it, the K=32 fit's own init (:func:`gmm_core._init.initial_params`), each with its steps
wrapped by timers that synchronise the device: the seeding (``seed_all``), the Lloyd iterations
of each tile-width bucket (``lloyd`` calls, passes counted), the hard-statistics pass that ends
each bucket, the host M-step of the initial parameters, the subsample. Medians of 3 runs after
one that compiles.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_gpu import telemetry  # noqa: E402
from benchmarks.report import environment, log  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import cupy

    from gmm_core import _init, _kmeans
    from gmm_core._cupy import CupyEngine

    totals: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)

    def sync() -> None:
        cupy.cuda.Device().synchronize()

    def wrap(module: Any, name: str, label: str) -> None:
        original = getattr(module, name)

        def timed(*a: Any, **k: Any) -> Any:
            sync()
            t0 = time.perf_counter()
            out = original(*a, **k)
            sync()
            totals[label].append(time.perf_counter() - t0)
            return out

        setattr(module, name, timed)

    engine = CupyEngine()
    original_pass = engine.lloyd_pass

    def counted_pass(*a: Any, **k: Any) -> Any:
        counts["passes"] += 1
        return original_pass(*a, **k)

    engine.lloyd_pass = counted_pass  # type: ignore[method-assign]
    wrap(_init, "seed_all", "seeding")
    wrap(_init, "lloyd_coarse_to_fine", "lloyd (coarse to fine)")
    wrap(_kmeans, "lloyd", "lloyd (each call)")
    wrap(_init, "_params_of", "host M-step (each candidate)")
    wrap(engine, "subsample", "subsample")

    X = cupy.asarray(telemetry(args.rows, 16, 32))
    data = engine.prepare(X, "auto", "diag")
    ks = list(range(1, 33))
    common = dict(
        init_params="kmeans",
        covariance_type="diag",
        reg_covar=1e-6,
        eps=10 * float(np.finfo(np.float32).eps),
        shift=data.shift,
        variance=data.variance,
    )

    def sweep() -> Any:
        draws = [_init.draw(np.random.RandomState(0), "kmeans", 1, data, k) for k in ks]
        return _init.candidate_params(engine, data, sizes=ks, draws=draws, **common)

    def k32() -> Any:
        return _init.initial_params(
            engine, data, n_components=32, n_init=1, random_state=np.random.RandomState(0),
            user={}, **common,
        )  # fmt: skip

    report: dict[str, Any] = {"environment": environment(), "rows": args.rows}
    for name, fn in (("sweep K=1..32", sweep), ("K=32 alone", k32)):
        fn()  # compiles
        runs: list[dict[str, Any]] = []
        for _ in range(3):
            totals.clear()
            counts.clear()
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            runs.append(
                {
                    "total_s": time.perf_counter() - t0,
                    **{k: sum(v) for k, v in totals.items()},
                    "calls": {k: len(v) for k, v in totals.items()},
                    "lloyd_passes": counts["passes"],
                }
            )
        med = sorted(runs, key=lambda r: r["total_s"])[1]
        report[name] = {"median_run": med, "totals_s": [r["total_s"] for r in runs]}
        log(f"== {name}: {statistics.median(r['total_s'] for r in runs) * 1e3:.1f} ms")
        for key, value in med.items():
            if isinstance(value, float):
                log(f"   {key:32s} {value * 1e3:8.1f} ms ({med['calls'].get(key, 1)} calls)")
        log(f"   Lloyd passes {med['lloyd_passes']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
