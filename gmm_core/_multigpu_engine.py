"""The multi-GPU engine: row shards on every GPU of one host, statistics summed each iteration.

One :class:`~gmm_core._cupy_engine.CupyEngine` per device runs its pass (the fused kernel for
diag/spherical, GEMMs for full/tied) over the shard that device holds; the per-device
:class:`~gmm_core._gaussian.Stats` (a few KB) are copied peer-to-peer to the primary device
(the current device when the engine is made) and added there, where the estimator's M-step runs
once. Devices are ordered by CUDA events only, never by host synchronisation, so the host keeps
enqueuing iterations while the GPUs work.

:meth:`MultiGpuEngine.run_em` is the whole-iteration device loop for diag/spherical data (as
:meth:`CupyEngine.run_em <gmm_core._cupy_engine.CupyEngine.run_em>`): every device runs the
fused pass over its shard, the pass outputs are exchanged (an all-reduce by peer copies, summed
in device order so every device holds bitwise the same totals), and every device runs the M-step
kernel itself; no parameters travel back, and the host checks for convergence every
``check_every`` iterations.

CuPy is imported here only; select the engine with ``GaussianMixture(backend="multigpu")``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import cupy
import numpy as np

from ._cupy_engine import CupyData, CupyEngine
from ._gaussian import ILL_DEFINED_COVARIANCE, Params, Stats

logger = logging.getLogger("gmm_core")

_STATS_FIELDS = ("loglik", "nk", "sx", "sxx")


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


@dataclass
class MultiGpuData:
    """One :class:`~gmm_core._cupy_engine.CupyData` shard per device, in row order."""

    shards: list[CupyData]
    devices: list[int]
    covariance_type: str
    dtype: np.dtype
    n_samples: int
    n_features: int

    @property
    def rows(self) -> list[int]:
        """Rows of every shard."""
        return [shard.n_samples for shard in self.shards]


class MultiGpuEngine:
    """Engine sharding rows across the GPUs of one host; see :class:`gmm_core._engine.Engine`.

    Parameters
    ----------
    devices : sequence of int, optional
        CUDA device ids to use (default: every visible device). The current device, if listed,
        becomes the primary one (where parameters, statistics and the M-step live); otherwise
        the first listed device.
    check_every : int, default=16
        Iterations between host checks for convergence in :meth:`run_em`.
    **engine_kwargs
        Passed to every per-device :class:`~gmm_core._cupy_engine.CupyEngine`.
    """

    name = "multigpu"
    xp = cupy
    sync_every = 16

    def __init__(self, devices: Any = None, *, check_every: int = 16, **engine_kwargs: Any) -> None:
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
        self.engines: list[CupyEngine] = []
        # the exchange loop launches kernels itself: no per-device CUDA graph to capture
        engine_kwargs.setdefault("use_graphs", False)
        for device in devices:
            with cupy.cuda.Device(device):
                self.engines.append(CupyEngine(**engine_kwargs))
        self._in_flight: tuple = ()  # arrays read by pending peer copies (see accumulate)
        self.last_run_info: dict[str, Any] = {}

    # -- data -----------------------------------------------------------------------------------
    def asarray(self, a: Any) -> Any:
        with cupy.cuda.Device(self.primary):
            return cupy.asarray(a)

    def to_host(self, a: Any) -> np.ndarray:
        return cupy.asnumpy(a) if isinstance(a, cupy.ndarray) else np.asarray(a)

    def shard_bounds(self, n_samples: int) -> list[tuple[int, int]]:
        """Row ranges ``[start, stop)`` of the shards of ``n_samples`` rows (as even as can be)."""
        edges = np.linspace(0, n_samples, len(self.devices) + 1).round().astype(np.int64)
        return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]

    def prepare(self, X: Any, shift: Any, covariance_type: str) -> MultiGpuData:
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
        shards = []
        for device, engine, piece in zip(self.devices, self.engines, pieces, strict=True):
            if isinstance(piece, cupy.ndarray) and piece.device.id != device:
                raise ValueError(
                    f"shard for device {device} lives on device {piece.device.id}; create each "
                    "shard on its own device (with cupy.cuda.Device(i): ...)"
                )
            with cupy.cuda.Device(device):
                shards.append(engine.prepare(piece, shift, covariance_type))
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
        return MultiGpuData(shards, self.devices, covariance_type, dtype, n_samples, n_features)

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
                stats = Stats(loglik, nk, sx, sxx, shard.n_samples)
                total = stats if total is None else total + stats
        assert total is not None
        return total

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
    ) -> tuple[Params, np.ndarray, np.ndarray, np.ndarray] | None:
        """Run the estimator's EM loop on every device, exchanging pass outputs each iteration.

        Same contract as :meth:`gmm_core._cupy_engine.CupyEngine.run_em`: returns ``(params,
        history, n_iter, converged)`` (``params`` on the primary device, ``history`` (max_iter,
        R) with NaN after a restart stopped) or ``None`` when the data need the generic loop
        (full/tied covariance, shards streamed from the host, or kernel limits).
        """
        try:
            loop = _FusedLoop.create(
                self, data, params, max_iter, first_bound, reg_covar=reg_covar, eps=eps, tol=tol
            )
        except MemoryError:  # the fused kernel's tiles do not fit shared memory
            return None
        if loop is None:
            return None
        return loop.run(max_iter)


@dataclass
class _DeviceSlot:
    """What one device holds: the CuPy engine's own loop buffers plus the exchange buffers."""

    device: int
    engine: CupyEngine
    shard: CupyData
    loop: Any  # gmm_core._cupy_engine._DeviceLoop: state, kernel params, partials, M-step tables
    outs: list[list[Any]]  # [parity][plan]: this device's pass output (float64 stats vector)
    recv: dict[int, list[Any]]  # peer device -> [plan] receive buffers
    totals: list[Any]  # [plan]: the all-reduced statistics the M-step reads
    done: Any  # event: this device's pass of the current iteration is written


@dataclass
class _FusedLoop:
    engine: MultiGpuEngine
    data: MultiGpuData
    slots: list[_DeviceSlot]
    n_components: int

    @classmethod
    def create(
        cls,
        engine: MultiGpuEngine,
        data: MultiGpuData,
        params: Params,
        max_iter: int,
        first_bound: float,
        *,
        reg_covar: float,
        eps: float,
        tol: float,
    ) -> _FusedLoop | None:
        from . import _cupy_engine

        device_loop = getattr(_cupy_engine, "_DeviceLoop", None)
        n_restarts, n_components, _ = params.means.shape
        if max_iter < 1 or device_loop is None:
            return None
        for dev_engine, shard in zip(engine.engines, data.shards, strict=True):
            if not (shard.resident and len(shard.chunks) == 1):
                return None
            if not dev_engine._fused_ok(shard, n_restarts, n_components):
                return None
        host_params = params.map(cupy.asnumpy)
        slots: list[_DeviceSlot] = []
        for device, dev_engine, shard in zip(
            engine.devices, engine.engines, data.shards, strict=True
        ):
            with cupy.cuda.Device(device):
                plans = dev_engine._plans(shard, n_restarts, n_components)
                loop = device_loop(dev_engine, shard, plans, n_restarts, n_components, max_iter)
                # the M-step tables carry the number of rows the lower bound divides by: ALL rows
                all_rows = replace(shard, n_samples=data.n_samples)
                with loop.stream:
                    local = host_params.map(cupy.asarray)
                loop.reset(dev_engine, all_rows, local, reg_covar, eps, tol, first_bound)

                def vectors(plans: list[Any] = plans) -> list[Any]:
                    return [cupy.zeros(p.pstride, dtype=cupy.float64) for p in plans]

                slot = _DeviceSlot(
                    device,
                    dev_engine,
                    shard,
                    loop,
                    [vectors(), vectors()],
                    {peer: vectors() for peer in engine.devices if peer != device},
                    vectors(),
                    cupy.cuda.Event(block=False, disable_timing=True),
                )
                slots.append(slot)
                loop.stream.synchronize()
        pstrides = {tuple(p.pstride for p in slot.loop.plans) for slot in slots}
        if len(pstrides) != 1:  # restart groups differ between devices: cannot add outputs
            return None
        return cls(engine, data, slots, n_components)

    def _launch_passes(self, parity: int) -> None:
        """Every device's fused pass over its shard (its M-step is left to the exchange)."""
        for slot in self.slots:
            loop = slot.loop
            with cupy.cuda.Device(slot.device), loop.stream:
                for i, plan in enumerate(loop.plans):
                    slot.engine._launch_pass(
                        slot.shard,
                        plan,
                        slot.shard.chunks[0],
                        self.n_components,
                        loop.kparams[0],
                        loop.kparams[1],
                        loop.state.active[plan.r0 : plan.r1],
                        loop.partials[i],
                        slot.outs[parity][i],
                        loop.counters[i],
                    )
                slot.done.record(loop.stream)

    def _reduce_and_mstep(self, parity: int) -> None:
        """All-reduce of the pass outputs (peer copies, device-order sums), M-step everywhere."""
        by_device = {slot.device: slot for slot in self.slots}
        for slot in self.slots:
            stream = slot.loop.stream
            with cupy.cuda.Device(slot.device), stream:
                for peer in slot.recv:
                    stream.wait_event(by_device[peer].done)
                for i, plan in enumerate(slot.loop.plans):
                    total = slot.totals[i]
                    # every device sums in device order: bitwise the same totals everywhere
                    for j, peer_slot in enumerate(self.slots):
                        src = peer_slot.outs[parity][i]
                        if j == 0:  # a plain (peer) memcpy, no kernel
                            total.data.copy_from_device_async(src.data, src.nbytes, stream)
                            continue
                        if peer_slot.device != slot.device:
                            dst = slot.recv[peer_slot.device][i]
                            dst.data.copy_from_device_async(src.data, src.nbytes, stream)
                            src = dst
                        cupy.add(total, src, out=total)
                    slot.loop.kern_mstep(
                        (plan.r1 - plan.r0,),
                        (128,),
                        (total, np.int32(self.n_components), slot.loop.tables[i]),
                    )

    def run(self, max_iter: int) -> tuple[Params, np.ndarray, np.ndarray, np.ndarray]:
        primary = self.slots[0]
        state = primary.loop.state
        done = 0
        while done < max_iter:
            for _ in range(min(self.engine.check_every, max_iter - done)):
                parity = done % 2
                self._launch_passes(parity)
                self._reduce_and_mstep(parity)
                done += 1
            with cupy.cuda.Device(primary.device), primary.loop.stream:
                failed, running = state.read_flags(cupy.asnumpy(state.flags))
            if failed:
                self._synchronize()
                raise ValueError(ILL_DEFINED_COVARIANCE)
            if not running:
                break
        self._synchronize()
        with cupy.cuda.Device(primary.device):
            params = state.params.map(cupy.copy)
            history = cupy.asnumpy(state.history).T.copy()
            n_iter = cupy.asnumpy(state.n_iter).astype(np.int64)
            converged = cupy.asnumpy(state.converged).astype(bool)
        self.engine.last_run_info = {
            "devices": self.engine.devices,
            "iterations_launched": done,
            "plans": [len(slot.loop.plans) for slot in self.slots],
        }
        return params, history, n_iter, converged

    def _synchronize(self) -> None:
        for slot in self.slots:
            with cupy.cuda.Device(slot.device):
                slot.loop.stream.synchronize()
