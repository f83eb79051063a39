"""How often the fused passes' exactness guard fires in a real fit, and what it costs.

    PYTHONPATH=. python3 benchmarks/guard_share.py [--n 10000000] [--n-init 8]

The tensor-core passes (``diag_pass_tc``, ``diag_pass_wg``) compute logits with the expanded
quadratic form and recompute exactly those of components far from the data mean in their own
units (|p|^2 = sum_d (mu_d - m_d)^2 / (2 var_d) > GMM_TC_GUARD = 1024). This fits telemetry
(``bench_gpu.telemetry``, K = 32, diag, the default k-means start) and prints, per restart, the
share of far components of the fitted model, and the per-iteration time of the same fit with
``diag_pass_wg`` on and off (``GMM_CORE_WGMMA``): ``public_api.iteration_span`` of 5- and
65-iteration fits, medians of 3.
"""

from __future__ import annotations

import argparse
import functools
import os

import numpy as np


def main() -> None:
    import cupy as cp

    from benchmarks.bench_gpu import telemetry
    from benchmarks.public_api import iteration_span
    from gmm_core import GaussianMixture
    from gmm_core._cupy.config import WGMMA_ENV

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--n-init", type=int, default=8)
    args = parser.parse_args()
    X = cp.asarray(telemetry(args.n, 16, 32))

    def fit(iters: int, wgmma: bool):
        os.environ[WGMMA_ENV] = "1" if wgmma else "0"  # read when the fit makes its engine
        return GaussianMixture(
            32, covariance_type="diag", n_init=args.n_init, tol=0.0, max_iter=iters,
            random_state=0, backend="cupy",
        ).fit(X)  # fmt: skip

    for wgmma in (True, False):
        fit(5, wgmma)  # warm
        fields, gm = iteration_span(functools.partial(fit, wgmma=wgmma), 5, 65, repeat=3)
        print(f"GMM_CORE_WGMMA={int(wgmma)}: {fields['per_iter_ms']:.3f} ms per iteration")
    shift = cp.asnumpy(X.mean(0))
    means = gm.means_ - shift
    p2 = 0.5 * (means**2 / gm.covariances_).sum(1)
    quartiles = np.percentile(p2, [25, 50, 75]).round(1).tolist()
    print(
        f"fitted model (best restart, GMM_CORE_WGMMA=0): {np.mean(p2 > 1024):.2%} of "
        f"components far (|p|^2 > 1024); |p|^2 quartiles {quartiles}"
    )


if __name__ == "__main__":
    main()
