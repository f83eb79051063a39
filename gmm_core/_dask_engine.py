"""The Dask engine: the same EM over data partitions persisted on a ``dask.distributed`` cluster.

EM's sufficient statistics add up across rows, so a pass over partitioned data is the per-
partition pass of a single-device engine followed by a sum. :class:`DaskEngine` keeps the
centred partitions in worker memory for the whole fit (:meth:`DaskEngine.prepare`), and every
iteration

1. broadcasts the parameters of the still-active restarts (small) to the workers,
2. runs, where each partition lives, the pass of the worker's own engine: the NumPy engine on CPU
   workers, the CuPy engine (fused kernels) on GPU workers (e.g. ``dask_cuda.LocalCUDACluster``),
3. sums the per-partition :class:`~gmm_core._gaussian.Stats` in a pairwise tree on the workers,
   and hands one float64 ``Stats`` (NumPy) to the estimator, whose M-step runs on the client.

The estimator selects it with ``GaussianMixture(backend="dask")``; the cluster is the active
client (``distributed.Client(...)`` / ``with client.as_current():``) or, when there is none, the
scheduler address in the ``EMFLOW_DASK_SCHEDULER`` environment variable. ``dask`` is imported
only when this engine is used.
"""

from __future__ import annotations

import logging
import operator
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._engine import Engine
from ._gaussian import Params, Stats
from ._numpy_engine import NumpyEngine

logger = logging.getLogger("gmm_core")

#: environment variable naming the scheduler used when no Dask client is active
SCHEDULER_ENV = "EMFLOW_DASK_SCHEDULER"
#: which engine the workers run: "auto" (CuPy where the worker sees a GPU), "numpy" or "cupy"
WORKER_BACKEND_ENV = "EMFLOW_DASK_WORKER_BACKEND"
WORKER_BACKENDS = ("auto", "numpy", "cupy")
#: seconds to wait for a first worker of a cluster that has none yet
_WAIT_FOR_WORKERS_S = 30.0
#: parameters up to this size are sent inside every task instead of broadcast first
_INLINE_PARAMS_BYTES = 1 << 20
#: how long to try connecting to the scheduler named by ``EMFLOW_DASK_SCHEDULER``
_CONNECT_TIMEOUT = "20s"

_CLIENTS: dict[str, Any] = {}  # clients this module opened, by scheduler address
_CLIENTS_LOCK = threading.Lock()


def resolve_client(client: Any = None) -> Any:
    """The Dask client to run on: ``client``, else the active one, else ``EMFLOW_DASK_SCHEDULER``.

    Raises
    ------
    RuntimeError
        When there is no client and no scheduler address, or the address cannot be reached;
        the message names the fix.
    """
    if client is not None:
        return client
    try:
        from distributed import Client, default_client
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            f"backend='dask' needs dask.distributed ({exc}); install it: pip install 'distributed'"
        ) from exc
    try:
        return default_client()
    except ValueError:
        pass
    address = os.environ.get(SCHEDULER_ENV, "").strip()
    if not address:
        raise RuntimeError(
            "backend='dask' found no Dask cluster: create a client before fitting "
            "(distributed.Client('tcp://scheduler:8786'), or `with client.as_current():`), or set "
            f"{SCHEDULER_ENV}=tcp://scheduler:8786."
        )
    with _CLIENTS_LOCK:
        cached = _CLIENTS.get(address)
        if cached is not None and cached.status not in ("closed", "closing"):
            return cached
        try:
            check_scheduler_address(address)
            opened = Client(address, set_as_default=False, timeout=_CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise RuntimeError(
                f"cannot reach the Dask scheduler {address!r} named by {SCHEDULER_ENV} ({exc}); "
                "start it (dask scheduler) or correct the address."
            ) from exc
        except (ValueError, TypeError) as exc:  # no port, an unknown scheme ('http://...')
            raise RuntimeError(
                f"{SCHEDULER_ENV}={address!r} is not a Dask scheduler address ({exc}); set it "
                "to tcp://<host>:<port> (the scheduler's default port is 8786)."
            ) from exc
        _CLIENTS[address] = opened
        return opened


def check_scheduler_address(address: str) -> None:
    """ValueError for an address no Dask comm takes (no port, an unknown scheme).

    Checked before a Client is made: the Client's own refusal comes from its event-loop thread,
    as a ValueError or (a loop already running in the process) an AssertionError.
    """
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import get_backend

    scheme, location = parse_address(address)
    get_backend(scheme)
    if scheme in ("tcp", "tls"):
        parse_host_port(location)


def _close_cached_clients() -> None:
    """Close the clients :func:`resolve_client` opened from ``EMFLOW_DASK_SCHEDULER``."""
    with _CLIENTS_LOCK:
        while _CLIENTS:
            _, client = _CLIENTS.popitem()
            client.close()


# ---------------------------------------------------------------------------------------------
# Functions that run on the workers (module level so that they pickle by reference)

_worker_local = threading.local()


def _worker_engine(backend: str) -> Any:
    """The engine a worker thread runs partitions with (a CuPy engine is kept per thread).

    The NumPy engine keeps the statistics of its last pass, so every task gets a fresh one;
    the CuPy engine caches compiled kernels and buffers, so each worker thread keeps its own.
    """
    if backend == "numpy":
        return NumpyEngine()
    engine = getattr(_worker_local, "cupy_engine", None)
    if engine is None:
        from ._cupy import CupyEngine

        engine = _worker_local.cupy_engine = CupyEngine()
    return engine


def _resolve_worker_backend(requested: str) -> str:
    if requested == "numpy":
        return "numpy"
    from ._device import cupy_unavailable_reason

    reason = cupy_unavailable_reason()
    if reason is None:
        return "cupy"
    if requested == "cupy":
        raise RuntimeError(f"Dask worker cannot run the CuPy engine: {reason}")
    return "numpy"


def _prepare_partition(
    block: Any, shift: Any, covariance_type: str, requested: str, weight: Any = None
) -> Any:
    """Centre one block of rows and keep it as the worker engine's data (NumpyData/CupyData).

    ``weight``: the block's sample weights (float64 NumPy) or None.
    """
    backend = _resolve_worker_backend(requested)
    if type(block).__module__.split(".")[0] == "cupy":  # a dask array of CuPy chunks
        if backend == "numpy":
            block = block.get()
    else:
        block = np.ascontiguousarray(block)
    weighting = {} if weight is None else {"sample_weight": weight}
    return _worker_engine(backend).prepare(block, shift, covariance_type, **weighting)


def _partition_backend(part: Any) -> str:
    return "numpy" if type(part).__module__.endswith("_numpy_engine") else "cupy"


def _partition_stats(part: Any, params: Params) -> Stats:
    """One partition's pass for every restart in ``params``; float64 NumPy statistics."""
    n_restarts = params.weights.shape[0]
    backend = _partition_backend(part)
    engine = _worker_engine(backend)
    if backend == "numpy":
        return engine.accumulate(part, params, np.ones(n_restarts, dtype=bool))
    import cupy

    stats = engine.accumulate(part, params.map(cupy.asarray), cupy.ones(n_restarts, dtype=bool))
    return Stats(
        cupy.asnumpy(stats.loglik),
        cupy.asnumpy(stats.nk),
        cupy.asnumpy(stats.sx),
        cupy.asnumpy(stats.sxx),
        stats.n_samples,
        stats.total_weight,
    )


def _partition_weighted_log_prob(part: Any, params: Params) -> np.ndarray:
    """``log w_k + log N(x | k)`` of one partition's rows, shape (n_rows, K), NumPy."""
    backend = _partition_backend(part)
    engine = _worker_engine(backend)
    if backend == "numpy":
        return engine.weighted_log_prob(part, params)
    import cupy

    return cupy.asnumpy(engine.weighted_log_prob(part, params.map(cupy.asarray)))


# ---------------------------------------------------------------------------------------------
# The engine


@dataclass
class DaskData:
    """Handles of the centred partitions held in worker memory, in row order."""

    parts: list[Any]  # distributed.Future of NumpyData / CupyData, one per partition
    covariance_type: str
    dtype: np.dtype
    n_samples: int
    n_features: int
    worker_backends: list[str] = field(default_factory=list)  # engine of each partition


class DaskEngine(Engine):
    """Engine running each pass on a Dask cluster; see :class:`gmm_core._engine.Engine`.

    Parameters
    ----------
    client : distributed.Client, optional
        The cluster to use; default: :func:`resolve_client` (the active client, else
        ``EMFLOW_DASK_SCHEDULER``).
    n_partitions : int, optional
        Row partitions of a NumPy input (default: the cluster's total worker threads). A
        ``dask.array`` input keeps its own row chunks.
    worker_backend : {'auto', 'numpy', 'cupy'}, optional
        Engine of the workers; default ``EMFLOW_DASK_WORKER_BACKEND`` or ``'auto'`` (CuPy on
        workers that see a GPU, NumPy elsewhere).
    """

    name = "dask"
    xp = np
    supports_sample_weight = True  # on NumPy and CuPy workers alike
    takes_dask_collections = True

    def __init__(
        self,
        client: Any = None,
        *,
        n_partitions: int | None = None,
        worker_backend: str | None = None,
    ) -> None:
        worker_backend = worker_backend or os.environ.get(WORKER_BACKEND_ENV) or "auto"
        if worker_backend not in WORKER_BACKENDS:
            raise ValueError(
                f"worker_backend must be one of {WORKER_BACKENDS}, got {worker_backend!r} "
                f"(check {WORKER_BACKEND_ENV})"
            )
        if n_partitions is not None and n_partitions < 1:
            raise ValueError(f"n_partitions must be >= 1, got {n_partitions}")
        self._client = client
        self.n_partitions = n_partitions
        self.worker_backend = worker_backend
        self._last: Stats | None = None

    @property
    def client(self) -> Any:
        """The Dask client (resolved on first use)."""
        if self._client is None:
            self._client = resolve_client()
        return self._client

    # -- data -----------------------------------------------------------------------------------
    def asarray(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    def to_host(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    def _total_threads(self) -> int:
        client = self.client
        nthreads = client.nthreads()
        if not nthreads:
            logger.info(
                "the Dask cluster has no workers yet; waiting up to %.0f s", _WAIT_FOR_WORKERS_S
            )
            try:
                client.wait_for_workers(1, timeout=_WAIT_FOR_WORKERS_S)
            except TimeoutError as exc:
                raise RuntimeError(
                    f"the Dask cluster at {client.scheduler.address} has no workers; start some "
                    "(dask worker <scheduler address>) before fitting with backend='dask'."
                ) from exc
            nthreads = client.nthreads()
        return int(sum(nthreads.values()))

    def prepare(
        self, X: Any, shift: Any, covariance_type: str, *, sample_weight: Any = None
    ) -> DaskData:
        """Send ``X - shift`` to the workers in row partitions and keep it there for the fit.

        Parameters
        ----------
        X : numpy.ndarray or dask.array.Array of shape (n_samples, n_features)
            float32 or float64 (kept). A NumPy array is split into ``n_partitions`` row blocks
            and scattered across the workers; a dask array is computed block by block on the
            workers and never gathered on the client.
        shift : array of shape (n_features,) or None
        covariance_type : {'full', 'tied', 'diag', 'spherical'}
        sample_weight : numpy.ndarray of shape (n_samples,), optional
            Row weights (float64); each partition gets the weights of its rows.
        """
        client = self.client
        weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        n_threads = self._total_threads()
        shift = None if shift is None else np.asarray(shift, dtype=np.float64)
        if type(X).__module__.startswith("dask"):
            parts = self._prepare_dask_array(X, shift, covariance_type, weight)
        else:
            X = np.asarray(X)
            n_parts = max(1, min(self.n_partitions or n_threads, X.shape[0]))
            blocks = np.array_split(X, n_parts)
            # spread over the workers (round robin); each block is centred where it lands
            raw = client.scatter(blocks, hash=False)
            weights = [None] * n_parts if weight is None else np.array_split(weight, n_parts)
            parts = [
                client.submit(
                    _prepare_partition,
                    r,
                    shift,
                    covariance_type,
                    self.worker_backend,
                    w,
                    pure=False,
                )
                for r, w in zip(raw, weights, strict=True)
            ]
            del raw  # the prepared partitions hold the data from here on
        from distributed import wait

        with client.as_current():  # wait() looks the client up
            wait(parts)
        errors = [f for f in parts if f.status == "error"]
        if errors:
            errors[0].result()  # re-raises the worker's exception here
        backends = client.gather(client.map(_partition_backend, parts, pure=False))
        n_samples = int(X.shape[0])
        logger.info(
            "dask: %d rows in %d partitions on %d worker threads (%s)",
            n_samples,
            len(parts),
            n_threads,
            ", ".join(sorted(set(backends))),
        )
        self._last = None
        return DaskData(
            parts, covariance_type, np.dtype(X.dtype), n_samples, int(X.shape[1]), backends
        )

    def _prepare_dask_array(
        self, X: Any, shift: Any, covariance_type: str, weight: np.ndarray | None = None
    ) -> list[Any]:
        import dask

        if X.ndim != 2:
            raise ValueError(f"X must be 2-D, got a {X.ndim}-D dask array")
        blocks = X.rechunk({1: -1}).to_delayed().ravel().tolist()
        if weight is None:
            weights: list[Any] = [None] * len(blocks)
        else:  # the weights of each row block, cut where X's row chunks are
            weights = np.split(weight, np.cumsum(X.chunks[0])[:-1])
        prepare = dask.delayed(_prepare_partition, pure=False)
        tasks = [
            prepare(b, shift, covariance_type, self.worker_backend, w)
            for b, w in zip(blocks, weights, strict=True)
        ]
        return list(self.client.compute(tasks))

    # -- passes ---------------------------------------------------------------------------------
    def accumulate(self, data: DaskData, params: Params, active: Any) -> Stats:
        """One pass over every partition; the statistics are summed on the workers.

        Only active restarts are computed; the others keep the statistics of their last pass.
        """
        active_idx = np.flatnonzero(np.asarray(active))
        n_restarts, n_components, n_features = params.means.shape
        if self._last is None or self._last.nk.shape != (n_restarts, n_components):
            self._last = _zero_stats(data.covariance_type, n_restarts, n_components, n_features)
        if len(active_idx):
            sub = Params(*(np.ascontiguousarray(a[active_idx]) for a in vars(params).values()))
            total = self._tree_sum(sub, data)
            last = self._last
            last.loglik[active_idx] = total.loglik
            last.nk[active_idx] = total.nk
            last.sx[active_idx] = total.sx
            if data.covariance_type == "tied":
                last.sxx = total.sxx  # X^T X: the same for every restart
            else:
                last.sxx[active_idx] = total.sxx
            last.n_samples = total.n_samples
            last.total_weight = total.total_weight
        return self._last.copy()  # the loop must not see later in-place updates

    def _to_workers(self, params: Params) -> Any:
        """Small parameters travel inside each task; large ones are broadcast once."""
        if sum(a.nbytes for a in vars(params).values()) <= _INLINE_PARAMS_BYTES:
            return params
        [future] = self.client.scatter([params], broadcast=True, hash=False)
        return future

    def _tree_sum(self, params: Params, data: DaskData) -> Stats:
        """Per-partition statistics summed pairwise on the workers; the total on the client."""
        client = self.client
        params_on_workers = self._to_workers(params)
        level = [
            client.submit(_partition_stats, part, params_on_workers, pure=False)
            for part in data.parts
        ]
        while len(level) > 1:
            pairs = [
                client.submit(operator.add, a, b, pure=False)
                for a, b in zip(level[0::2], level[1::2], strict=False)
            ]
            if len(level) % 2:
                pairs.append(level[-1])
            level = pairs
        total: Stats = level[0].result()
        if total.n_samples != data.n_samples:  # a lost partition must never go unnoticed
            raise RuntimeError(
                f"dask pass covered {total.n_samples} of {data.n_samples} rows; a worker holding "
                "a partition was lost. Fit again (the data are sent anew)."
            )
        return total

    def weighted_log_prob(self, data: DaskData, params: Params) -> np.ndarray:
        """``log w_k + log N(x | k)`` of one mixture, shape (n_samples, K), in row order."""
        client = self.client
        params_on_workers = self._to_workers(params)
        futures = [
            client.submit(_partition_weighted_log_prob, part, params_on_workers, pure=False)
            for part in data.parts
        ]
        return np.concatenate(client.gather(futures), axis=0)


def _zero_stats(covariance_type: str, n_restarts: int, n_components: int, n_features: int) -> Stats:
    sxx_shape = {
        "full": (n_restarts, n_components, n_features, n_features),
        "tied": (n_features, n_features),
        "diag": (n_restarts, n_components, n_features),
        "spherical": (n_restarts, n_components),
    }[covariance_type]
    return Stats(
        np.zeros(n_restarts),
        np.zeros((n_restarts, n_components)),
        np.zeros((n_restarts, n_components, n_features)),
        np.zeros(sxx_shape),
        0,
    )
