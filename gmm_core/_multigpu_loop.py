"""The multi-GPU device loop: whole EM iterations on every GPU, statistics exchanged on the devices.

:class:`FusedLoop` is what :meth:`gmm_core._multigpu_engine.MultiGpuEngine.run_em` runs for
diag/spherical data resident on every device: per device the fused pass over its shard, then
the pass outputs all-reduced in device order (``reduce_exchange_mstep``: peer stores into every
device's mailbox, flags, sum, M-step; or peer copies launched from the host where the devices
have no peer access), ``steps`` iterations per CUDA graph, the restart flags read one launch late.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import cupy
import numpy as np

from ._cupy import CupyData, CupyEngine, DeviceLoop, drive_launches, tail_reduce
from ._cupy.kernels import get_kernel
from ._engine import EMResult
from ._gaussian import ILL_DEFINED_COVARIANCE, Params

if TYPE_CHECKING:
    from ._multigpu_engine import MultiGpuData, MultiGpuEngine

logger = logging.getLogger("gmm_core")


@dataclass
class DeviceSlot:
    """What one device holds: the CuPy engine's own loop buffers plus the exchange buffers."""

    device: int
    engine: CupyEngine
    shard: CupyData
    loop: DeviceLoop  # state, kernel params, partials, M-step tables, the pass strategy
    outs: list[list[Any]]  # [parity][plan]: this device's pass output (float64 stats vector)
    recv: dict[int, list[Any]]  # peer device -> [plan] receive buffers (copies exchange)
    totals: list[Any]  # [plan]: the all-reduced statistics the M-step reads
    done: Any  # event: this device's pass of the current iteration is written
    # device exchange (``reduce_exchange_mstep``), one set per plan
    mailboxes: list[Any] = field(default_factory=list)  # (2, n_dev, pstride) float64
    arrivals: list[Any] = field(default_factory=list)  # (n_dev,) uint32: rounds seen per device
    rounds: list[Any] = field(default_factory=list)  # (1,) uint32: this device's rounds
    finished: list[Any] = field(default_factory=list)  # (1,) uint32: blocks done this round
    tables: list[Any] = field(default_factory=list)  # (2 n_dev,) uint64: every device's buffers
    timed_out: Any = None  # (1,) int32
    kern_exchange: Any = None  # reduce_exchange_mstep
    graph: Any = None  # CUDA graph of ``steps`` iterations (device exchange)


@dataclass
class FusedLoop:
    """Buffers and launches of :meth:`MultiGpuEngine.run_em`, cached per data set and shape.

    Two ways to exchange the pass outputs each iteration:

    ``"device"`` (every pair of devices has peer access)
        ``reduce_exchange_mstep`` in ``em_diag.cu``: each device pushes its reduced statistics
        into every device's mailbox, waits for the others' on the device and runs the M-step;
        the pass and that kernel for ``steps`` iterations are one CUDA graph per device, and
        the host only launches the graphs and reads the primary's restart flags, as the one-GPU
        loop does.
    ``"copies"``
        peer copies and adds launched from the host every iteration, ordered by CUDA events.
    """

    engine: MultiGpuEngine
    data: MultiGpuData
    slots: list[DeviceSlot]
    n_components: int
    steps: int
    exchange: str
    _iterations: int = 0  # iterations launched by the copies exchange in this fit (parity)

    @classmethod
    def create(
        cls,
        engine: MultiGpuEngine,
        data: MultiGpuData,
        n_restarts: int,
        n_components: int,
        max_iter: int,
    ) -> FusedLoop | None:
        if max_iter < 1:
            return None
        for dev_engine, shard in zip(engine.engines, data.shards, strict=True):
            if not (shard.resident and len(shard.chunks) == 1):
                return None
            if not dev_engine.diag_pass.supports(shard, n_restarts, n_components):
                return None
        slots: list[DeviceSlot] = []
        for device, dev_engine, shard in zip(
            engine.devices, engine.engines, data.shards, strict=True
        ):
            with cupy.cuda.Device(device):
                fused = dev_engine.fused_diag(shard, n_restarts, n_components)
                assert fused is not None  # diag_pass.supports() said so
                strategy, plans = fused
                device_loop = DeviceLoop(
                    strategy,
                    shard,
                    plans,
                    n_restarts,
                    n_components,
                    max_iter,
                    graph_steps=dev_engine.graph_steps,
                    use_graphs=dev_engine.use_graphs,
                )

                def vectors(plans: list[Any] = plans) -> list[Any]:
                    return [cupy.zeros(p.pstride, dtype=cupy.float64) for p in plans]

                slots.append(
                    DeviceSlot(
                        device,
                        dev_engine,
                        shard,
                        device_loop,
                        [vectors(), vectors()],
                        {peer: vectors() for peer in engine.devices if peer != device},
                        vectors(),
                        cupy.cuda.Event(block=False, disable_timing=True),
                    )
                )
        pstrides = {tuple(p.pstride for p in slot.loop.plans) for slot in slots}
        if len(pstrides) != 1:  # restart groups differ between devices: cannot add outputs
            return None
        exchange = engine.exchange
        if exchange == "auto":
            exchange = "device" if engine.peer_access() else "copies"
        elif exchange == "device" and not engine.peer_access():
            raise RuntimeError(
                f"multigpu: devices {engine.devices} cannot all address each other's memory "
                "(no peer access); use MultiGpuEngine(exchange='copies') or 'auto'"
            )
        # launches of equal length, as few as check_every allows: no iterations past max_iter
        launches = -(-max_iter // engine.check_every)
        steps = -(-max_iter // launches)
        loop = cls(engine, data, slots, n_components, steps, exchange)
        if exchange == "device":
            loop._device_exchange_buffers()
        for slot in slots:  # buffers zeroed on the default streams, used on the loop streams
            cupy.cuda.Device(slot.device).synchronize()
        if exchange == "device":
            loop._capture()
        return loop

    # -- device exchange ------------------------------------------------------------------------
    def _device_exchange_buffers(self) -> None:
        n_dev = len(self.slots)
        for slot in self.slots:
            with cupy.cuda.Device(slot.device):
                for plan in slot.loop.plans:
                    slot.mailboxes.append(cupy.zeros((2, n_dev, plan.pstride), cupy.float64))
                    slot.arrivals.append(cupy.zeros(n_dev, cupy.uint32))
                    slot.rounds.append(cupy.zeros(1, cupy.uint32))
                    slot.finished.append(cupy.zeros(1, cupy.uint32))
                slot.timed_out = cupy.zeros(1, cupy.int32)
                shard = slot.shard
                slot.kern_exchange = get_kernel(
                    "em_diag.cu",
                    "reduce_exchange_mstep",
                    shard.dtype,
                    shard.n_features,
                    shard.covariance_type == "spherical",
                )
        for slot in self.slots:
            with cupy.cuda.Device(slot.device):
                for i in range(len(slot.loop.plans)):
                    words = []
                    for peer in self.slots:
                        words += [peer.mailboxes[i].data.ptr, peer.arrivals[i].data.ptr]
                    slot.tables.append(cupy.asarray(np.array(words, dtype=np.uint64)))
                cupy.cuda.Device().synchronize()

    def _iteration(self, slot: DeviceSlot, me: int) -> None:
        """One EM iteration of one device (device exchange), on the current device and stream.

        Two launches per restart group: the pass, then ``reduce_exchange_mstep`` (reduction of
        the block partials, all-reduce between the devices, M-step).
        """
        loop = slot.loop
        for i, plan in enumerate(loop.plans):
            out = slot.outs[0][i]
            self._pass(slot, i, out, reduce=False)
            if tail_reduce(plan):  # the pass's last block reduced into `out`
                partial, n_blocks = out, 1
            else:
                partial, n_blocks = loop.partials[i], plan.n_blocks
            slot.kern_exchange(
                (-(-plan.pstride // 32),),
                (256,),
                (
                    partial,
                    np.int32(n_blocks),
                    np.int32(plan.pstride),
                    np.int32(me),
                    np.int32(len(self.slots)),
                    slot.tables[i],
                    slot.rounds[i],
                    slot.finished[i],
                    slot.totals[i],
                    slot.timed_out,
                    np.int32(plan.r1 - plan.r0),
                    np.int32(self.n_components),
                    loop.tables[i],
                ),
            )

    def _pass(self, slot: DeviceSlot, i: int, out: Any, reduce: bool = True) -> None:
        """The fused pass of restart group ``i`` over the slot's shard (no M-step)."""
        loop = slot.loop
        plan = loop.plans[i]
        assert loop.passes is not None  # a fused pass (diag_em_small is one GPU's only)
        loop.passes.launch_pass(
            slot.shard,
            plan,
            slot.shard.chunks[0],
            self.n_components,
            loop.kparams[0],
            loop.kparams[1],
            loop.state.active[plan.r0 : plan.r1],
            loop.partials[i],
            out,
            loop.counters[i],
            reduce=reduce,
            weights=slot.shard.weights,
        )

    def _capture(self) -> None:
        if not self.engine.use_graphs:
            return
        for me, slot in enumerate(self.slots):
            stream = slot.loop.stream
            with cupy.cuda.Device(slot.device), stream:
                try:
                    stream.begin_capture()
                    for _ in range(self.steps):
                        self._iteration(slot, me)
                    slot.graph = stream.end_capture()
                    slot.graph.upload(stream)
                    stream.synchronize()
                except Exception as exc:  # capture unsupported: launch directly
                    logger.info("multigpu: CUDA graph capture failed (%s)", exc)
                    if stream.is_capturing():
                        stream.end_capture()
                    for other in self.slots:
                        other.graph = None
                    return

    def _launch_steps_device(self) -> None:
        """``steps`` iterations on every device (graphs or kernels), no host synchronisation."""
        if all(slot.graph is not None for slot in self.slots):
            for slot in self.slots:
                with cupy.cuda.Device(slot.device):
                    slot.graph.launch(slot.loop.stream)
            return
        # iteration by iteration across the devices: a device's exchange waits for the others'
        # launches of the same iteration, which must not queue behind its own later ones
        for _ in range(self.steps):
            for me, slot in enumerate(self.slots):
                with cupy.cuda.Device(slot.device), slot.loop.stream:
                    self._iteration(slot, me)

    # -- copies exchange ------------------------------------------------------------------------
    def _launch_passes(self, parity: int) -> None:
        """Every device's fused pass over its shard (its M-step is left to the exchange)."""
        for slot in self.slots:
            loop = slot.loop
            with cupy.cuda.Device(slot.device), loop.stream:
                for i in range(len(loop.plans)):
                    self._pass(slot, i, slot.outs[parity][i])
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

    def _launch_steps_copies(self) -> None:
        for _ in range(self.steps):
            parity = self._iterations % 2  # output buffers alternate from iteration to iteration
            self._launch_passes(parity)
            self._reduce_and_mstep(parity)
            self._iterations += 1

    # -- a fit ----------------------------------------------------------------------------------
    def reset(
        self,
        params: Params,
        *,
        reg_covar: float,
        eps: float,
        tol: float,
        first_bound: float,
        shift: Any = None,
    ) -> None:
        """Queue a fit's initial parameters and settings on every device's loop stream.

        ``shift``: what the data were centred by (the M-step's means).

        The exchange counters are not reset: every device runs the same number of rounds in
        every fit, so they stay equal across fits (a fit that raises drops the cached loop).
        """
        host_params = params.map(cupy.asnumpy)
        for slot in self.slots:
            with cupy.cuda.Device(slot.device):
                loop = slot.loop
                # the M-step tables carry the number of rows the lower bound divides by: ALL rows
                all_rows = replace(
                    slot.shard,
                    n_samples=self.data.n_samples,
                    total_weight=self.data.total_weight,
                )
                with loop.stream:
                    local = host_params.map(cupy.asarray)
                settings = dict(reg_covar=reg_covar, eps=eps, tol=tol, first_bound=first_bound)
                loop.reset(all_rows, local, **settings, synchronize=False, shift=shift)

    def run(self, max_iter: int) -> EMResult:
        primary = self.slots[0]
        state = primary.loop.state
        self._iterations = 0
        launch = (
            self._launch_steps_device if self.exchange == "device" else self._launch_steps_copies
        )
        with cupy.cuda.Device(primary.device):
            loop = primary.loop
            done = drive_launches(
                launch, self.steps, max_iter, state.flags, loop.flag_buffers, loop.stream
            )
        self._synchronize()
        late = []
        for slot in self.slots:
            if slot.timed_out is not None:
                with cupy.cuda.Device(slot.device):
                    if int(slot.timed_out.get()[0]):
                        late.append(slot.device)
        if late:
            raise RuntimeError(
                f"multigpu: devices {late} waited in vain for the other devices' statistics "
                "(a device's launches failed); run with MultiGpuEngine(exchange='copies') to "
                "exchange through host-ordered peer copies instead"
            )
        with cupy.cuda.Device(primary.device):
            if cupy.asnumpy(state.failed).any():
                raise ValueError(ILL_DEFINED_COVARIANCE)
            params = state.params.map(cupy.copy)
            history = cupy.asnumpy(state.history).T.copy()
            n_iter = cupy.asnumpy(state.n_iter).astype(np.int64)
            converged = cupy.asnumpy(state.converged).astype(bool)
        self.engine.last_run_info = {
            "devices": self.engine.devices,
            "iterations_launched": done,
            "exchange": self.exchange,
            "graphs": all(slot.graph is not None for slot in self.slots),
            "steps": self.steps,
            "plans": [len(slot.loop.plans) for slot in self.slots],
        }
        return EMResult(params, history, n_iter, converged)

    def _synchronize(self) -> None:
        for slot in self.slots:
            with cupy.cuda.Device(slot.device):
                slot.loop.stream.synchronize()

    def drain(self) -> None:
        """Wait for every device's queued work, errors ignored (the loop is being dropped)."""
        for slot in self.slots:
            try:
                with cupy.cuda.Device(slot.device):
                    slot.loop.stream.synchronize()
            except Exception as exc:  # the device is broken: nothing left to wait for
                logger.warning("multigpu: device %d did not drain (%s)", slot.device, exc)
