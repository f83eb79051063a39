"""Input checks on the device: one pass over the data each, no temporary of the data's size.

:func:`column_stats` (the ``column_stats`` kernel of ``cuda/init.cu``) reads the data once for
the column sums, the sums of squares, the largest |x| and the count of non-finite values.
"""

from __future__ import annotations

import functools
from typing import Any

import cupy
import numpy as np

#: threads per block of the ``init.cu`` kernels (``GMM_INIT_NT``)
THREADS = 256


@functools.cache
def n_sm(device: int) -> int:
    """Streaming multiprocessors of CUDA device ``device``."""
    return int(cupy.cuda.Device(device).attributes["MultiProcessorCount"])


def column_stats(X: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """Column sums and sums of squares (float64, host) and the largest |x| of a 2-D CuPy array.

    The largest |x| is ``inf`` when the array holds NaN or infinity (the sums then cover its
    finite values). One pass over ``X``; the kernel's block partials (``2 * n_features + 2``
    values per block, at most ``4 * n_sm`` blocks) come to the host and are summed there, in
    block order: deterministic (no atomics), and no CuPy reduction to compile.
    """
    from .kernels import get_kernel

    X = cupy.ascontiguousarray(X)
    n, d = X.shape
    blocks = max(-(-d // THREADS), min(-(-n * d // THREADS), 4 * n_sm(X.device.id)), 1)
    partial = cupy.empty((blocks, 2 * d + 2), dtype=cupy.float64)
    get_kernel("init.cu", "column_stats", X.dtype)(
        (blocks,), (THREADS,), (X, np.int64(n), np.int32(d), partial)
    )
    host = partial.get()
    sums = host[:, : 2 * d].sum(axis=0)
    largest, bad = host[:, 2 * d].max(), host[:, 2 * d + 1].sum()
    return sums[:d], sums[d:], float("inf") if bad else float(largest)


def max_abs(X: Any) -> float:
    """Largest absolute value of a 2-D CuPy array, ``inf`` when it holds NaN or infinity."""
    return column_stats(X)[2]
