"""Data residency: the data on the device when they fit the memory budget, else streamed."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import cupy
import numpy as np

from .copies import every_nth_row

logger = logging.getLogger("gmm_core")


@dataclass
class CupyData:
    """The data as the passes read them, as :func:`prepare` made them.

    Resident data: ``chunks`` holds one C-contiguous device array of ``X - shift`` rows (or,
    uncentred, the caller's own array when its mean is close enough to the origin). Otherwise a
    ``source`` yields centred device chunks: a :class:`~gmm_core._cupy.streaming.HostStream`
    (host data over the budget, pinned and double-buffered) or a :class:`DeviceCentring` (a
    CuPy array whose centred copy would not fit the budget); ``chunks`` then holds the
    uncentred row blocks (host views, or device views) for their shapes.
    """

    chunks: list[Any]
    resident: bool
    covariance_type: str
    dtype: np.dtype
    n_samples: int
    n_features: int
    upload_seconds: float = 0.0
    #: what was subtracted from X (float64, zeros where X is used as it is)
    shift: np.ndarray | None = None
    #: column variances (float64, host) and the largest |x| (``prepare(..., "auto")``)
    variance: Any = None
    max_abs: float = 0.0
    source: Any = None
    #: sample weights of every row (device, the data's dtype; None: unweighted), and their
    #: float64 sum as the passes see them (what the lower bound divides by) and a host copy
    weights: Any = None
    total_weight: float | None = None
    host_weights: np.ndarray | None = field(default=None, repr=False)
    _xtx: Any = field(default=None, repr=False)
    _features: Any = field(default=None, repr=False)

    @property
    def X(self) -> Any:
        """The whole centred data when resident in one piece (tests, predict paths)."""
        if self.resident and len(self.chunks) == 1:
            return self.chunks[0]
        raise AttributeError("data are chunked; iterate over CupyEngine.device_chunks()")

    @property
    def nbytes(self) -> int:
        """Size of the data (bytes)."""
        return self.n_samples * self.n_features * self.dtype.itemsize


class DeviceCentring:
    """Centred row chunks of a CuPy array, one reused buffer (passes run in stream order)."""

    def __init__(self, X: Any, shift: np.ndarray, chunk_rows: int) -> None:
        self.X = X
        self.shift = cupy.asarray(np.asarray(shift, dtype=X.dtype))
        self.chunk_rows = max(1, min(int(chunk_rows), X.shape[0]))
        self._buffer: Any = None

    def row_blocks(self) -> list[Any]:
        """The uncentred row blocks (views)."""
        r = self.chunk_rows
        return [self.X[i : i + r] for i in range(0, self.X.shape[0], r)]

    def chunks(self) -> Iterator[Any]:
        """Yield each block centred (valid until the next one is asked for)."""
        if self._buffer is None:
            self._buffer = cupy.empty((self.chunk_rows, self.X.shape[1]), dtype=self.X.dtype)
        for block in self.row_blocks():
            yield centre_rows(block, self.shift, out=self._buffer[: block.shape[0]])


def centre_rows(X: Any, shift: Any, out: Any = None) -> Any:
    """``X - shift`` of a C-contiguous 2-D device array, in X's dtype (``out`` may be ``X``).

    ``shift`` is a device array of shape (n_features,) and X's dtype: the subtraction CuPy's
    ``X - shift`` does, as the ``centre_rows`` kernel of ``cuda/init.cu`` (nothing to compile
    on a process's first fit but that module).
    """
    from .checks import THREADS, n_sm
    from .kernels import get_kernel

    out = cupy.empty_like(X) if out is None else out
    n, d = X.shape
    if n * d == 0:
        return out
    blocks = max(1, min(-(-n * d // THREADS), 32 * n_sm(X.device.id)))
    get_kernel("init.cu", "centre_rows", X.dtype)(
        (blocks,), (THREADS,), (X, np.int64(n), np.int32(d), shift, out)
    )
    return out


def memory_budget(memory_budget_bytes: int | None) -> int:
    """Bytes a fit may allocate on the device: the given budget, else half the free memory."""
    if memory_budget_bytes is not None:
        return int(memory_budget_bytes)
    free, _ = cupy.cuda.runtime.memGetInfo()
    return int(0.5 * (free + cupy.get_default_memory_pool().free_bytes()))


#: share of the budget the data may take on the device (the rest: the passes' temporaries,
#: initialisation state, parameters)
RESIDENT_SHARE = 0.75
#: share of the budget each of the two streaming buffers takes
STREAM_SHARE = 0.125


def _moments(blocks: Iterator[Any]) -> tuple[np.ndarray, np.ndarray, float]:
    """Column means and variances (float64, host) and the largest |x| of row blocks.

    One pass of the ``column_stats`` kernel per block (no temporary of the data's size); the
    few column sums are combined on the host.
    """
    from .checks import column_stats

    n, largest = 0, 0.0
    total = total_sq = np.zeros(0)
    for block in blocks:
        s1, s2, big = column_stats(block)
        total, total_sq = (s1, s2) if n == 0 else (total + s1, total_sq + s2)
        largest = max(largest, big)
        n += block.shape[0]
    mean = total / n
    return mean, np.maximum(total_sq / n - mean * mean, 0.0), largest


#: temporaries beside resident data are held to a quarter of the data's size, but at least this
SCRATCH_FLOOR = 8 << 20


def scratch_bytes(data: CupyData, budget: int) -> int:
    """Bytes of temporaries a pass or the initialisation may hold beside the data.

    Resident data: a quarter of their size (at least :data:`SCRATCH_FLOOR`), within the budget,
    so a fit's peak stays near the data's own size. Streamed data: half of what the budget
    leaves beside the two chunk buffers.
    """
    if data.resident:
        return int(
            min(max(budget - data.nbytes, SCRATCH_FLOOR), max(data.nbytes // 4, SCRATCH_FLOOR))
        )
    return int(budget * (1 - 2 * STREAM_SHARE) / 2)


def needs_centring(mean: np.ndarray, variance: np.ndarray) -> bool:
    """Whether the data's mean is too far from the origin for the passes' float32 arithmetic.

    The fused passes expand quadratic forms; with the origin within one standard deviation of
    the mean in every feature they lose at most two bits, so the data are used as they are (no
    copy). Further away they are centred (a copy, or chunk by chunk under a tight budget).
    """
    return bool((np.abs(mean) > np.sqrt(variance)).any())


def prepare(
    X: Any,
    shift: Any,
    covariance_type: str,
    *,
    budget: int,
    chunk_rows: int | None,
    sample_weight: np.ndarray | None = None,
) -> CupyData:
    """Place ``X`` for the passes: on the device when it fits ``budget``, else streamed.

    Parameters
    ----------
    X : numpy.ndarray or cupy.ndarray of shape (n_samples, n_features), float32/float64
    shift : array of shape (n_features,), None, or "auto"
        Subtracted from the data. ``"auto"``: measure the column moments and the largest |x|
        where the data live (the handle's ``variance`` and ``max_abs``) and centre only where
        :func:`needs_centring` says so (the handle's ``shift``).
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    budget : int
        Bytes the fit may allocate on the device (see :func:`memory_budget`).
    chunk_rows : int or None
        Rows per streamed chunk (default: what :data:`STREAM_SHARE` of the budget holds).
    sample_weight : numpy.ndarray of shape (n_samples,), optional
        Validated non-negative weights (float64); held on the device in the data's dtype
        (4 or 8 bytes a row, beside X) and read by every pass (:func:`weight_chunks`).
    """
    from .streaming import HostStream

    dtype = np.dtype(X.dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"X must be float32 or float64, got {dtype}; convert it with astype")
    n_samples, n_features = X.shape
    auto = isinstance(shift, str)
    row_bytes = n_features * dtype.itemsize
    rows = chunk_rows or max(1024, int(STREAM_SHARE * budget) // row_bytes)
    started = time.perf_counter()
    meta: dict[str, Any] = {}

    def decide(blocks: Iterator[Any]) -> np.ndarray:
        """The shift to subtract (zeros: use X as it is)."""
        if not auto:
            return np.zeros(n_features) if shift is None else np.asarray(shift, np.float64)
        mean, var, largest = _moments(blocks)
        meta.update(variance=var, max_abs=largest)
        return mean if needs_centring(mean, var) else np.zeros(n_features)

    def handle(chunks: list[Any], resident: bool, s: np.ndarray, source: Any = None) -> CupyData:
        return CupyData(
            chunks, resident, covariance_type, dtype, n_samples, n_features,
            shift=s, source=source, **meta,
        )  # fmt: skip

    data: CupyData | None = None
    if isinstance(X, cupy.ndarray):
        X = cupy.ascontiguousarray(X)
        s = decide(iter([X]))
        if not s.any():
            data = handle([X], True, s)
        elif X.nbytes <= RESIDENT_SHARE * budget:
            data = handle([centre_rows(X, cupy.asarray(s.astype(dtype)))], True, s)
        else:  # a centred copy would not fit: centre chunk by chunk as the passes read
            source = DeviceCentring(X, s, rows)
            data = handle(source.row_blocks(), False, s, source)
    else:
        X = np.ascontiguousarray(X)
        if X.nbytes <= RESIDENT_SHARE * budget:
            try:  # one copy to the device; moments and centring there (no host pass over X)
                dev = cupy.asarray(X)
                s = decide(iter([dev]))
                if s.any():
                    centre_rows(dev, cupy.asarray(s.astype(dtype)), out=dev)
                data = handle([dev], True, s)
            except cupy.cuda.memory.OutOfMemoryError:
                dev = None
                cupy.get_default_memory_pool().free_all_blocks()
                logger.warning(
                    "GPU out of memory uploading %.1f MB; streaming row chunks instead",
                    X.nbytes / 1e6,
                )
        if data is None:
            stream = HostStream(X, None, rows)
            s = decide(stream.chunks())
            stream.shift = cupy.asarray(s.astype(dtype)) if s.any() else None
            data = handle(stream.host_chunks(), False, s, stream)
            logger.info(
                "data (%.1f MB) exceed the GPU memory budget (%.1f MB): streaming %d chunks of "
                "%d rows (%s host memory)",
                X.nbytes / 1e6,
                budget / 1e6,
                len(stream),
                stream.chunk_rows,
                "pinned" if stream.pinned else "pageable",
            )
    if sample_weight is not None:
        set_weights(data, sample_weight)
    cupy.cuda.get_current_stream().synchronize()
    data.upload_seconds = time.perf_counter() - started
    return data


def set_weights(data: CupyData, sample_weight: np.ndarray) -> None:
    """Upload ``sample_weight`` in the data's dtype; the total is of the values uploaded."""
    host = np.ascontiguousarray(sample_weight, dtype=np.float64)
    typed = host.astype(data.dtype)
    data.weights = cupy.asarray(typed)
    data.total_weight = float(typed.sum(dtype=np.float64))
    data.host_weights = host


def weight_chunks(data: CupyData) -> Iterator[Any]:
    """The weights of each chunk :func:`device_chunks` yields (None for each: unweighted)."""
    row0 = 0
    for block in data.chunks:
        n = block.shape[0]
        yield None if data.weights is None else data.weights[row0 : row0 + n]
        row0 += n


def weighted_chunks(data: CupyData) -> Iterator[tuple[Any, Any]]:
    """``(chunk, its weights or None)`` over the data, as the passes read them."""
    return zip(device_chunks(data), weight_chunks(data), strict=True)


def device_chunks(data: CupyData) -> Iterator[Any]:
    """Yield the data's centred row chunks as device arrays (streamed ones uploaded)."""
    if data.source is not None:
        yield from data.source.chunks()
    else:
        yield from data.chunks


def subsample(data: CupyData, step: int) -> CupyData:
    """Every ``step``-th row of the data, centred alike, resident (seeding of streamed data).

    Device rows are gathered by one 2-D memcpy, host rows uploaded; streamed data are centred
    after (``centre_rows``).
    """
    source = data.source
    if source is None:
        rows = data.chunks[0] if step == 1 else every_nth_row(data.chunks[0], step)
    elif isinstance(source.X, cupy.ndarray):
        rows = every_nth_row(cupy.ascontiguousarray(source.X), step)
    else:
        rows = cupy.asarray(np.ascontiguousarray(source.X[::step]))
    if source is not None and source.shift is not None:
        centre_rows(rows, source.shift, out=rows)
    out = replace(
        data,
        chunks=[rows],
        resident=True,
        n_samples=rows.shape[0],
        source=None,
        weights=None,
        total_weight=None,
        host_weights=None,
        _xtx=None,
        _features=None,
    )
    if data.host_weights is not None:
        set_weights(out, data.host_weights[::step])
    return out


def retype(data: CupyData, covariance_type: str) -> CupyData:
    """The same data (no copy) for passes of another covariance type."""
    if covariance_type == data.covariance_type:
        return data
    return replace(data, covariance_type=covariance_type, _xtx=None, _features=None)


class Scratch:
    """Device buffers reused from pass to pass, one per (name, shape, dtype)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, Any] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: Any, zero: bool = False) -> Any:
        """The buffer ``name`` of this shape and dtype (new buffers zeroed with ``zero``)."""
        key = (name, shape, np.dtype(dtype).str)
        buf = self._buffers.get(key)
        if buf is None:
            alloc = cupy.zeros if zero else cupy.empty
            buf = self._buffers[key] = alloc(shape, dtype=dtype)
        return buf
