"""Per-iteration cost of two checkouts of gmm_core, interleaved in one run on one GPU.

    PYTHONPATH=. python3 benchmarks/ab_per_iteration.py --a build/base --b . [--rounds 5]

Between device calls the same code measures a few percent apart (clocks, the machine), more
than a change to the kernels around a pass is worth, so a change is judged against the commit
before it in the same run: each round starts one fresh process per checkout (A, B, A, B, ...),
and each process times the public fit (all ``*_init`` given, ``tol=0``) at 5 and 65 iterations,
medians of 3, per case; the table gives the medians over rounds and B / A. ``--a`` is a tree
holding the other ``gmm_core`` (e.g. ``git archive HEAD gmm_core | tar -x -C build/base``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, statistics, sys, time, warnings
import numpy as np
import cupy as cp
from gmm_core import GaussianMixture
sys.path.insert(0, sys.argv[1])
from benchmarks.bench_gpu import telemetry

cases = {
    "full": (telemetry(1_000_000, 32, 16, seed=1), 16, "full"),
    "telemetry": (telemetry(10_000_000, 16, 32), 32, "diag"),
}
out = {}
for name in sys.argv[2].split(","):
    X, k, cov = cases[name]
    Xd = cp.asarray(X)
    gm = GaussianMixture(k, covariance_type=cov, backend="cupy", random_state=0).fit(Xd)
    kw = dict(weights_init=gm.weights_, means_init=gm.means_, precisions_init=gm.precisions_)

    def fit(n):
        return GaussianMixture(k, covariance_type=cov, backend="cupy", tol=0.0, max_iter=n,
                               random_state=0, **kw).fit(Xd)

    def med(n, repeat=3):
        times = []
        for _ in range(repeat):
            cp.cuda.Device().synchronize()
            t0 = time.perf_counter()
            fit(n)
            cp.cuda.Device().synchronize()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(5)
        a, b = med(5), med(65)
    out[name] = 1e3 * (b - a) / 60
print("RESULT " + json.dumps(out))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True, help="tree with the baseline gmm_core")
    parser.add_argument("--b", type=Path, default=REPO, help="tree with the changed gmm_core")
    parser.add_argument("--cases", default="full,telemetry")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    got: dict[str, dict[str, list[float]]] = {"a": {}, "b": {}}
    for rnd in range(args.rounds):
        for label, tree in (("a", args.a), ("b", args.b)):
            env = dict(os.environ, PYTHONPATH=f"{tree.resolve()}:{REPO}")
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(REPO), args.cases],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode or not line:
                print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
                return 1
            for name, ms in json.loads(line[0][7:]).items():
                got[label].setdefault(name, []).append(ms)
            print(f"round {rnd} {label}: {line[0][7:]}", flush=True)
    table = {}
    for name in got["a"]:
        a, b = statistics.median(got["a"][name]), statistics.median(got["b"][name])
        table[name] = {
            "a_ms": a,
            "b_ms": b,
            "b_over_a": b / a,
            "a_all": got["a"][name],
            "b_all": got["b"][name],
        }
        print(f"{name:10s} A {a:.4f} ms  B {b:.4f} ms  B/A {b / a:.4f}")
    if args.out:
        args.out.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
