"""Device memory of a fit: the peak it allocates, and giving the pool's cache back after it.

:class:`PeakMemoryHook` is a CuPy memory hook (``with hook:`` on the calling thread) that adds up
every block taken from the memory pool and subtracts every block given back, so its ``peak`` is
the high-water mark of what the code inside the block allocated, whatever the process held
before (the data a user already put on the device are not counted). Tests use the same hook to
check that a memory budget holds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import cupy
from cupy.cuda import memory_hook

from .._engine import MemoryReport

#: keep the memory pool's cached blocks after a fit (they are given back to the device otherwise)
KEEP_CACHE_ENV = "GMM_CORE_KEEP_DEVICE_CACHE"


class PeakMemoryHook(memory_hook.MemoryHook):
    """Running total and high-water mark of pool blocks held by the code inside ``with``."""

    name = "gmm_core_peak_memory"

    def __init__(self) -> None:
        # CuPy keys the hooks of a thread by name: one name per instance lets them nest
        self.name = f"gmm_core_peak_memory_{id(self):x}"
        self.current = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def malloc_postprocess(self, **kwargs: Any) -> None:
        """Count a block taken from the pool."""
        size = int(kwargs["mem_size"])
        self._sizes[int(kwargs["mem_ptr"])] = size
        self.current += size
        self.peak = max(self.peak, self.current)

    def free_postprocess(self, **kwargs: Any) -> None:
        """Uncount a block given back to the pool."""
        size = self._sizes.pop(int(kwargs["mem_ptr"]), None)
        if size is not None:
            self.current -= size


def keep_cache() -> bool:
    """Whether ``GMM_CORE_KEEP_DEVICE_CACHE`` asks to keep the pool's cached blocks."""
    return os.environ.get(KEEP_CACHE_ENV, "0").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def track_memory() -> Iterator[MemoryReport]:
    """Report the peak bytes allocated from the pool inside the block."""
    report = MemoryReport()
    hook = PeakMemoryHook()
    try:
        with hook:
            yield report
    finally:
        report.peak_bytes = hook.peak


def release_memory() -> None:
    """Give the memory pool's cached (unused) blocks back to the device.

    The pool keeps blocks a fit freed, for reuse; unless ``GMM_CORE_KEEP_DEVICE_CACHE=1`` they go
    back to the device once a fit (or a scoring call) is done, so the process then holds only
    what is still referenced: a fitted model's parameters are NumPy arrays, nothing on the device.
    """
    if keep_cache():
        return
    cupy.cuda.get_current_stream().synchronize()
    cupy.get_default_memory_pool().free_all_blocks()
