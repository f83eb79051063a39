"""Data residency: centred data on the device when they fit the memory budget, else host chunks."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cupy
import numpy as np

logger = logging.getLogger("gmm_core")


@dataclass
class CupyData:
    """Centred data on the device (or host chunks to stream), as :func:`prepare` made.

    ``chunks`` holds CuPy arrays when ``resident`` and NumPy arrays otherwise; each is a
    C-contiguous block of rows of ``X - shift`` in the fit dtype.
    """

    chunks: list[Any]
    resident: bool
    covariance_type: str
    dtype: np.dtype
    n_samples: int
    n_features: int
    upload_seconds: float = 0.0
    _xtx: Any = field(default=None, repr=False)
    _features: Any = field(default=None, repr=False)

    @property
    def X(self) -> Any:
        """The whole centred data when resident in one piece (tests, predict paths)."""
        if self.resident and len(self.chunks) == 1:
            return self.chunks[0]
        raise AttributeError("data are chunked; iterate over CupyEngine.device_chunks()")


def memory_budget(memory_budget_bytes: int | None) -> int:
    """Largest data size (bytes) kept on the device: the given one, else half the free memory."""
    if memory_budget_bytes is not None:
        return int(memory_budget_bytes)
    free, _ = cupy.cuda.runtime.memGetInfo()
    return int(0.5 * (free + cupy.get_default_memory_pool().free_bytes()))


def prepare(
    X: Any, shift: Any, covariance_type: str, *, budget: int, chunk_rows: int | None
) -> CupyData:
    """Centre ``X`` and keep it on the device when it fits ``budget`` bytes, else chunk it.

    Parameters
    ----------
    X : numpy.ndarray or cupy.ndarray of shape (n_samples, n_features), float32/float64
    shift : array of shape (n_features,) or None
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    budget : int
        Largest data size (bytes) uploaded whole (see :func:`memory_budget`).
    chunk_rows : int or None
        Rows per streamed chunk (default: a quarter of the budget's worth).
    """
    dtype = np.dtype(X.dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"X must be float32 or float64, got {dtype}; convert it with astype")
    n_samples, n_features = X.shape
    started = time.perf_counter()
    if isinstance(X, cupy.ndarray):
        Xc = X - cupy.asarray(shift, dtype=dtype) if shift is not None else X
        data = CupyData(
            [cupy.ascontiguousarray(Xc)], True, covariance_type, dtype, n_samples, n_features
        )
    else:
        X = np.ascontiguousarray(X)
        data = None
        if X.nbytes <= budget:
            try:  # upload as is, centre on the device (no host copy of the data)
                dev = cupy.asarray(X)
                if shift is not None:
                    dev -= cupy.asarray(shift, dtype=dtype)
                data = CupyData([dev], True, covariance_type, dtype, n_samples, n_features)
            except cupy.cuda.memory.OutOfMemoryError:
                dev = None
                cupy.get_default_memory_pool().free_all_blocks()
                logger.warning(
                    "GPU out of memory uploading %.1f MB; streaming row chunks instead",
                    X.nbytes / 1e6,
                )
        if data is None:
            host = X - np.asarray(shift, dtype=dtype) if shift is not None else X
            host = np.ascontiguousarray(host)
            rows = chunk_rows or max(1024, budget // max(1, 4 * n_features * dtype.itemsize))
            chunks = [host[i : i + rows] for i in range(0, n_samples, rows)]
            data = CupyData(chunks, False, covariance_type, dtype, n_samples, n_features)
            logger.info(
                "data (%.1f MB) exceed the GPU memory budget (%.1f MB): streaming %d chunks",
                host.nbytes / 1e6,
                budget / 1e6,
                len(chunks),
            )
    cupy.cuda.get_current_stream().synchronize()
    assert data is not None  # every branch above sets it
    data.upload_seconds = time.perf_counter() - started
    return data


def device_chunks(data: CupyData) -> Iterator[Any]:
    """Yield the data's row chunks as device arrays (uploading streamed ones)."""
    for chunk in data.chunks:
        yield chunk if data.resident else cupy.asarray(chunk)


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
