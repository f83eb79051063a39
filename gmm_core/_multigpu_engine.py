"""The multi-GPU engine: row shards on every GPU of one host, statistics summed each iteration.

One :class:`~gmm_core._cupy.CupyEngine` per device runs its pass (the fused kernel for
diag/spherical, GEMMs for full/tied) over the shard that device holds; the per-device
:class:`~gmm_core._gaussian.Stats` (a few KB) are copied peer-to-peer to the primary device
(the current device when the engine is made) and added there, where the estimator's M-step runs
once. Devices are ordered by CUDA events only, never by host synchronisation, so the host keeps
enqueuing iterations while the GPUs work.

:meth:`MultiGpuEngine.run_em` is the whole-iteration device loop for diag/spherical data (as
:meth:`CupyEngine.run_em <gmm_core._cupy.CupyEngine.run_em>`): every device runs the
fused pass over its shard, the pass outputs are all-reduced (summed in device order, so every
device holds bitwise the same totals) and every device runs the M-step kernel itself; no
parameters travel back. Where the devices have peer access the all-reduce is a kernel
(``reduce_exchange_mstep``: each device writes its reduced statistics into every device's
memory, waits on the device for the others' and runs the M-step), so ``check_every`` whole
iterations are one CUDA graph per device and the host only launches graphs and reads the
restart flags; otherwise it is peer copies launched from the host every iteration.

The device loop itself is :mod:`gmm_core._multigpu_loop`. CuPy is imported by these two modules
only; select the engine with ``GaussianMixture(backend="multigpu")``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import cupy
import numpy as np

from ._cupy import CupyData, CupyEngine
from ._engine import EMResult, Engine
from ._gaussian import Params, Stats
from ._multigpu_loop import FusedLoop

logger = logging.getLogger("gmm_core")

_STATS_FIELDS = ("loglik", "nk", "sx", "sxx")
_PEER_ACCESS_ALREADY_ENABLED = 704  # cudaErrorPeerAccessAlreadyEnabled


def _copy_here(a: Any) -> Any:
    """``a`` (on any device) copied to the current device, on the current stream.

    The caller orders the copy after the work that produced ``a`` (an event wait) and keeps
    ``a`` alive until the copy has run.
    """
    if a.device.id == cupy.cuda.Device().id:
        return a
    if not a.flags.c_contiguous:
        raise ValueError("peer copies need C-contiguous arrays")
    out = cupy.empty(a.shape, dtype=a.dtype)
    if a.nbytes:
        out.data.copy_from_device_async(a.data, a.nbytes)
    return out


def _enable_peer_access(device: int, peer: int) -> bool:
    """Let kernels on ``device`` address ``peer``'s memory; False where the hardware cannot."""
    runtime = cupy.cuda.runtime
    if not runtime.deviceCanAccessPeer(device, peer):
        return False
    with cupy.cuda.Device(device):
        try:
            runtime.deviceEnablePeerAccess(peer)
        except runtime.CUDARuntimeError as exc:
            if exc.status != _PEER_ACCESS_ALREADY_ENABLED:
                logger.info("multigpu: no peer access %d -> %d (%s)", device, peer, exc)
                return False
    return True


@dataclass
class MultiGpuData:
    """One :class:`~gmm_core._cupy.CupyData` shard per device, in row order."""

    shards: list[CupyData]
    devices: list[int]
    covariance_type: str
    dtype: np.dtype
    n_samples: int
    n_features: int
    #: the shards' summed sample weights (None: unweighted)
    total_weight: float | None = None

    @property
    def rows(self) -> list[int]:
        """Rows of every shard."""
        return [shard.n_samples for shard in self.shards]


class MultiGpuEngine(Engine):
    """Engine sharding rows across the GPUs of one host; see :class:`gmm_core._engine.Engine`.

    Parameters
    ----------
    devices : sequence of int, optional
        CUDA device ids to use (default: every visible device). The current device, if listed,
        becomes the primary one (where parameters, statistics and the M-step live); otherwise
        the first listed device.
    check_every : int, default=16
        Iterations between host checks for convergence in :meth:`run_em` (the iterations of one
        CUDA graph per device).
    exchange : {'auto', 'device', 'copies'}, default='auto'
        How :meth:`run_em` all-reduces the pass outputs each iteration: ``'device'`` on the
        devices through peer memory (``reduce_exchange_mstep``; whole iterations in CUDA graphs),
        ``'copies'`` by peer copies launched from the host; ``'auto'`` takes ``'device'`` where
        every pair of devices has peer access.
    use_graphs : bool, default=True
        Capture ``check_every`` iterations per device in a CUDA graph (device exchange).
    **engine_kwargs
        Passed to every per-device :class:`~gmm_core._cupy.CupyEngine`.
    """

    name = "multigpu"
    xp = cupy
    supports_sample_weight = True

    def __init__(
        self,
        devices: Any = None,
        *,
        check_every: int = 16,
        exchange: str = "auto",
        use_graphs: bool = True,
        **engine_kwargs: Any,
    ) -> None:
        if exchange not in ("auto", "device", "copies"):
            raise ValueError(f"exchange must be 'auto', 'device' or 'copies', got {exchange!r}")
        if devices is None:
            devices = range(cupy.cuda.runtime.getDeviceCount())
        devices = [int(d) for d in devices]
        if not devices:
            raise ValueError("MultiGpuEngine needs at least one CUDA device")
        current = cupy.cuda.Device().id
        if current in devices:
            devices.remove(current)
            devices.insert(0, current)
        self.devices = devices
        self.primary = devices[0]
        self.check_every = max(1, int(check_every))
        self.exchange = exchange
        self.use_graphs = bool(use_graphs)
        self.engines: list[CupyEngine] = []
        # run_em captures whole iterations itself: the per-device engines capture nothing
        engine_kwargs["use_graphs"] = False
        for device in devices:
            with cupy.cuda.Device(device):
                self.engines.append(CupyEngine(**engine_kwargs))
        self._in_flight: tuple = ()  # arrays read by pending peer copies (see accumulate)
        self._peer_access: bool | None = None
        self._loop: tuple[tuple, FusedLoop] | None = None  # run_em's buffers and graphs
        self.last_run_info: dict[str, Any] = {}

    def peer_access(self) -> bool:
        """Whether every pair of devices can read and write each other's memory (enabled here)."""
        if self._peer_access is None:
            pairs = [(d, p) for d in self.devices for p in self.devices if p != d]
            self._peer_access = all(_enable_peer_access(d, p) for d, p in pairs)
        return self._peer_access

    # -- data -----------------------------------------------------------------------------------
    def takes_device_arrays(self) -> bool:
        return True

    def asarray(self, a: Any) -> Any:
        with cupy.cuda.Device(self.primary):
            return cupy.asarray(a)

    def to_host(self, a: Any) -> np.ndarray:
        return cupy.asnumpy(a) if isinstance(a, cupy.ndarray) else np.asarray(a)

    def shard_bounds(self, n_samples: int) -> list[tuple[int, int]]:
        """Row ranges ``[start, stop)`` of the shards of ``n_samples`` rows (as even as can be)."""
        edges = np.linspace(0, n_samples, len(self.devices) + 1).round().astype(np.int64)
        return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]

    def prepare(
        self, X: Any, shift: Any, covariance_type: str, *, sample_weight: Any = None
    ) -> MultiGpuData:
        """Split ``X - shift`` into one row shard per device and prepare each on its device.

        Parameters
        ----------
        X : numpy.ndarray, cupy.ndarray, or list of cupy.ndarray
            Data of shape (n_samples, n_features), float32 or float64. A host array is uploaded
            shard by shard; a device array is split and its shards copied peer-to-peer; a list
            of device arrays (one per engine device, in ``self.devices`` order, e.g. data
            generated on each GPU) is used as the shards as they are.
        shift : array of shape (n_features,) or None
        covariance_type : {'full', 'tied', 'diag', 'spherical'}
        sample_weight : numpy.ndarray of shape (n_samples,), optional
            Validated weights (float64) of every row, in row order (for a list of shards: the
            shards' rows one after the other); each shard keeps its own rows' weights.
        """
        if isinstance(X, list | tuple):
            if len(X) != len(self.devices):
                raise ValueError(
                    f"got {len(X)} shards for {len(self.devices)} devices {self.devices}; pass "
                    "one array per device, in that order"
                )
            pieces = list(X)
        elif isinstance(X, cupy.ndarray):
            with X.device:
                X = cupy.ascontiguousarray(X)  # row slices of it are then contiguous too
                produced = cupy.cuda.get_current_stream().record()
            pieces = []
            for device, (start, stop) in zip(
                self.devices, self.shard_bounds(X.shape[0]), strict=True
            ):
                with cupy.cuda.Device(device):
                    cupy.cuda.get_current_stream().wait_event(produced)
                    pieces.append(_copy_here(X[start:stop]))
            for device in self.devices:  # the caller may free X once this returns
                cupy.cuda.Device(device).synchronize()
        else:
            X = np.asarray(X)
            pieces = [X[start:stop] for start, stop in self.shard_bounds(X.shape[0])]
        weights: list[Any] = [None] * len(pieces)
        if sample_weight is not None:
            edges = np.cumsum([0] + [piece.shape[0] for piece in pieces])
            w = np.asarray(sample_weight, dtype=np.float64)
            weights = [w[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]
        shards = []
        for device, engine, piece, weight in zip(
            self.devices, self.engines, pieces, weights, strict=True
        ):
            if isinstance(piece, cupy.ndarray) and piece.device.id != device:
                raise ValueError(
                    f"shard for device {device} lives on device {piece.device.id}; create each "
                    "shard on its own device (with cupy.cuda.Device(i): ...)"
                )
            with cupy.cuda.Device(device):
                shards.append(engine.prepare(piece, shift, covariance_type, sample_weight=weight))
        dtype = shards[0].dtype
        n_features = shards[0].n_features
        if any(s.dtype != dtype or s.n_features != n_features for s in shards):
            raise ValueError("every shard must have the same dtype and number of features")
        n_samples = sum(s.n_samples for s in shards)
        logger.info(
            "multigpu: %d rows in shards of %s rows on devices %s",
            n_samples,
            [s.n_samples for s in shards],
            self.devices,
        )
        total_weight = None
        if sample_weight is not None:
            total_weight = float(sum(shard.total_weight or 0.0 for shard in shards))
        return MultiGpuData(
            shards, self.devices, covariance_type, dtype, n_samples, n_features, total_weight
        )

    # -- passes ---------------------------------------------------------------------------------
    def _scatter(self, arrays: list[Any]) -> tuple[list[list[Any]], list[Any]]:
        """Copy primary-device arrays to every device, ordered after the primary's current work.

        Returns the per-device lists of arrays (the primary's own are the inputs) and the
        arrays the copies read, which the caller keeps alive until its next call.
        """
        with cupy.cuda.Device(self.primary):
            arrays = [cupy.ascontiguousarray(a) for a in arrays]
            ready = cupy.cuda.get_current_stream().record()
        per_device = []
        for device in self.devices:
            with cupy.cuda.Device(device):
                if device != self.primary:
                    cupy.cuda.get_current_stream().wait_event(ready)
                per_device.append([_copy_here(a) for a in arrays])
        return per_device, arrays

    def _gather(self, per_device: list[list[Any]]) -> list[list[Any]]:
        """Arrays computed on every device, copied to the primary after their producers."""
        finished = []
        for device, arrays in zip(self.devices, per_device, strict=True):
            with cupy.cuda.Device(device):
                arrays[:] = [cupy.ascontiguousarray(a) for a in arrays]
                finished.append(cupy.cuda.get_current_stream().record())
        out = []
        with cupy.cuda.Device(self.primary):
            stream = cupy.cuda.get_current_stream()
            for device, arrays, event in zip(self.devices, per_device, finished, strict=True):
                if device != self.primary:
                    stream.wait_event(event)
                out.append([_copy_here(a) for a in arrays])
        return out

    def accumulate(self, data: MultiGpuData, params: Params, active: Any) -> Stats:
        """Every device's pass over its shard; the statistics summed on the primary device."""
        fields = [params.weights, params.means, params.covariances, params.precisions_cholesky]
        per_device_params, sources = self._scatter([*fields, active])
        partials = []
        for device, engine, shard, local in zip(
            self.devices, self.engines, data.shards, per_device_params, strict=True
        ):
            with cupy.cuda.Device(device):
                stats = engine.accumulate(shard, Params(*local[:4]), local[4])
                partials.append([getattr(stats, name) for name in _STATS_FIELDS])
        on_primary = self._gather(partials)
        # the peer copies read these asynchronously: keep them until the next call, whose
        # scatter is ordered after this call's gather on every device
        self._in_flight = (sources, per_device_params, partials)
        with cupy.cuda.Device(self.primary):
            total = None
            for arrays, shard in zip(on_primary, data.shards, strict=True):
                loglik, nk, sx, sxx = arrays
                stats = Stats(loglik, nk, sx, sxx, shard.n_samples, shard.total_weight)
                total = stats if total is None else total + stats
        assert total is not None
        return total

    def m_step(
        self, stats: Stats, covariance_type: str, reg_covar: float, eps: float, shift: Any = None
    ) -> Params | None:
        """The primary device's M-step kernel (full covariance), as the one-GPU engine's."""
        with cupy.cuda.Device(self.primary):
            return self.engines[0].m_step(stats, covariance_type, reg_covar, eps, shift)

    def weighted_log_prob(self, data: MultiGpuData, params: Params) -> Any:
        """``log w_k + log N(x | k)`` of one mixture, shape (n_samples, K), on the primary."""
        fields = [params.weights, params.means, params.covariances, params.precisions_cholesky]
        per_device_params, sources = self._scatter(fields)
        parts = []
        for device, engine, shard, local in zip(
            self.devices, self.engines, data.shards, per_device_params, strict=True
        ):
            with cupy.cuda.Device(device):
                parts.append([engine.weighted_log_prob(shard, Params(*local))])
        on_primary = self._gather(parts)
        with cupy.cuda.Device(self.primary):
            result = cupy.concatenate([arrays[0] for arrays in on_primary])
        for device in self.devices:  # once per fit: simply wait for every copy
            cupy.cuda.Device(device).synchronize()
        del sources
        return result

    # -- the whole EM loop on the devices (diag/spherical) ----------------------------------------
    def run_em(
        self,
        data: MultiGpuData,
        params: Params,
        *,
        reg_covar: float,
        eps: float,
        tol: float,
        max_iter: int,
        first_bound: float = -np.inf,
        shift: Any = None,
    ) -> EMResult | None:
        """Run the estimator's EM loop on every device, exchanging pass outputs each iteration.

        Same contract as :meth:`gmm_core._cupy.CupyEngine.run_em`: returns an
        :class:`~gmm_core._engine.EMResult` (``params`` on the primary device) or ``None`` when
        the data need the generic loop (full/tied covariance, shards streamed from the host, or
        kernel limits).
        """
        n_restarts, n_components, _ = params.means.shape
        if not all(shard.resident and len(shard.chunks) == 1 for shard in data.shards):
            return None
        key = (
            tuple(shard.chunks[0].data.ptr for shard in data.shards),
            tuple(0 if shard.weights is None else shard.weights.data.ptr for shard in data.shards),
            data.covariance_type,
            data.n_samples,
            n_restarts,
            n_components,
            max_iter,
        )
        loop: FusedLoop | None
        if self._loop is not None and self._loop[0] == key:
            loop = self._loop[1]
        else:
            self._loop = None  # one cached loop at a time: its graphs pin its buffers
            try:
                loop = FusedLoop.create(self, data, n_restarts, n_components, max_iter)
            except MemoryError:  # the fused kernel's tiles do not fit shared memory
                return None
            if loop is None:
                return None
            self._loop = (key, loop)
        try:
            loop.reset(
                params,
                reg_covar=reg_covar,
                eps=eps,
                tol=tol,
                first_bound=first_bound,
                shift=shift,
            )
            return loop.run(max_iter)
        except BaseException:
            # its exchange counters may differ between devices now; let queued work finish
            # before its buffers can go back to the memory pool
            self._loop = None
            loop.drain()
            raise
