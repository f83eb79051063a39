"""The backend contract, and how a backend name becomes an engine.

The estimator (:mod:`gmm_core.mixture`) owns the one EM loop. An *engine* owns where the data
lives and the one expensive thing EM does: a pass over the data that computes, for every restart
at once, the log-likelihood and the sufficient statistics (:class:`~gmm_core._gaussian.Stats`).
The M-step (:func:`~gmm_core._gaussian.m_step`) is array-module generic and runs wherever the
engine's arrays live, so a GPU engine never needs a host round trip inside an iteration.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Protocol

from ._gaussian import Params, Stats

logger = logging.getLogger("gmm_core")

BACKENDS = ("auto", "numpy", "cupy", "dask", "multigpu")


class Engine(Protocol):
    """What a backend provides to the EM loop."""

    @property
    def name(self) -> str:
        """Backend name reported as ``backend_``."""

    @property
    def xp(self) -> Any:
        """Array module of the engine's arrays (NumPy or CuPy)."""

    @property
    def sync_every(self) -> int:
        """The loop asks the device whether any restart is still active this often."""

    def prepare(self, X: Any, shift: Any, covariance_type: str) -> Any:
        """Put ``X - shift`` where the engine works (device, chunks); return an opaque handle.

        ``X`` is a NumPy (or, for GPU engines, CuPy) array of shape (n_samples, n_features),
        float32 or float64, already validated; its dtype is kept. ``shift`` (n_features,) or None.
        """

    def accumulate(self, data: Any, params: Params, active: Any) -> Stats:
        """One fused E-step pass: log-likelihood and sufficient statistics of every restart.

        ``active`` (R,) marks restarts still iterating; an engine may skip the others, but must
        then return their statistics of the last pass in which they were active.
        """

    def weighted_log_prob(self, data: Any, params: Params) -> Any:
        """``log w_k + log N(x | k)`` of ONE mixture (restart axis of length 1), shape (N, K)."""

    def asarray(self, a: Any) -> Any:
        """Host array -> engine array."""

    def to_host(self, a: Any) -> Any:
        """Engine array -> NumPy array."""


@functools.cache
def cupy_unavailable_reason() -> str | None:
    """Why the CuPy engine cannot run here (``None`` when it can)."""
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - depends on the install
        return f"CuPy is not installed ({exc}); install the 'gpu' extra: pip install 'emflow[gpu]'"
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, missing driver library, ...
        return f"no usable CUDA GPU ({type(exc).__name__}: {exc})"
    if n_devices == 0:
        return "no CUDA GPU is visible (cupy.cuda.runtime.getDeviceCount() == 0)"
    try:
        from . import _cupy_engine  # noqa: F401
    except ImportError as exc:
        return f"the CuPy engine failed to import ({exc})"
    return None


def get_engine(backend: str) -> Engine:
    """Resolve a name of :data:`BACKENDS` to an engine instance.

    ``"cupy"`` raises :class:`RuntimeError` naming the fix when no GPU is usable; ``"auto"``
    falls back to NumPy and logs why. ``"dask"`` runs on the active ``distributed`` client, else
    on the scheduler named by ``EMFLOW_DASK_SCHEDULER`` (:mod:`gmm_core._dask_engine`);
    ``"multigpu"`` shards the data over every visible GPU (:mod:`gmm_core._multigpu_engine`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "dask":
        from ._dask_engine import DaskEngine

        return DaskEngine()
    if backend == "multigpu":
        reason = cupy_unavailable_reason()
        if reason is not None:
            raise RuntimeError(
                f"backend='multigpu' cannot run: {reason}. Use backend='auto' or backend='numpy'."
            )
        from ._multigpu_engine import MultiGpuEngine

        return MultiGpuEngine()
    if backend in ("auto", "cupy"):
        reason = cupy_unavailable_reason()
        if reason is None:
            from ._cupy_engine import CupyEngine

            return CupyEngine()
        if backend == "cupy":
            raise RuntimeError(
                f"backend='cupy' cannot run: {reason}. Use backend='auto' (falls back to NumPy) "
                "or backend='numpy'."
            )
        logger.info("backend='auto' uses NumPy: %s", reason)
    from ._numpy_engine import NumpyEngine

    return NumpyEngine()
