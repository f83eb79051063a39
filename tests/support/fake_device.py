"""A stand-in for ``cupy.cuda.Device`` where CPU tests exercise code that switches devices."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class FakeDevice:
    """Device 0: a context manager that does nothing (``with cupy.cuda.Device(i): ...``)."""

    id = 0

    def __init__(self, *args: object) -> None:
        pass

    def __enter__(self) -> FakeDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def fake_kernel_loading(monkeypatch: Any, kernels: Any, load: Any) -> None:
    """Run ``gmm_core._cupy.kernels.compile_kernels`` without a GPU: a fake ``cupy.cuda`` (device
    0, no-op context), ``load`` in place of loading a kernel, and no memos."""
    cuda = SimpleNamespace(Device=FakeDevice, runtime=SimpleNamespace(free=lambda ptr: None))
    monkeypatch.setattr(kernels, "cupy", SimpleNamespace(cuda=cuda))
    monkeypatch.setattr(kernels, "load_kernel", load)
    monkeypatch.setattr(kernels, "_load_memoized", lambda: None)
    monkeypatch.setattr(kernels._cuda_loader, "_memoized_compile", lambda: None)
