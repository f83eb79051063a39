"""Every kernel of a public fit under Nsight Compute: where an EM iteration goes beyond the pass.

    ncu --profile-from-start off --metrics gpu__time_duration.sum --csv \
        python3 benchmarks/profile_iteration.py --case full > build/ncu_iter.csv
    python3 benchmarks/profile_iteration.py --summarise build/ncu_iter.csv

The first command profiles one ``GaussianMixture(...).fit(X)`` of a benchmark case
(``benchmarks/public_api.py``: telemetry, full, blobs_500k) from a CuPy array with all three
``*_init`` given, ``tol=0`` and ``--iters`` iterations, after a warm-up fit; only that fit runs
between ``cudaProfilerStart``/``Stop``. The second sums the CSV per kernel: launches and device
time, so the kernels that run once per iteration (launches = iterations or one more) show what
an iteration costs beside its pass.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def profile(case_name: str, iters: int) -> None:
    import warnings

    import cupy as cp

    from benchmarks.public_api import _gm, _inits, cases

    case = next(c for c in cases(False) if c["name"] == case_name)
    X = cp.asarray(case["X"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = _gm(case, random_state=0).fit(X)
        kw = {"tol": 0.0, "max_iter": iters, "random_state": 0, **_inits(gm)}
        _gm(case, **kw).fit(X)  # warm: every kernel loaded
        cp.cuda.Device().synchronize()
        cp.cuda.profiler.start()
        _gm(case, **kw).fit(X)
        cp.cuda.Device().synchronize()
        cp.cuda.profiler.stop()


def summarise(path: Path) -> None:
    launches: dict[str, int] = defaultdict(int)
    total_ns: dict[str, float] = defaultdict(float)
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))
    for row in csv.DictReader(lines[start:]):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = row["Kernel Name"].split("(")[0][:70]
        value = float(row["Metric Value"].replace(",", ""))
        scale = {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6, "second": 1e9}
        total_ns[name] += value * scale.get(row.get("Metric Unit", "nsecond"), 1.0)
        launches[name] += 1
    print(f"{'kernel':70} {'launches':>8} {'total us':>10} {'us each':>9}")
    for name in sorted(total_ns, key=total_ns.get, reverse=True):  # type: ignore[arg-type]
        n = launches[name]
        print(f"{name:70} {n:8d} {total_ns[name] / 1e3:10.1f} {total_ns[name] / 1e3 / n:9.1f}")
    print(f"{'all':70} {sum(launches.values()):8d} {sum(total_ns.values()) / 1e3:10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="full")
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--summarise", type=Path)
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise)
    else:
        profile(args.case, args.iters)


if __name__ == "__main__":
    main()
