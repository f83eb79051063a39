"""A stand-in for ``cupy.cuda.Device`` where CPU tests exercise code that switches devices."""

from __future__ import annotations


class FakeDevice:
    """Device 0: a context manager that does nothing (``with cupy.cuda.Device(i): ...``)."""

    id = 0

    def __init__(self, *args: object) -> None:
        pass

    def __enter__(self) -> FakeDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        return None
