"""The backend contract, and how a backend name becomes an engine.

The estimator (:mod:`gmm_core.mixture`) owns the one EM loop. An *engine* owns where the data
lives and the one expensive thing EM does: a pass over the data that computes, for every restart
at once, the log-likelihood and the sufficient statistics (:class:`~gmm_core._gaussian.Stats`).
The M-step (:func:`~gmm_core._gaussian.m_step`) is array-module generic and runs wherever the
engine's arrays live, so a GPU engine never needs a host round trip inside an iteration.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ._device import cupy_unavailable_reason
from ._gaussian import Params, Stats

logger = logging.getLogger("gmm_core")

BACKENDS = ("auto", "numpy", "cupy", "dask", "multigpu")


class EMResult(NamedTuple):
    """What an EM loop over a batch of ``R`` restarts leaves behind."""

    params: Params  # final parameters of every restart (engine arrays)
    history: np.ndarray  # (n_iterations, R) lower bounds, NaN once a restart stopped
    n_iter: np.ndarray  # (R,) int
    converged: np.ndarray  # (R,) bool


class Engine:
    """What a backend provides to the estimator's ``fit``.

    ``fit`` = validate -> :meth:`prepare` (place the data) -> initialise (on the host as
    scikit-learn draws it, or :attr:`device_init`) -> EM loop (:meth:`run_em` where the engine
    runs the whole loop itself, else the estimator's loop over :meth:`accumulate` and
    :meth:`m_step`) -> fitted attributes. Subclasses implement the first group of methods; the
    optional capabilities below have defaults that mean "not supported here".
    """

    #: backend name reported as ``backend_``
    name: str = ""
    #: array module of the engine's arrays (NumPy or CuPy)
    xp: Any = np
    #: initial parameters are drawn where the data live (:mod:`gmm_core._init`); False: on the
    #: host, exactly as scikit-learn draws them
    device_init: bool = False
    #: :meth:`prepare` takes ``sample_weight=`` (float64, shape (n_samples,)) and every pass
    #: weights its statistics by it (:class:`~gmm_core._gaussian.Stats.total_weight`); False:
    #: the estimator refuses weights for this engine
    supports_sample_weight: bool = False
    #: whether :meth:`prepare` takes dask arrays as they are (partitions never gathered)
    takes_dask_collections: bool = False

    def prepare(self, X: Any, shift: Any, covariance_type: str) -> Any:
        """Put ``X - shift`` where the engine works (device, chunks); return an opaque handle.

        ``X`` is a NumPy (or, for GPU engines, CuPy) array of shape (n_samples, n_features),
        float32 or float64, already validated; its dtype is kept. ``shift`` (n_features,) or
        None; engines with :attr:`device_init` also take ``"auto"``: they compute the column
        moments where the data live and set the handle's ``shift`` and ``variance`` (float64
        NumPy arrays). Engines with :attr:`supports_sample_weight` also take a keyword
        ``sample_weight`` (float64 NumPy array of shape (n_samples,), or None).
        """
        raise NotImplementedError

    def accumulate(self, data: Any, params: Params, active: Any) -> Stats:
        """One fused E-step pass: log-likelihood and sufficient statistics of every restart.

        ``active`` (R,) marks restarts still iterating; an engine may skip the others, but must
        then return their statistics of the last pass in which they were active.
        """
        raise NotImplementedError

    def lloyd_pass(self, data: Any, params: Params, active: Any) -> Stats:
        """:meth:`accumulate` for a Lloyd iteration (a "hard" mixture, :mod:`gmm_core._init`).

        Only the component that wins each sample matters there, so an engine may compute
        logits far below a sample's maximum approximately (the CuPy tensor-core pass skips
        its exact recomputation of far components). Default: :meth:`accumulate`.
        """
        return self.accumulate(data, params, active)

    def weighted_log_prob(self, data: Any, params: Params) -> Any:
        """``log w_k + log N(x | k)`` of ONE mixture (restart axis of length 1), shape (N, K)."""
        raise NotImplementedError

    def reduce_log_prob(self, data: Any, params: Params, reduce: Any) -> Any:
        """``reduce`` of the weighted log-densities (N, K) of one mixture, per sample.

        Engines on a device apply it chunk by chunk (no (N, K) temporary unless ``reduce`` keeps
        one), and may compute a :class:`~gmm_core._gaussian.RowReduction` fused with the
        log-densities; this default applies ``reduce`` to the whole array.
        """
        return reduce(self.weighted_log_prob(data, params))

    def asarray(self, a: Any) -> Any:
        """Host array -> engine array."""
        raise NotImplementedError

    def to_host(self, a: Any) -> Any:
        """Engine array -> NumPy array."""
        raise NotImplementedError

    # -- optional capabilities -------------------------------------------------------------------
    def takes_device_arrays(self) -> bool:
        """Whether :meth:`prepare` takes CuPy arrays as they are (else they come to the host)."""
        return False

    def host_centred(self, data: Any, X: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """The centred data on the host, for a host initialisation."""
        return X - shift.astype(X.dtype)

    def device_chunks(self, data: Any) -> Iterator[Any]:
        """The centred data as row blocks of engine arrays (:attr:`device_init` engines)."""
        raise NotImplementedError

    def retype(self, data: Any, covariance_type: str) -> Any:
        """The same prepared data laid out for another covariance type (no new copy of X)."""
        raise NotImplementedError

    def compile_for_fit(
        self, data: Any, n_restarts: int, n_components: int, init_params: str | None
    ) -> list[str]:
        """Compile ahead what a fit will launch (GPU engines); returns the kernels' names."""
        return []

    def scratch_bytes(self, data: Any) -> float:
        """Bytes of temporaries the initialisation may hold beside the data (no limit here)."""
        return float("inf")

    def subsample(self, data: Any, step: int) -> Any:
        """Every ``step``-th row of the prepared data, prepared alike (held on the device)."""
        raise NotImplementedError

    def run_em(
        self,
        data: Any,
        params: Params,
        *,
        reg_covar: float,
        eps: float,
        tol: float,
        max_iter: int,
        first_bound: float = -np.inf,
        shift: Any = None,
    ) -> EMResult | None:
        """Run the whole EM loop (the estimator's semantics), or ``None``: use the generic loop.

        ``shift`` as :func:`gmm_core._gaussian.estimate_parameters` takes it.
        """
        return None

    def restart_tracker(
        self, n_restarts: int, max_iter: int, first_bound: float, tol: float
    ) -> Any:
        """The generic EM loop's per-restart bookkeeping, or ``None``: the array-module one.

        A :class:`~gmm_core._em_loop.RestartTracker` (or a subclass) for ``n_restarts`` restarts
        of at most ``max_iter`` iterations; an engine on a device may keep it in kernels.
        """
        return None

    def m_step(
        self, stats: Stats, covariance_type: str, reg_covar: float, eps: float, shift: Any = None
    ) -> Any:
        """The M-step on the engine's device (``Params``), or ``None``: use ``_gaussian.m_step``.

        ``shift`` as :func:`gmm_core._gaussian.estimate_parameters` takes it.
        """
        return None

    def read_later(self, a: Any) -> Callable[[], np.ndarray]:
        """Start copying ``a`` to the host; the returned function waits for it and returns it."""
        return lambda: self.to_host(a)

    def synchronize(self) -> None:
        """Wait for the engine's queued work (phase timings)."""

    @staticmethod
    def release_memory() -> None:
        """Give cached device memory back once a fit or scoring call is done.

        Static, so that the caller can drop the engine and its data first.
        """

    @contextlib.contextmanager
    def track_memory(self) -> Iterator[MemoryReport]:
        """Measure the peak device memory allocated inside the block (``None`` on the host)."""
        yield MemoryReport()


@dataclass
class MemoryReport:
    """Device memory of one ``fit``: bytes allocated above the level at its start."""

    peak_bytes: int | None = None


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
            from ._cupy import CupyEngine

            return CupyEngine()
        if backend == "cupy":
            raise RuntimeError(
                f"backend='cupy' cannot run: {reason}. Use backend='auto' (falls back to NumPy) "
                "or backend='numpy'."
            )
        logger.info("backend='auto' uses NumPy: %s", reason)
    from ._numpy_engine import NumpyEngine

    return NumpyEngine()
