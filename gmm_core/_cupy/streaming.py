"""Host data streamed through the device at the link's rate.

Data larger than the memory budget stay in host memory. :class:`HostStream` pins them where they
are (``cudaHostRegister``: no host copy), keeps two device buffers of ``chunk_rows`` rows, and,
while a pass runs over chunk ``i`` on the compute stream, copies chunk ``i + 1`` into the other
buffer on a copy stream (events order the two: a buffer is refilled only once the pass that read
it has been enqueued before the copy's wait, and a pass waits for its chunk's copy). Each chunk is
centred on the device, in its buffer. Memory: two chunks, whatever the data size.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from typing import Any

import cupy
import numpy as np

logger = logging.getLogger("gmm_core")


def _register(array: np.ndarray) -> bool:
    """Page-lock ``array``'s memory in place; False where the driver refuses (then pageable)."""
    if array.nbytes == 0:
        return False
    try:
        cupy.cuda.runtime.hostRegister(array.ctypes.data, array.nbytes, 0)
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        logger.info("streaming from pageable memory: cudaHostRegister refused (%s)", exc)
        return False
    return True


def _unregister(pointer: int) -> None:
    try:
        cupy.cuda.runtime.hostUnregister(pointer)
    except cupy.cuda.runtime.CUDARuntimeError:  # pragma: no cover - already released
        pass


class HostStream:
    """Row chunks of a host array, uploaded double-buffered and centred on the device.

    Parameters
    ----------
    X : numpy.ndarray of shape (n_samples, n_features), C-contiguous
    shift : array of shape (n_features,) or None
        Subtracted from every chunk on the device.
    chunk_rows : int
    """

    def __init__(self, X: np.ndarray, shift: Any, chunk_rows: int) -> None:
        self.X = X
        self.chunk_rows = max(1, min(int(chunk_rows), X.shape[0]))
        self.shift = None if shift is None else cupy.asarray(np.asarray(shift, dtype=X.dtype))
        self.pinned = _register(X)
        if self.pinned:
            weakref.finalize(self, _unregister, X.ctypes.data)
        self._buffers: list[Any] = []
        self._copy_stream = cupy.cuda.Stream(non_blocking=True)

    @property
    def n_chunks(self) -> int:
        """Number of row chunks."""
        return -(-self.X.shape[0] // self.chunk_rows)

    def __len__(self) -> int:
        return self.n_chunks

    def host_chunks(self) -> list[np.ndarray]:
        """The host rows of every chunk (views, uncentred)."""
        r = self.chunk_rows
        return [self.X[i : i + r] for i in range(0, self.X.shape[0], r)]

    def chunks(self) -> Iterator[Any]:
        """Yield every chunk as a centred device array (valid until the next one is asked for)."""
        from .data import centre_rows

        if not self._buffers:
            self._buffers = [
                cupy.empty((self.chunk_rows, self.X.shape[1]), dtype=self.X.dtype)
                for _ in range(min(2, self.n_chunks))
            ]
        compute = cupy.cuda.get_current_stream()
        copy = self._copy_stream
        copied = [cupy.cuda.Event(disable_timing=True) for _ in self._buffers]
        free: list[Any] = [None for _ in self._buffers]
        host = self.host_chunks()

        def issue(i: int) -> None:
            slot = i % len(self._buffers)
            if free[slot] is not None:
                copy.wait_event(free[slot])
            rows = host[i]
            self._buffers[slot][: len(rows)].set(rows, stream=copy)
            copied[slot].record(copy)

        issue(0)
        for i, rows in enumerate(host):
            slot = i % len(self._buffers)
            if i + 1 < len(host):
                issue(i + 1)
            compute.wait_event(copied[slot])
            view = self._buffers[slot][: len(rows)]
            if self.shift is not None:
                centre_rows(view, self.shift, out=view)
            yield view
            done = cupy.cuda.Event(disable_timing=True)
            done.record(compute)
            free[slot] = done
        # the next caller may refill buffer 0 at once: its last reader must be done first
        for event in free:
            if event is not None:
                copy.wait_event(event)
