"""Whether a CUDA GPU is usable here (no import of the engines that need one)."""

from __future__ import annotations

import functools


@functools.cache
def cupy_unavailable_reason() -> str | None:
    """Why the CuPy engine cannot run here (``None`` when it can)."""
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - depends on the install
        return f"CuPy is not installed ({exc}); install the 'gpu' extra: pip install 'emflow[gpu]'"
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, missing driver library, ...
        return f"no usable CUDA GPU ({type(exc).__name__}: {exc})"
    if n_devices == 0:
        return "no CUDA GPU is visible (cupy.cuda.runtime.getDeviceCount() == 0)"
    try:
        from . import _cupy  # noqa: F401
    except ImportError as exc:
        return f"the CuPy engine failed to import ({exc})"
    return None
