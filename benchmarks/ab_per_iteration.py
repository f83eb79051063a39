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
import json, sys, warnings
import cupy as cp
import gmm_core
# the working directory is the checkout (python -c puts it first on sys.path); PYTHONPATH adds
# the repository for benchmarks
from benchmarks import public_api

wanted = sys.argv[1].split(",")
out = {}
for case in public_api.cases(False):
    if case["name"] not in wanted:
        continue
    Xd = cp.asarray(case["X"])
    inits = public_api._inits(public_api._gm(case, random_state=0).fit(Xd))

    def fit(n, case=case, inits=inits, Xd=Xd):
        return public_api._gm(case, max_iter=n, tol=0.0, random_state=0, **inits).fit(Xd)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(5)
        fields, _ = public_api.iteration_span(fit, 5, 65, repeat=3)
    out[case["name"]] = fields["per_iter_ms"]
out["gmm_core"] = gmm_core.__file__
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
                [sys.executable, "-c", CHILD, args.cases],
                cwd=tree,  # python -c puts the working directory first: the checkout's gmm_core
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode or not line:
                print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
                return 1
            result = json.loads(line[0][7:])
            loaded = Path(result.pop("gmm_core")).resolve()
            if not loaded.is_relative_to(tree.resolve()):  # it once timed B against B
                print(f"{label}: gmm_core came from {loaded}, not {tree}", file=sys.stderr)
                return 1
            for name, ms in result.items():
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
