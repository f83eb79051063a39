"""Input checks on the device: one pass over the data each, no temporary of the data's size.

:func:`column_stats` (the ``column_stats`` kernel of ``cuda/init.cu``) reads the data once for
the column sums, the sums of squares, the largest |x| and the count of non-finite values.
"""

from __future__ import annotations

import functools
from typing import Any

import cupy
import numpy as np

#: threads per block of ``column_stats`` (``GMM_INIT_NT`` in ``init.cu``)
_THREADS = 256


@functools.cache
def _n_sm(device: int) -> int:
    return int(cupy.cuda.Device(device).attributes["MultiProcessorCount"])


def column_stats(X: Any) -> tuple[Any, Any, float]:
    """Column sums and sums of squares (float64, device) and the largest |x| of a 2-D array.

    The largest |x| is ``inf`` when the array holds NaN or infinity (the sums then cover its
    finite values). One pass over ``X`` and a few bytes per block; deterministic (no atomics).
    """
    from .kernels import get_kernel

    X = cupy.ascontiguousarray(X)
    n, d = X.shape
    blocks = max(-(-d // _THREADS), min(-(-n * d // _THREADS), 4 * _n_sm(X.device.id)), 1)
    partial = cupy.empty((blocks, 2 * d + 2), dtype=cupy.float64)
    get_kernel("init.cu", "column_stats", X.dtype)(
        (blocks,), (_THREADS,), (X, np.int64(n), np.int32(d), partial)
    )
    sums = partial[:, : 2 * d].sum(axis=0)
    largest, bad = cupy.asnumpy(cupy.stack([partial[:, 2 * d].max(), partial[:, 2 * d + 1].sum()]))
    return sums[:d], sums[d:], float("inf") if bad else float(largest)


def max_abs(X: Any) -> float:
    """Largest absolute value of a 2-D CuPy array, ``inf`` when it holds NaN or infinity."""
    return column_stats(X)[2]
