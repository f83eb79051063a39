"""Data passes of the sweep's k-means initialisation, shared vs one candidate after another.

    PYTHONPATH=. python3 benchmarks/init_passes.py --out benchmarks/results/cpu_init_passes.json

``GaussianMixtureSelect(range(1, 33), covariance_type="diag")`` on a device-init engine
initialises every candidate as its own ``GaussianMixture(K)`` would; since 2026-12-05 the
candidates' k-means share their passes (``gmm_core._init.candidate_params``). On the GPU every
pass is a few kernel launches whose cost at these sizes is mostly fixed, and a pass costs what
its restarts' 16-component tiles cost (``_padded_em.buckets``), so the figures that predict the
device are counts: the seeding's passes (``kpp_potentials`` + ``kpp_update``), Lloyd's passes,
and Lloyd's work in restart x tile-width components per pass. They are counted here on the
NumPy engine taking the device path (the same array code; the unit tests check it against each
candidate alone), on telemetry-like data with the coarse stage on (every 8th row first, as for
the issue's 10M rows). No times: this machine's NumPy says nothing of the device's.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gmm_core import GaussianMixture, GaussianMixtureSelect, _init, _kmeans_seeding  # noqa: E402
from gmm_core import _fit as fitting  # noqa: E402
from gmm_core import selection as selection_module  # noqa: E402
from gmm_core._numpy_engine import NumpyEngine  # noqa: E402

KS = range(1, 33)
TILE = 16


def counted() -> tuple[collections.Counter, type]:
    """A pass counter and the device-init NumPy engine that feeds it."""
    counts: collections.Counter = collections.Counter()

    class Engine(NumpyEngine):
        device_init = True

        def lloyd_pass(self, data: Any, params: Any, active: Any) -> Any:
            n_restarts, width, _ = params.means.shape
            counts["lloyd_passes"] += 1
            counts["lloyd_tile_work"] += n_restarts * -(-width // TILE) * TILE
            return super().lloyd_pass(data, params, active)

    for name in ("_potentials", "_update_closest"):
        inner = getattr(_kmeans_seeding, name)

        def wrapper(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
            counts["seeding_passes"] += 1
            return _inner(*args, **kwargs)

        setattr(_kmeans_seeding, name, wrapper)
    return counts, Engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=120_000)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    counts, engine_class = counted()
    fitting.get_engine = lambda backend: engine_class()
    selection_module.get_engine = lambda backend: engine_class()
    _init.COARSE_MIN_ROWS = args.rows // 2  # the coarse stage, as for the 10M rows
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(32, 16)) * 6.0
    X = centres[rng.integers(0, 32, args.rows)] + rng.normal(size=(args.rows, 16))
    kw: dict[str, Any] = {"covariance_type": "diag", "max_iter": 1, "tol": 0.0, "random_state": 0}
    out: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "rows": args.rows,
        "ks": list(KS),
    }
    for mode in ("shared", "one_after_another"):
        counts.clear()
        if mode == "shared":
            GaussianMixtureSelect(KS, **kw).fit(X)
        else:
            for k in KS:
                GaussianMixture(k, **kw).fit(X)
        out[mode] = dict(counts)
        print(mode, out[mode], flush=True)
    shared, alone = out["shared"], out["one_after_another"]
    out["ratios"] = {
        name: alone[name] / shared[name]
        for name in ("seeding_passes", "lloyd_passes", "lloyd_tile_work")
    }
    print("one after another / shared:", out["ratios"])
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
