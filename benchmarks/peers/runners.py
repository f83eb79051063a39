"""Peers of emflow in the GPU benchmark, each timed the way ``bench_gpu.py`` times emflow.

Plain CuPy and PyTorch array-op EM (:mod:`benchmarks.peers.cupy_em`, ``torch_em``), torchgmm,
and scikit-learn on the host (float64, all cores). Every runner takes ``(X, init, cov, iters)``
and returns the fields of one result row.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def sync() -> None:
    import cupy as cp

    cp.cuda.Device().synchronize()


def precisions_of(init: dict[str, np.ndarray], cov: str) -> np.ndarray:
    return np.linalg.inv(init["covariances"]) if cov == "full" else 1.0 / init["covariances"]


def cupy_plain(X: np.ndarray, init: dict, cov: str, iters: int) -> dict[str, Any]:
    import cupy as cp

    from benchmarks.peers import cupy_em

    t0 = time.perf_counter()
    Xd = cp.asarray(X)
    sync()
    h2d = time.perf_counter() - t0
    fn = cupy_em.em_full if cov == "full" else cupy_em.em_diag
    fn(Xd, init["weights"], init["means"], init["covariances"], 1)
    sync()
    t0 = time.perf_counter()
    _, bounds = fn(Xd, init["weights"], init["means"], init["covariances"], iters)
    sync()
    secs = time.perf_counter() - t0
    return {
        "seconds": secs,
        "per_iter_ms": 1e3 * secs / iters,
        "h2d_s": h2d,
        "lower_bound": [float(bounds[-1])],
    }


def torch_plain(X: np.ndarray, init: dict, cov: str, iters: int) -> dict[str, Any]:
    import torch

    from benchmarks.peers import torch_em

    t0 = time.perf_counter()
    Xd = torch.as_tensor(X, device="cuda")
    torch.cuda.synchronize()
    h2d = time.perf_counter() - t0
    fn = torch_em.em_full if cov == "full" else torch_em.em_diag
    fn(Xd, init["weights"], init["means"], init["covariances"], 1)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    _, bounds = fn(Xd, init["weights"], init["means"], init["covariances"], iters)
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    return {
        "seconds": secs,
        "per_iter_ms": 1e3 * secs / iters,
        "h2d_s": h2d,
        "lower_bound": [float(bounds[-1])],
    }


#: Lightning trainer settings of the torchgmm peer (one GPU, nothing written, no progress bar)
TORCHGMM_TRAINER = {
    "accelerator": "gpu",
    "devices": 1,
    "enable_progress_bar": False,
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
}


def torchgmm_peer(X: np.ndarray, init: dict, cov: str, iters: int) -> dict[str, Any]:
    """torchgmm (PyCave's maintained fork, Lightning-based) where it is installed.

    Fixed iterations (``convergence_tolerance=0``, ``max_epochs``), the same initial means (its
    covariances start from its own initialisation pass); time per iteration includes Lightning.
    """
    import torch
    from torchgmm.bayes import GaussianMixture as TorchGMM

    Xd = torch.as_tensor(X, device="cuda")
    params = {"max_epochs": iters, **TORCHGMM_TRAINER}
    means = torch.as_tensor(init["means"], dtype=torch.float32)
    model = TorchGMM(
        len(init["weights"]),
        covariance_type=cov,
        init_means=means,
        convergence_tolerance=0.0,
        trainer_params=params,
    )
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.fit(Xd)
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    return {"seconds": secs, "per_iter_ms": 1e3 * secs / iters, "note": "includes Lightning"}


def sklearn_fit(X: np.ndarray, init: dict, cov: str, iters: int) -> Any:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(
        len(init["weights"]),
        covariance_type=cov,
        tol=0.0,
        max_iter=iters,
        weights_init=init["weights"],
        means_init=init["means"],
        precisions_init=precisions_of(init, cov),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        gm.fit(X.astype(np.float64))
        secs = time.perf_counter() - t0
    return gm, secs


def sklearn_timing(X: np.ndarray, init: dict, cov: str, iters: int, n_full: int) -> dict[str, Any]:
    _, secs = sklearn_fit(X, init, cov, iters)
    per_iter = secs / iters * (n_full / len(X))
    return {
        "per_iter_ms": 1e3 * per_iter,
        "measured_rows": len(X),
        "measured_iters": iters,
        "extrapolated": len(X) != n_full,
    }
