"""Kernel lookup: one memoised :func:`get_kernel` for every ``.cu`` kernel the engine launches.

A kernel is named by its source file, its name and its template arguments. It is served, in
this order, by a cubin built ahead of time (``python -m gmm_core.build_kernels``,
:mod:`gmm_core._prebuilt`: the device's architecture, an unchanged source, no extra options),
or compiled as a module of its own (``gmm_core._cuda_loader``: ``#line`` directives, local
headers pasted in, CuPy's on-disk cache); either way memoised per device. Modules a fit needs
that are not compiled yet compile concurrently (:func:`compile_kernels`): NVRTC releases the GIL
while it compiles (``nvrtcCompileProgram`` runs ``with nogil`` in CuPy's
``cupy_backends/cuda/libs/nvrtc.pyx``), so threads suffice.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import cupy
import numpy as np

from .. import _cuda_loader, _prebuilt


class KernelRef(NamedTuple):
    """A kernel as :func:`get_kernel` finds it: source file and name expression."""

    file: str
    expr: str


def template_arg(value: Any) -> str:
    """C++ spelling of one template argument: ``true``/``false``, an integer, a scalar type."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, str):
        return value
    return _cuda_loader.ctype(value)  # a NumPy dtype (or type)


def kernel_ref(file: str, name: str, *template_args: Any) -> KernelRef:
    """The :class:`KernelRef` of ``name<template_args...>`` in ``cuda/<file>``.

    >>> kernel_ref("em_diag.cu", "diag_mstep", np.dtype("float32"), 16, False)
    KernelRef(file='em_diag.cu', expr='diag_mstep<float, 16, false>')
    >>> kernel_ref("em_diag.cu", "reduce_partials").expr
    'reduce_partials'
    """
    if not template_args:
        return KernelRef(file, name)
    return KernelRef(file, f"{name}<{', '.join(template_arg(a) for a in template_args)}>")


def get_kernel(file: str, name: str, *template_args: Any, options: tuple[str, ...] = ()) -> Any:
    """The compiled kernel ``name<template_args...>`` of ``cuda/<file>`` on the current device.

    Memoised per device; ``options`` (extra compiler options, e.g. ``-D`` defines of a tuning
    variant) compile a module of their own.
    """
    return load_kernel(kernel_ref(file, name, *template_args), options)


def load_kernel(ref: KernelRef, options: tuple[str, ...] = ()) -> Any:
    """The compiled kernel of ``ref`` on the current device (memoised per device)."""
    return _load_memoized()(ref, options)


#: (device, ref, options) of every kernel loaded in this process
_loaded: set[tuple[int, KernelRef, tuple[str, ...]]] = set()


def _load(ref: KernelRef, options: tuple[str, ...]) -> Any:
    kern = None if options else _prebuilt.load(ref.file, ref.expr)
    if kern is None:  # not prebuilt (or stale, or off): NVRTC
        kern = _cuda_loader.module(ref.file, (ref.expr,), options).get_function(ref.expr)
    _loaded.add((cupy.cuda.runtime.getDevice(), ref, options))
    return kern


@functools.cache
def _load_memoized() -> Any:
    return cupy.memoize(for_each_device=True)(_load)


def compile_kernels(refs: Iterable[KernelRef], max_workers: int | None = None) -> list[str]:
    """Compile (or load prebuilt, or from the disk cache) the modules of ``refs`` on this device.

    Kernels this process loaded before are skipped at once; prebuilt ones are loaded in the
    calling thread (a module load, no compile) while the others compile concurrently in
    threads (NVRTC releases the GIL); each ends in :func:`get_kernel`'s memo, so the launches
    that follow find them. A module that failed in a thread is compiled again in the calling
    thread, whose error is raised. Returns the name expressions, in the order given.
    """
    refs = list(dict.fromkeys(refs))
    device = cupy.cuda.Device().id
    todo = [ref for ref in refs if (device, ref, ()) not in _loaded]
    if not todo:
        return [ref.expr for ref in refs]
    _load_memoized()  # the memo exists before any thread looks for it
    _cuda_loader._memoized_compile()
    prebuilt = [ref for ref in todo if _prebuilt.available(ref.file, ref.expr)]
    todo = [ref for ref in todo if ref not in prebuilt]
    workers = max_workers or min(len(todo), os.cpu_count() or 1, 16)

    def one(ref: KernelRef) -> str:
        # the current device is per thread, and a new thread has no CUDA context until a
        # runtime call makes one (module loading is a driver call): cudaFree(0) does
        with cupy.cuda.Device(device):
            cupy.cuda.runtime.free(0)
            load_kernel(ref)
        return ref.expr

    if workers > 1 and len(todo) > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="gmm-nvrtc") as pool:
            futures = {ref: pool.submit(one, ref) for ref in todo}
            for ref in prebuilt:  # while the threads compile
                load_kernel(ref)
        failed = [ref for ref, future in futures.items() if future.exception() is not None]
    else:
        failed = prebuilt + todo
    for ref in failed:  # sequentially, here: the error (if any) is the launch's own
        load_kernel(ref)
    return [ref.expr for ref in refs]


# -- per-kernel attributes, set once (launches may be captured in a CUDA graph) ----------------
_carveout_set: set[int] = set()
_dynamic_smem: dict[int, int] = {}
_attributes_lock = threading.Lock()


def max_carveout(kern: Any) -> Any:
    """Prefer all of L1 as shared memory (once per kernel); returns ``kern``.

    One carveout for every kernel of an iteration: the SMs need not reconfigure L1/shared memory
    between the pass and the M-step.
    """
    if id(kern) in _carveout_set:
        return kern
    try:
        kern.preferred_shared_memory_carveout = 100
    except Exception:  # pragma: no cover - attribute missing in old CuPy
        pass
    with _attributes_lock:
        _carveout_set.add(id(kern))
    return kern


def allow_dynamic_smem(kern: Any, nbytes: int) -> Any:
    """Let ``kern`` take ``nbytes`` of dynamic shared memory beyond the default 48 KiB.

    Raised once per kernel and size, not at every launch; returns ``kern``.
    """
    if nbytes > 48 * 1024 and _dynamic_smem.get(id(kern), 0) < nbytes:
        kern.max_dynamic_shared_size_bytes = nbytes
        with _attributes_lock:
            _dynamic_smem[id(kern)] = nbytes
    return kern
