"""NVRTC through ``ctypes``: compile a CUDA source to a cubin and name its kernels' symbols.

The ahead-of-time build (:mod:`gmm_core._build_kernels`) compiles what CuPy's ``RawModule``
compiles at run time, with the same library, without CuPy or a GPU: ``nvrtcCompileProgram`` with
``-arch=sm_XX`` gives SASS (``nvrtcGetCUBIN``), and ``nvrtcGetLoweredName`` the mangled symbol of
each name expression (``diag_pass_tc<16, 2, false, 256>`` ->
``_Z12diag_pass_tcILi16ELi2ELb0ELi256ELb1EEv...``), default template arguments included.
``ctypes`` releases the GIL during the calls, so programs compile concurrently in threads.

The library is found as CuPy finds it (``cuda.pathfinder``: the ``nvidia-cuda-nvrtc`` wheel,
conda, ``CUDA_HOME``/``CUDA_PATH``, the system), then in ``/usr/local/cuda/lib64``;
``GMM_CORE_NVRTC`` names a ``libnvrtc.so`` to use instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: environment variable naming the NVRTC library to load (a path or a soname)
LIBRARY_ENV = "GMM_CORE_NVRTC"
_SONAMES = ("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so")
_TOOLKIT_DIRS = ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib")


class NvrtcError(RuntimeError):
    """NVRTC is missing, or a program did not compile (the message holds the compiler log)."""


@dataclass(frozen=True)
class Compiled:
    """A compiled program: the cubin and the symbol of each name expression."""

    cubin: bytes
    lowered_names: dict[str, str]
    log: str


def _candidates() -> list[str]:
    if os.environ.get(LIBRARY_ENV):
        return [os.environ[LIBRARY_ENV]]
    found: list[str] = []
    try:  # what CuPy loads (cupy._environment uses the same finder)
        from cuda.pathfinder import load_nvidia_dynamic_lib

        found.append(load_nvidia_dynamic_lib("nvrtc").abs_path)
    except Exception:  # not installed, or it found nothing
        pass
    for directory in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if directory:
            found += [str(Path(directory) / "lib64" / name) for name in _SONAMES]
    found += [str(Path(d) / name) for d in _TOOLKIT_DIRS for name in _SONAMES]
    found += list(_SONAMES)
    library = ctypes.util.find_library("nvrtc")
    if library:
        found.append(library)
    return found


@functools.cache
def library() -> ctypes.CDLL:
    """The NVRTC shared library (loaded once); :class:`NvrtcError` where none is found."""
    tried = []
    for candidate in dict.fromkeys(_candidates()):
        try:
            lib = ctypes.CDLL(candidate)
        except OSError as exc:
            tried.append(f"{candidate}: {exc}")
            continue
        _declare(lib)
        return lib
    raise NvrtcError(
        "NVRTC (libnvrtc.so) was not found; install the CUDA toolkit's NVRTC or the "
        f"nvidia-cuda-nvrtc wheel, or set {LIBRARY_ENV} to the library's path "
        f"(tried: {'; '.join(tried) or 'nothing'})"
    )


def unavailable_reason() -> str | None:
    """Why NVRTC cannot be used here (``None`` when it can)."""
    try:
        library()
    except NvrtcError as exc:
        return str(exc)
    return None


def _declare(lib: ctypes.CDLL) -> None:
    c_prog = ctypes.c_void_p
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
    signatures: dict[str, list[type]] = {
        "nvrtcVersion": [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)],
        "nvrtcCreateProgram": [
            ctypes.POINTER(c_prog),
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ],
        "nvrtcDestroyProgram": [ctypes.POINTER(c_prog)],
        "nvrtcAddNameExpression": [c_prog, ctypes.c_char_p],
        "nvrtcCompileProgram": [c_prog, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
        "nvrtcGetProgramLogSize": [c_prog, ctypes.POINTER(ctypes.c_size_t)],
        "nvrtcGetProgramLog": [c_prog, ctypes.c_char_p],
        "nvrtcGetCUBINSize": [c_prog, ctypes.POINTER(ctypes.c_size_t)],
        "nvrtcGetCUBIN": [c_prog, ctypes.c_char_p],
        "nvrtcGetLoweredName": [c_prog, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)],
    }
    for name, argtypes in signatures.items():
        function = getattr(lib, name)
        function.restype = ctypes.c_int
        function.argtypes = argtypes


def _check(result: int, what: str, log: str = "") -> None:
    if result != 0:
        message = library().nvrtcGetErrorString(result).decode()
        raise NvrtcError(f"{what}: {message}" + (f"\n{log}" if log else ""))


def version() -> tuple[int, int]:
    """(major, minor) of the NVRTC library, e.g. ``(13, 0)``."""
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(library().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def compile_cubin(
    source: str, name: str, name_expressions: Sequence[str], options: Sequence[str]
) -> Compiled:
    """Compile ``source`` with ``options`` (which must name a real ``-arch=sm_XX``).

    Parameters
    ----------
    source : str
        The CUDA C++ program (no ``#include`` of files outside it).
    name : str
        The program's name in compiler messages.
    name_expressions : sequence of str
        Kernels to instantiate, e.g. ``"diag_mstep<float, 16, false>"``.
    options : sequence of str
        NVRTC options, e.g. ``("-std=c++17", "-arch=sm_90")``.

    Returns
    -------
    Compiled
        The cubin (bytes), the lowered (mangled) name of each expression, the compiler log.

    Raises
    ------
    NvrtcError
        NVRTC is missing, or the program does not compile (the message holds the log).
    """
    lib = library()
    prog = ctypes.c_void_p()
    _check(
        lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
        f"nvrtcCreateProgram({name})",
    )
    try:
        for expr in name_expressions:
            _check(lib.nvrtcAddNameExpression(prog, expr.encode()), f"name expression {expr!r}")
        argv = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        result = lib.nvrtcCompileProgram(prog, len(options), argv)
        size = ctypes.c_size_t()
        _check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        buffer = ctypes.create_string_buffer(size.value)
        _check(lib.nvrtcGetProgramLog(prog, buffer), "nvrtcGetProgramLog")
        log = buffer.value.decode(errors="replace")
        _check(result, f"compiling {name} ({' '.join(options)})", log)
        _check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
        if size.value == 0:
            raise NvrtcError(f"{name}: no cubin (options {list(options)} name no real -arch=sm_XX)")
        cubin = ctypes.create_string_buffer(size.value)
        _check(lib.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        lowered: dict[str, str] = {}
        for expr in name_expressions:
            symbol = ctypes.c_char_p()
            _check(lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(symbol)), expr)
            assert symbol.value is not None
            lowered[expr] = symbol.value.decode()
        return Compiled(cubin.raw, lowered, log)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
