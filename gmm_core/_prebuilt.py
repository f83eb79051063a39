"""Kernels compiled ahead of time: find one in the prebuilt index and load it, else say why not.

``python -m gmm_core.build_kernels`` (:mod:`gmm_core._build_kernels`) writes, per architecture,
``gmm_core/cuda/prebuilt/sm_XX/``: lzma-compressed cubins (``<source>.<group>.cubin.xz``, the
kernels of one source sharing their leading template arguments) and ``index.json``, which maps
each name expression to its cubin and lowered (mangled) symbol and records the
:func:`gmm_core._cuda_loader.source_digest` of every source it was built from.

:func:`load` serves a kernel from there when the device's architecture has a folder (``sm_86``,
else ``sm_80``, for compute capability 8.6: SASS runs on later minor versions of its major) and
the source is unchanged since the build; anything else (no folder, an index of another format,
a changed source or compiler option, a missing or corrupt cubin, a driver that refuses it)
returns ``None`` with a debug log, and the caller compiles with NVRTC as before. A cubin is
decompressed once into ``<CuPy's kernel cache>/gmm_core_prebuilt/<sha256>.cubin`` and loaded
once per device (``cupy.memoize(for_each_device=True)``) with ``cupy.RawModule(path=...)``.
Every use refreshes the cached file's modification time; when a cubin is decompressed (a new
or changed prebuilt tree), :func:`prune` (once per process) removes cached cubins that the tree
read now does not name and that no process has used for :data:`PRUNE_AFTER_S` (another
environment's cubins in use stay), and leftovers of decompressions killed midway.

``GMM_CORE_PREBUILT_KERNELS=0`` turns prebuilt kernels off (measuring the NVRTC path);
``GMM_CORE_PREBUILT_DIR`` reads another prebuilt tree.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import lzma
import os
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from . import _cuda_loader

logger = logging.getLogger("gmm_core")

#: the prebuilt tree shipped in the package (git-ignored; built by ``make kernels``)
PREBUILT_DIR = _cuda_loader.CUDA_DIR / "prebuilt"
#: ``0`` (or false/no/off) turns prebuilt kernels off: every kernel compiles with NVRTC
ENABLE_ENV = "GMM_CORE_PREBUILT_KERNELS"
#: a prebuilt tree to read instead of :data:`PREBUILT_DIR`
DIR_ENV = "GMM_CORE_PREBUILT_DIR"
#: version of ``index.json``'s layout; an index of another version is ignored
INDEX_FORMAT = 1
INDEX_NAME = "index.json"

#: seconds spent decompressing and loading prebuilt modules in this process (benchmarks)
load_seconds = 0.0
#: (device, file, expr) of every kernel served from a prebuilt cubin in this process
served: set[tuple[int, str, str]] = set()
_lock = threading.Lock()
_said: set[tuple[str, ...]] = set()


class Entry(NamedTuple):
    """Where a prebuilt kernel lives: its compressed cubin, symbol and the cubin's SHA-256."""

    cubin: Path
    symbol: str
    sha256: str


def enabled() -> bool:
    """Whether prebuilt kernels are used (``GMM_CORE_PREBUILT_KERNELS``, on unless ``0``)."""
    return os.environ.get(ENABLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def prebuilt_dir() -> Path:
    """The prebuilt tree read: ``GMM_CORE_PREBUILT_DIR``, else the package's."""
    return Path(os.environ.get(DIR_ENV) or PREBUILT_DIR)


def arch_candidates(compute_capability: int | str) -> list[str]:
    """Architecture folders whose SASS runs on a device, best first.

    >>> arch_candidates(86)
    ['sm_86', 'sm_80']
    >>> arch_candidates("90")
    ['sm_90']
    """
    cc = int(compute_capability)
    return list(dict.fromkeys((f"sm_{cc}", f"sm_{cc // 10}0")))


def _say_once(*key: str, message: str) -> None:
    if key not in _said:
        _said.add(key)
        logger.debug("gmm_core prebuilt kernels: %s", message)


@functools.cache
def _read_index(path: Path, mtime_ns: int) -> dict[str, Any] | str:
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return f"{path} is unreadable ({type(exc).__name__}: {exc})"
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        return f"{path} is not an index of format {INDEX_FORMAT}"
    if not isinstance(index.get("sources"), dict) or not isinstance(index.get("kernels"), dict):
        return f"{path} lacks its sources or kernels"
    return index


def read_index(arch: str, directory: Path | None = None) -> dict[str, Any] | str:
    """The index of ``<directory>/<arch>``, or why there is none usable (a string)."""
    path = (directory or prebuilt_dir()) / arch / INDEX_NAME
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError:
        return f"no {path}"
    return _read_index(path, mtime_ns)


def stale_reason(file: str, arch: str, directory: Path | None = None) -> str | None:
    """Why the kernels of ``cuda/<file>`` prebuilt for ``arch`` cannot be used (None: they can).

    No index, an unreadable one, or a source or compiler option changed since the build (the
    recorded :func:`~gmm_core._cuda_loader.source_digest` differs).
    """
    index = read_index(arch, directory)
    if isinstance(index, str):
        return index
    built = index["sources"].get(file)
    if built is None:
        return f"{arch}: {file} was not built"
    if built != _cuda_loader.source_digest(file):
        return f"{arch}: {file} changed since the build (source or compiler options)"
    return None


def lookup(file: str, expr: str, arch: str, directory: Path | None = None) -> Entry | None:
    """The prebuilt ``expr`` of ``cuda/<file>`` for ``arch``, or None (stale, or not built)."""
    reason = stale_reason(file, arch, directory)
    if reason is not None:
        _say_once(str(directory), arch, file, message=f"{reason}; NVRTC compiles its kernels")
        return None
    index = read_index(arch, directory)
    assert isinstance(index, dict)
    entry = index["kernels"].get(file, {}).get(expr)
    if entry is None:
        return None
    sha256 = index["cubins"][entry["cubin"]]["sha256"]
    return Entry((directory or prebuilt_dir()) / arch / entry["cubin"], entry["symbol"], sha256)


def _device_lookup(file: str, expr: str) -> Entry | None:
    import cupy

    for arch in arch_candidates(cupy.cuda.Device().compute_capability):
        entry = lookup(file, expr, arch)
        if entry is not None:
            return entry
    return None


def available(file: str, expr: str) -> bool:
    """Whether :func:`load` would find ``expr`` prebuilt for the current device (no loading)."""
    if not enabled():
        return False
    try:
        return _device_lookup(file, expr) is not None
    except Exception:  # no device, a broken index: the NVRTC path decides
        return False


def cache_dir() -> Path:
    """Where cubins are decompressed: ``gmm_core_prebuilt`` in CuPy's kernel cache."""
    from ._warmup import cache_dir as cupy_cache_dir

    return Path(cupy_cache_dir()) / "gmm_core_prebuilt"


#: bytes read (or decompressed) at a time: a cubin is never whole in host memory (a group of the
#: prebuilt set holds tens of MB of cubin, loaded while a fit of CuPy data runs)
STREAM_BYTES = 1 << 20
#: LZMA dictionary of a packed cubin, which its decompressor allocates whole: xz's preset 9 would
#: take 64 MiB of host memory to unpack even a small cubin
DICT_BYTES = 1 << 20


#: seconds a decompressed cubin the current prebuilt tree does not name stays unused before
#: :func:`prune` removes it (its modification time: every use refreshes it)
PRUNE_AFTER_S = 30 * 86_400
#: seconds after which a partial decompression (``<sha256>.cubin.<pid>.<thread>``, left by a
#: process killed while writing it) is removed
PARTIAL_AFTER_S = 86_400


def _named_sha256s() -> set[str]:
    """SHA-256 of every cubin the indexes of the prebuilt tree read now name (all archs)."""
    named: set[str] = set()
    try:
        archs = [p.name for p in prebuilt_dir().iterdir() if p.is_dir()]
    except OSError:
        return named
    for arch in archs:
        index = read_index(arch)
        if isinstance(index, dict):
            cubins = index.get("cubins")
            if isinstance(cubins, dict):
                named.update(c.get("sha256", "") for c in cubins.values() if isinstance(c, dict))
    return named


def prune(now: float | None = None) -> list[Path]:
    """Remove stale files from :func:`cache_dir`; returns what was removed.

    Stale: a ``<sha256>.cubin`` the prebuilt tree read now does not name, unused (unmodified)
    for :data:`PRUNE_AFTER_S`; a partial decompression older than :data:`PARTIAL_AFTER_S`.
    Best-effort: a file that cannot be removed (another process, permissions) is left.
    """
    now = time.time() if now is None else now
    named = _named_sha256s()
    removed: list[Path] = []
    try:
        files = list(cache_dir().iterdir())
    except OSError:
        return removed
    for path in files:
        stem, dot, rest = path.name.partition(".cubin")
        if not dot or len(stem) != 64:
            continue  # not ours
        limit = PRUNE_AFTER_S if rest == "" else PARTIAL_AFTER_S
        if rest == "" and stem in named:
            continue
        try:
            if now - path.stat().st_mtime > limit:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    if removed:
        logger.debug("gmm_core prebuilt kernels: removed %d stale cached cubins", len(removed))
    return removed


def pack(cubin: bytes) -> bytes:
    """``cubin`` xz-compressed (preset 9) with a dictionary of at most :data:`DICT_BYTES`."""
    dict_size = min(DICT_BYTES, max(4096, len(cubin)))
    return lzma.compress(
        cubin, filters=[{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": dict_size}]
    )


def _file_sha256(path: Path) -> str | None:
    """SHA-256 of a file read in :data:`STREAM_BYTES` pieces; None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while piece := f.read(STREAM_BYTES):
                digest.update(piece)
    except OSError:
        return None
    return digest.hexdigest()


def unpacked(entry: Entry) -> Path:
    """The cubin of ``entry`` decompressed (once) into :func:`cache_dir`, checked by SHA-256.

    Read, decompressed and hashed in :data:`STREAM_BYTES` pieces.
    """
    target = cache_dir() / f"{entry.sha256}.cubin"
    if _file_sha256(target) == entry.sha256:
        try:
            os.utime(target)  # in use: not for prune()
        except OSError:
            pass
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}")
    digest = hashlib.sha256()
    decompressor = lzma.LZMADecompressor()
    try:
        with entry.cubin.open("rb") as src, partial.open("wb") as out:
            while not decompressor.eof:
                # output the decompressor holds back comes with no new input
                piece = src.read(STREAM_BYTES) if decompressor.needs_input else b""
                if not piece and decompressor.needs_input:
                    raise lzma.LZMAError(f"{entry.cubin} ends before its compressed stream")
                data = decompressor.decompress(piece, max_length=STREAM_BYTES)
                digest.update(data)
                out.write(data)
        if digest.hexdigest() != entry.sha256:
            raise ValueError(f"{entry.cubin} does not hold the cubin its index names (SHA-256)")
        os.replace(partial, target)  # atomic: other processes see the whole file or none
    finally:
        partial.unlink(missing_ok=True)
    _prune_once()  # a new cubin: the tree changed, older ones may be stale
    return target


@functools.cache
def _prune_once() -> None:
    """:func:`prune`, once per process (a first fit decompresses tens of cubins)."""
    prune()


def _module(cubin: str, sha256: str) -> Any:
    """The loaded module of one prebuilt cubin on the current device, or None (it failed)."""
    import cupy

    global load_seconds
    started = time.perf_counter()
    try:
        module = cupy.RawModule(path=str(unpacked(Entry(Path(cubin), "", sha256))))
        module.module  # noqa: B018 - loads it now: a refusal shows here, once
    except Exception as exc:
        logger.debug("gmm_core prebuilt kernels: %s failed to load (%s); NVRTC serves", cubin, exc)
        return None
    finally:
        with _lock:
            load_seconds += time.perf_counter() - started
    return module


@functools.cache
def _module_memoized() -> Any:
    import cupy

    memo = cupy.memoize(for_each_device=True)(_module)
    loading = threading.Lock()

    def module(entry: Entry) -> Any:
        with loading:  # one decompression and load per cubin when threads ask at once
            return memo(str(entry.cubin), entry.sha256)

    return module


def load(file: str, expr: str) -> Any:
    """The prebuilt kernel ``expr`` of ``cuda/<file>`` on the current device, or None.

    None where prebuilt kernels are off, the device's architecture has none, the source changed
    since the build, ``expr`` was not built, or the cubin does not load (debug log): the caller
    compiles with NVRTC.
    """
    if not enabled():
        return None
    import cupy

    entry = _device_lookup(file, expr)
    if entry is None:
        return None
    module = _module_memoized()(entry)
    if module is None:
        return None
    try:
        kern = module.get_function(entry.symbol)
    except Exception as exc:
        logger.debug("gmm_core prebuilt kernels: %s not in %s (%s)", expr, entry.cubin, exc)
        return None
    with _lock:
        served.add((cupy.cuda.runtime.getDevice(), file, expr))
    return kern
