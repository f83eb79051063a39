"""Where a public fit's GPU time goes, kernel by kernel (CUPTI through PyTorch's profiler).

(benchmarks/profile_fit.py is the cProfile of the host side.)

    PYTHONPATH=. python3 benchmarks/kernel_profile.py [--n 10000000] [--n-init 8] [--iters 20]

Fits telemetry (``bench_gpu.telemetry``, K = 32, diag, tol = 0) once to warm up, then once under
``torch.profiler`` (CUDA activity: every kernel the process launches, CuPy's included) and prints
the kernels by total GPU time, with the engine's ``last_run_info`` (which pass, CUDA graph or
not). Needs PyTorch with CUDA (the GPU machine has it); no Nsight Systems needed.
"""

from __future__ import annotations

import argparse


def main() -> None:
    import cupy as cp
    import torch
    from torch.profiler import ProfilerActivity, profile

    import gmm_core._fit as fit_module
    from benchmarks.bench_gpu import telemetry
    from gmm_core import GaussianMixture

    engines: list = []  # the engine of each fit (for its last_run_info)
    get_engine = fit_module.get_engine

    def keep(backend: str):
        engines.append(get_engine(backend))
        return engines[-1]

    fit_module.get_engine = keep

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--n-init", type=int, default=8)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    X = cp.asarray(telemetry(args.n, 16, 32))
    kw = dict(covariance_type="diag", n_init=args.n_init, tol=0.0, random_state=0)

    def fit() -> GaussianMixture:
        gm = GaussianMixture(32, max_iter=args.iters, backend="cupy", **kw)
        gm.fit(X)
        cp.cuda.Device().synchronize()
        return gm

    fit()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        gm = fit()
    print("n_iter_:", gm.n_iter_, "last_run_info:", getattr(engines[-1], "last_run_info", None))
    print(
        prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=70)
    )


if __name__ == "__main__":
    main()
