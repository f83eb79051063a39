"""The wgmma pass (``diag_pass_wg``) against float64: where its error comes from.

    PYTHONPATH=. python3 benchmarks/wgmma_accuracy.py [gap|spread|flush|guard] ...

All on 32 well-separated clusters (``tune_fused.make_case``, 16 features) fitted from one given
start (so every restart of ``n_init=8`` is the NumPy fit) for 15 iterations, the gap being the
fit's lower bound minus the NumPy backend's float64 one (issue 14's budget: 1e-6 nats per
sample plus 1e-6 relative, ~2.9e-5 here):

* ``gap``: 120k and 1M rows, ``GMM_CORE_WGMMA`` 1 and 0, ``n_init`` 8 and 1 (one restart never
  takes the wgmma pass);
* ``flush``: per ``GMM_WG_FLUSH`` (tiles summed in the wgmma accumulator), one pass's statistics
  against float64 at 200k rows and the 1M-row gap;
* ``spread``: the 1M-row gap with and without the pass on clusters 2x and 3x further apart
  (|p|^2 about 4x and 9x larger);
* ``guard``: the 1M-row gap per ``GMM_TC_GUARD`` (components with |p|^2 above it get their
  logits computed exactly instead of by the expanded 3xTF32 form on the tensor cores).

Results of 2026-12-04 (H200): ``benchmarks/results/wgmma_accuracy_h200.txt``.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "gpu"))


def _gap(X: np.ndarray, ref: Any, kw: dict[str, Any], n_init: int = 8) -> float:
    from gmm_core import GaussianMixture

    return float(GaussianMixture(n_init=n_init, backend="cupy", **kw).fit(X).lower_bound_ - ref)


def _reference(X: np.ndarray, kw: dict[str, Any]) -> Any:
    from gmm_core import GaussianMixture

    return GaussianMixture(n_init=1, backend="numpy", **kw).fit(X.astype(np.float64))


def _p2(model: Any, X: np.ndarray) -> np.ndarray:
    """|p|^2 of each fitted component: its squared distance from the data mean, own units."""
    return 0.5 * ((model.means_ - X.mean(0)) ** 2 * model.precisions_).sum(1)


def main() -> None:
    from test_gpu_diag_wg import _pass, one_start

    from benchmarks.tune_fused import make_case, reference_stats, rel
    from gmm_core._cupy.diag_pass_wg import DiagPassWG

    warnings.simplefilter("ignore")
    modes = sys.argv[1:] or ["gap", "spread", "flush", "guard"]
    X1 = make_case(1_000_000, 16, 32, 1, seed=7)[0]
    kw1 = one_start(X1)
    model1 = _reference(X1, kw1)
    ref1 = float(model1.lower_bound_)
    if "gap" in modes:
        X0 = make_case(120_000, 16, 32, 1, seed=7)[0]
        kw0 = one_start(X0)
        ref0 = float(_reference(X0, kw0).lower_bound_)
        for X, kw, ref in ((X0, kw0, ref0), (X1, kw1, ref1)):
            for flag in ("1", "0"):
                os.environ["GMM_CORE_WGMMA"] = flag
                for n_init in (8, 1):
                    gap = _gap(X, ref, kw, n_init)
                    head = f"n={len(X)} wgmma={flag} n_init={n_init}"
                    print(f"{head}: gap {gap:+.2e} (ref {ref:.6f})", flush=True)
    os.environ["GMM_CORE_WGMMA"] = "1"
    if "spread" in modes:  # clusters further apart: |p|^2 grows with the spread squared
        for spread in (8.0, 12.0):
            X = make_case(1_000_000, 16, 32, 1, seed=7, spread=spread)[0]
            kw = one_start(X)
            model = _reference(X, kw)
            ref = float(model.lower_bound_)
            p2 = _p2(model, X)
            quart = np.percentile(p2, [25, 50, 75]).round(1)
            for flag in ("1", "0"):
                os.environ["GMM_CORE_WGMMA"] = flag
                gap = _gap(X, ref, kw)
                print(
                    f"spread={spread} |p|^2 quartiles {quart} max {p2.max():.0f} wgmma={flag}: "
                    f"gap {gap:+.2e} (budget {1e-6 + 1e-6 * abs(ref):.1e})",
                    flush=True,
                )
    if "flush" in modes:
        X, shift, params = make_case(200_003, 16, 32, 8)
        Xc = (X - shift.astype(np.float32)).astype(np.float32)
        want = reference_stats(Xc, params)
        for flush in (1, 2, 8, 64):
            DiagPassWG.options = (f"-DGMM_WG_FLUSH={flush}",)
            got = _pass(Xc, params)
            errs = " ".join(f"{k}={rel(got[k], want[k]):.1e}" for k in ("nk", "sx", "sxx"))
            print(f"FLUSH={flush}: {errs} gap1M={_gap(X1, ref1, kw1):+.2e}", flush=True)
    if "guard" in modes:
        p2 = _p2(model1, X1)
        print("ref |p|^2 quartiles / max:", np.percentile(p2, [25, 50, 75]).round(1), p2.max())
        for guard in (1024, 256, 64, 16, 0):
            DiagPassWG.options = (f"-DGMM_TC_GUARD={guard}.0f",)
            print(f"GUARD={guard}: gap1M={_gap(X1, ref1, kw1):+.2e}", flush=True)
    DiagPassWG.options = ()


if __name__ == "__main__":
    main()
