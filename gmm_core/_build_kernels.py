"""Build gmm_core's CUDA kernels ahead of time, so that a first fit loads them instead of compiling.

For each architecture (``sm_80``: compute capability 8.x; ``sm_90``: 9.x) the CuPy engine says
which kernels fits of a grid of shapes launch (:func:`gmm_core._warmup.kernels_for_shapes`, from
:meth:`gmm_core._cupy.CupyEngine.kernel_refs` on the launch settings of that architecture's
GPUs, no GPU needed); NVRTC (:mod:`gmm_core._nvrtc`) compiles them from the text and options
CuPy's ``RawModule`` would compile at run time, one program per source file and group of
kernels sharing their leading template arguments (``em_diag.float-16``: every float32 kernel of
width 16), in parallel threads. Each cubin is checked to hold every symbol its index names,
compressed with lzma (cubins of unrolled kernels shrink about tenfold) and written with
``index.json`` into ``gmm_core/cuda/prebuilt/sm_XX/``; :mod:`gmm_core._prebuilt` reads them.

The grid (:data:`FEATURES`, :data:`MAX_COMPONENTS`, :data:`N_INITS`, both dtypes, k-means
initialisation, which lists the other initialisations' kernels too) covers the fused diag and
spherical kernels up to 32 features, the full-covariance kernels (the fused pass up to 32
features, its constants and M-step up to 48) and the seeding and input-check kernels. Other
kernels (``reduce_exchange_mstep`` of several GPUs, tuning variants compiled with ``-D``
options) compile with NVRTC at first use, as do all kernels on other architectures.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import shutil
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _cuda_loader, _nvrtc, _prebuilt
from ._warmup import DEFAULT_SHAPES, Shape, kernels_for_shapes, parse_shape

if TYPE_CHECKING:
    from ._cupy import KernelRef, LaunchConfig

#: the GPUs whose launch plans choose the kernels built for each architecture: (what, SMs,
#: shared memory one block may opt into). The number of SMs decides where a pass reduces its
#: own partials; 99 KiB of shared memory (sm_86/89) picks the 128-thread tensor-core pass
DEVICES: dict[str, tuple[tuple[str, int, int], ...]] = {
    "sm_80": (
        ("A100", 108, 166_912),
        ("A10 / RTX 3090 (sm_86)", 84, 101_376),
        ("L40S (sm_89)", 142, 101_376),
    ),
    "sm_90": (
        ("H100 SXM / H200", 132, 232_448),
        ("H100 PCIe", 114, 232_448),
    ),
}
ARCHES = tuple(DEVICES)
#: most features per covariance type of the fits built for (diag/spherical: the fused passes'
#: limit; full: the constants and M-step kernels', the fused pass stops at 32)
FEATURES = {"diag": 32, "spherical": 32, "full": 48}
MAX_COMPONENTS = 32
N_INITS = tuple(range(1, 9))
DTYPES = ("float32", "float64")
#: kernels outside the engine's fit plan, of the data's dtype alone: the input check
#: (``_cupy/checks.py``), centring (``_cupy/data.py``), scoring (``_cupy/gemm.py``: predict,
#: score_samples)
EXTRA_KERNELS = (
    ("init.cu", "column_stats"),
    ("init.cu", "centre_rows"),
    ("gemm_rows.cu", "quad_features"),
    ("gemm_rows.cu", "score_rows"),
)


_TEMPLATE = re.compile(r"^(\w+)<(.*)>$")


def default_shapes() -> list[Shape]:
    """The grid of fits whose kernels are built (and :data:`~gmm_core._warmup.DEFAULT_SHAPES`)."""
    shapes: list[Shape] = list(DEFAULT_SHAPES)
    for covariance_type, max_features in FEATURES.items():
        shapes += itertools.product(
            range(1, max_features + 1),
            range(1, MAX_COMPONENTS + 1),
            (covariance_type,),
            DTYPES,
            N_INITS,
        )
    return list(dict.fromkeys(shapes))


def launch_configs(arch: str) -> list[LaunchConfig]:
    """Launch settings of the GPUs of ``arch`` (:data:`DEVICES`), as the engine would read them."""
    from ._cupy import LaunchConfig

    if arch not in DEVICES:
        raise ValueError(f"no prebuilt kernels for {arch!r}; choose from {', '.join(ARCHES)}")
    cc = int(arch.removeprefix("sm_"))
    configs = [
        LaunchConfig(n_sm=n, smem_optin=smem, compute_capability=cc) for _, n, smem in DEVICES[arch]
    ]
    # with the wgmma pass (the default on sm_90) and without it (GMM_CORE_WGMMA=0)
    return configs + [dataclasses.replace(c, wgmma=False) for c in configs if cc == 90]


def kernels_for_arch(arch: str, shapes: Iterable[Sequence[Any]] | None = None) -> list[KernelRef]:
    """The kernels built for ``arch``: every kernel fits of ``shapes`` launch on its GPUs.

    ``shapes`` defaults to :func:`default_shapes`; the input-check kernels
    (:data:`EXTRA_KERNELS`) of both dtypes are added.
    """
    from ._cupy import large_k, large_k_f64, large_k_sparse
    from ._cupy.kernels import kernel_ref

    shapes = default_shapes() if shapes is None else list(shapes)
    refs: list[KernelRef] = []
    for config in launch_configs(arch):
        refs += kernels_for_shapes(shapes, config)
    refs += [kernel_ref(f, name, dt) for f, name in EXTRA_KERNELS for dt in ("float", "double")]
    refs += [kernel_ref(large_k.SOURCE, name) for name in large_k.KERNELS]
    refs += large_k_f64.kernel_refs()
    refs += large_k_sparse.kernel_refs()
    refs += [kernel_ref(large_k.FUSED_SOURCE, name) for name in large_k.FUSED_KERNELS]
    return sorted(set(refs))


def group_of(expr: str) -> str:
    """The cubin a kernel goes into: its scalar type and width, ``common`` without either.

    Kernels of one fit mostly share both, so a fit loads few cubins; float32-only kernels
    without a type argument (``diag_pass_tc``, ``full_pass_tc``) go with float.

    >>> group_of("diag_pass<double, 7, 4, false, false, false>")
    'double-7'
    >>> group_of("diag_pass_tc<16, 2, false, 256>"), group_of("kpp_update<float>")
    ('float-16', 'float')
    >>> group_of("reduce_partials")
    'common'
    """
    match = _TEMPLATE.match(expr)
    if match is None:
        return "common"
    args = [a.strip() for a in match.group(2).split(",")]
    dtype = next((a for a in args if a in ("float", "double")), "float")
    width = next((a for a in args if a.isdigit()), None)
    return dtype if width is None else f"{dtype}-{width}"


def elf_symbols(cubin: bytes) -> set[str]:
    """Names in the symbol tables of an ELF64 file (a cubin), as ``cuobjdump -symbols`` lists."""
    if cubin[:5] != b"\x7fELF\x02":
        raise ValueError("not an ELF64 file")
    (shoff,) = struct.unpack_from("<Q", cubin, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", cubin, 0x3A)
    # (name, type, flags, addr, offset, size, link, info, addralign, entsize)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", cubin, shoff + i * shentsize) for i in range(shnum)
    ]
    names: set[str] = set()
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind != 2 or not entsize:  # SHT_SYMTAB
            continue
        strings = sections[link][4]
        for j in range(size // entsize):
            (name,) = struct.unpack_from("<I", cubin, offset + j * entsize)
            start = strings + name
            names.add(cubin[start : cubin.index(b"\0", start)].decode())
    return names


@dataclass
class ArchReport:
    """What one architecture's build wrote."""

    arch: str
    directory: Path
    n_kernels: int = 0
    n_cubins: int = 0
    cubin_bytes: int = 0
    packed_bytes: int = 0
    compile_seconds: float = 0.0
    per_file: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        files = ", ".join(f"{f} {n}" for f, n in sorted(self.per_file.items()))
        return (
            f"{self.arch}: {self.n_kernels} kernels ({files}) in {self.n_cubins} cubins, "
            f"{self.cubin_bytes / 2**20:.1f} MiB of cubins packed into "
            f"{self.packed_bytes / 2**20:.1f} MiB, {self.compile_seconds:.0f} s of NVRTC"
        )


def compile_options(arch: str, file: str = "") -> tuple[str, ...]:
    """NVRTC options of a prebuilt cubin: what CuPy compiles with, for a real ``arch``.

    An arch-specific source (``_cuda_loader.ARCH_SPECIFIC``, e.g. ``sm_90a``) is built for its
    own target, in the folder of the architecture it runs on.
    """
    target = _cuda_loader.ARCH_SPECIFIC.get(file, arch)
    return (*_cuda_loader.COMPILE_OPTIONS, *_cuda_loader.NVRTC_ADDED_OPTIONS, f"-arch={target}")


def _compile_group(arch: str, file: str, group: str, exprs: list[str]) -> tuple[Any, ...]:
    started = time.perf_counter()
    name = f"{Path(file).stem}.{group}"
    options = compile_options(arch, file)
    compiled = _nvrtc.compile_cubin(_cuda_loader.source(file), file, exprs, options)
    missing = set(compiled.lowered_names.values()) - elf_symbols(compiled.cubin)
    if missing:
        raise _nvrtc.NvrtcError(f"{name} ({arch}): the cubin lacks {sorted(missing)}")
    packed = _prebuilt.pack(compiled.cubin)
    return arch, file, name, compiled, packed, time.perf_counter() - started


def build(
    arches: Sequence[str] = ARCHES,
    out: Path | None = None,
    *,
    shapes: Iterable[Sequence[Any]] | None = None,
    refs: Iterable[KernelRef] | None = None,
    jobs: int | None = None,
    log: Any = None,
) -> list[ArchReport]:
    """Compile the kernels of ``arches`` and write ``<out>/<arch>/`` (cubins and ``index.json``).

    Parameters
    ----------
    arches : sequence of str, default=("sm_80", "sm_90")
        Architectures to build (keys of :data:`DEVICES`).
    out : Path, optional
        The prebuilt tree (default: :data:`gmm_core._prebuilt.PREBUILT_DIR`); each arch's folder
        is replaced whole once its build succeeded.
    shapes : iterable of (n_features, n_components, covariance_type, dtype, n_init), optional
        Fits whose kernels to build (default: :func:`default_shapes`).
    refs : iterable of KernelRef, optional
        Exactly these kernels, for every arch (``shapes`` is then ignored).
    jobs : int, optional
        Programs compiled at once (default: the CPU count).
    log : callable, optional
        Called with a line of progress now and then (e.g. ``print``).

    Returns
    -------
    list of ArchReport
        Per arch: kernels, cubins, bytes and compile seconds.

    Raises
    ------
    gmm_core._nvrtc.NvrtcError
        NVRTC is missing, or a kernel does not compile (nothing is replaced then).
    """
    out = Path(out or _prebuilt.PREBUILT_DIR)
    say = log or (lambda line: None)
    nvrtc_version = ".".join(map(str, _nvrtc.version()))  # fails early without NVRTC
    given = None if refs is None else sorted(set(refs))
    tasks: list[tuple[str, str, str, list[str]]] = []
    reports: dict[str, ArchReport] = {}
    kernels: dict[str, list[KernelRef]] = {}
    for arch in arches:
        kernels[arch] = given if given is not None else kernels_for_arch(arch, shapes)
        groups: dict[tuple[str, str], list[str]] = {}
        for ref in kernels[arch]:
            groups.setdefault((ref.file, group_of(ref.expr)), []).append(ref.expr)
        tasks += [(arch, file, group, exprs) for (file, group), exprs in groups.items()]
        reports[arch] = ArchReport(arch, out / arch, n_kernels=len(kernels[arch]))
        say(f"{arch}: {len(kernels[arch])} kernels in {len(groups)} programs")
    # longest first (fused passes of wide data), so the last programs to finish are short ones
    tasks.sort(key=lambda t: -sum(_cost(e) for e in t[3]))
    staging = {arch: out / f".{arch}.building-{os.getpid()}" for arch in arches}
    indexes: dict[str, dict[str, Any]] = {}
    for arch, directory in staging.items():
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        indexes[arch] = {
            "format": _prebuilt.INDEX_FORMAT,
            "arch": arch,
            "nvrtc": nvrtc_version,
            "options": list(compile_options(arch)),
            "devices": [d[0] for d in DEVICES.get(arch, ())],
            "sources": {},
            "cubins": {},
            "kernels": {},
        }
    started = time.perf_counter()
    workers = max(1, min(jobs or os.cpu_count() or 1, len(tasks) or 1))
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="gmm-build") as pool:
            futures = [pool.submit(_compile_group, *task) for task in tasks]
            for done, future in enumerate(futures, start=1):
                arch, file, name, compiled, packed, seconds = future.result()
                cubin_name = f"{name}.cubin.xz"
                (staging[arch] / cubin_name).write_bytes(packed)
                index = indexes[arch]
                index["sources"][file] = _cuda_loader.source_digest(file)
                index["cubins"][cubin_name] = {
                    "sha256": _sha256(compiled.cubin),
                    "bytes": len(compiled.cubin),
                }
                entries = index["kernels"].setdefault(file, {})
                for expr, symbol in compiled.lowered_names.items():
                    entries[expr] = {"cubin": cubin_name, "symbol": symbol}
                report = reports[arch]
                report.n_cubins += 1
                report.cubin_bytes += len(compiled.cubin)
                report.packed_bytes += len(packed)
                report.compile_seconds += seconds
                report.per_file[file] = report.per_file.get(file, 0) + len(compiled.lowered_names)
                if done % 10 == 0 or done == len(futures):
                    say(f"  {done}/{len(futures)} programs, {time.perf_counter() - started:.0f} s")
        for arch, directory in staging.items():
            indexes[arch]["build_seconds"] = round(time.perf_counter() - started, 1)
            text = json.dumps(indexes[arch], indent=1, sort_keys=True)
            (directory / _prebuilt.INDEX_NAME).write_text(text + "\n")
            target = out / arch
            old = out / f".{arch}.old-{os.getpid()}"
            if target.exists():
                target.rename(old)
            directory.rename(target)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        for directory in staging.values():
            shutil.rmtree(directory, ignore_errors=True)
    return [reports[arch] for arch in arches]


def _cost(expr: str) -> int:
    """Rough compile cost of a kernel: its width (wide fused passes unroll the most)."""
    match = _TEMPLATE.match(expr)
    widths = [int(a) for a in match.group(2).split(", ") if a.isdigit()] if match else []
    return 1 + (widths[0] if widths else 0)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def native_arch() -> str:
    """The prebuilt architecture of the current GPU (``sm_90`` on an H100/H200)."""
    import cupy

    cc = int(cupy.cuda.Device().compute_capability)
    for arch in _prebuilt.arch_candidates(cc):
        if arch in DEVICES:
            return arch
    raise ValueError(f"no prebuilt kernels for sm_{cc}; choose from {', '.join(ARCHES)}")


def _shape_argument(text: str) -> Shape:
    try:
        return parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gmm_core.build_kernels``: build, print what; see ``--help``."""
    parser = argparse.ArgumentParser(
        prog="python -m gmm_core.build_kernels",
        description="Compile gmm_core's CUDA kernels ahead of time (NVRTC, no GPU needed) into "
        "gmm_core/cuda/prebuilt/, which a first fit loads instead of compiling.",
    )
    parser.add_argument(
        "--arch",
        action="append",
        choices=(*ARCHES, "native"),
        help="architecture to build (repeatable; default: all of "
        f"{', '.join(ARCHES)}; native: this machine's GPU's)",
    )
    parser.add_argument(
        "--shape",
        action="append",
        type=_shape_argument,
        metavar="D,K,COV,DTYPE,N_INIT",
        help="build only the kernels of these fits (repeatable; default: the whole grid)",
    )
    parser.add_argument(
        "--out", type=Path, help=f"prebuilt tree (default: {_prebuilt.PREBUILT_DIR})"
    )
    parser.add_argument("--jobs", type=int, help="programs compiled at once (default: CPU count)")
    parser.add_argument(
        "--list", action="store_true", help="print the kernels each arch would get; compile none"
    )
    parser.add_argument(
        "--if-available",
        action="store_true",
        help="where NVRTC (or CuPy, for native) is missing, say so and exit 0 (make kernels)",
    )
    args = parser.parse_args(argv)
    reason = _nvrtc.unavailable_reason()
    if reason is None and "native" in (args.arch or ()):
        from ._device import cupy_unavailable_reason

        reason = cupy_unavailable_reason()
    if reason is not None and not args.list:
        print(f"gmm_core.build_kernels: nothing built: {reason}", file=sys.stderr)
        return 0 if args.if_available else 1
    arches = [native_arch() if a == "native" else a for a in (args.arch or ARCHES)]
    arches = list(dict.fromkeys(arches))
    if args.list:
        for arch in arches:
            refs = kernels_for_arch(arch, args.shape)
            print(f"{arch}: {len(refs)} kernels")
            for ref in refs:
                print(f"  {ref.file} {ref.expr}")
        return 0
    started = time.perf_counter()
    reports = build(arches, args.out, shapes=args.shape, jobs=args.jobs, log=print)
    for report in reports:
        print(report.line())
    total = sum(r.packed_bytes for r in reports)
    print(
        f"gmm_core.build_kernels: {sum(r.n_kernels for r in reports)} kernels, "
        f"{total / 2**20:.1f} MiB in {reports[0].directory.parent if reports else args.out}, "
        f"{time.perf_counter() - started:.0f} s"
    )
    return 0
