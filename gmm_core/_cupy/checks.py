"""Input checks on the device: one reduction each, no temporary of the data's size."""

from __future__ import annotations

from typing import Any

import cupy


@cupy.memoize(for_each_device=True)
def _max_abs_kernel() -> Any:
    # a non-finite value maps to +inf (the bits 0x7ff0000000000000, written in decimal: CuPy
    # substitutes parameter names inside literals), so one reduction answers "finite?" and
    # "how large?"
    return cupy.ReductionKernel(
        "T v",
        "float64 y",
        "isfinite((double)v) ? fabs((double)v) : __longlong_as_double(9218868437227405312LL)",
        "a > b ? a : b",
        "y = a",
        "0.0",
        "gmm_core_max_abs",
    )


def max_abs(X: Any) -> float:
    """Largest absolute value of a CuPy array, ``inf`` when it holds NaN or infinity."""
    return float(_max_abs_kernel()(X))
