"""Load the CUDA sources shipped in ``gmm_core/cuda`` and compile them through CuPy.

Sources are read once, prefixed with ``#line 1 "<path>"`` so NVRTC errors point at the ``.cu``
file, and compiled by :class:`cupy.RawModule` with the template instantiations a launch needs.
Compiled modules are memoised per device (``cupy.memoize(for_each_device=True)``) and CuPy keeps
the binaries in its on-disk kernel cache (``CUPY_CACHE_DIR``, default ``~/.cupy/kernel_cache``),
so a second process pays no compile time. Kernels built ahead of time
(``python -m gmm_core.build_kernels``, :mod:`gmm_core._prebuilt`) are loaded instead where their
:func:`source_digest` still matches.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
import time
from pathlib import Path
from typing import Any

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
#: threads per block of the fused kernels (``GMM_NT`` in the sources)
THREADS_PER_BLOCK = 256
COMPILE_OPTIONS = ("-std=c++17", f"-DGMM_NT={THREADS_PER_BLOCK}")
#: options CuPy adds to every ``RawModule`` compile that change the code (``cupy/cuda/compiler.py``:
#: ``-ftz=true`` in ``_compile_with_cache_cuda``, the execution space in ``compile_using_nvrtc``;
#: the ``-I`` paths it adds do not matter, the sources include no header outside ``cuda/``): the
#: ahead-of-time build passes them too, so that its kernels are the ones NVRTC gives at run time
NVRTC_ADDED_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")

#: sources that use an architecture's own features (Hopper's ``wgmma``: ``sm_90a``): NVRTC and
#: the ahead-of-time build compile them for that target, and only devices of that compute
#: capability launch them (``gmm_core._cupy.diag_pass_wg``)
ARCH_SPECIFIC = {"em_diag_wg.cu": "sm_90a"}

#: seconds spent compiling modules in this process, summed over threads (benchmarks report it)
compile_seconds = 0.0
_compile_seconds_lock = threading.Lock()
_LOCAL_INCLUDE = re.compile(r'^\s*#include\s+"([^"/]+\.cuh)"\s*$')


@functools.cache
def source(name: str) -> str:
    """Text of ``gmm_core/cuda/<name>`` with ``#line`` directives naming the file.

    Local headers (``#include "x.cuh"``) are pasted in, so that CuPy's kernel cache, keyed on
    the source text, sees a change to a header too (NVRTC would read it from disk unhashed).
    """
    path = CUDA_DIR / name
    out = [f'#line 1 "{path}"']
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _LOCAL_INCLUDE.match(line)
        if match is None:
            out.append(line)
            continue
        out.append(source(match.group(1)))
        out.append(f'#line {number + 1} "{path}"')
    return "\n".join(out) + "\n"


@functools.cache
def source_digest(name: str) -> str:
    """SHA-256 of what NVRTC compiles for ``cuda/<name>``: the text and the options.

    The text of :func:`source` without the folder's path (a package moved elsewhere compiles
    to the same code), :data:`COMPILE_OPTIONS` and :data:`NVRTC_ADDED_OPTIONS`. A prebuilt
    kernel whose digest differs is stale (:mod:`gmm_core._prebuilt`).
    """
    digest = hashlib.sha256(source(name).replace(str(CUDA_DIR), "").encode())
    digest.update("\0".join((*COMPILE_OPTIONS, *NVRTC_ADDED_OPTIONS)).encode())
    if name in ARCH_SPECIFIC:  # built for its own target (the ahead-of-time build too)
        digest.update(ARCH_SPECIFIC[name].encode())
    return digest.hexdigest()


def ctype(dtype: Any) -> str:
    """CUDA scalar type of a NumPy float dtype."""
    import numpy as np

    dt = np.dtype(dtype)
    if dt == np.float32:
        return "float"
    if dt == np.float64:
        return "double"
    raise TypeError(f"CUDA kernels take float32 or float64 data, got {dt}")


def arch_options(name: str) -> tuple[str, ...]:
    """Options that pick the target of an arch-specific source (:data:`ARCH_SPECIFIC`).

    CuPy appends its own ``-arch=sm_90``; NVRTC 13 then builds ``sm_90a`` from the pair
    (checked by ``benchmarks/wgmma.py``'s ``probe_arch`` on an H200).
    """
    arch = ARCH_SPECIFIC.get(name)
    return (f"--gpu-architecture={arch}",) if arch else ()


def _compile(name: str, name_expressions: tuple[str, ...], options: tuple[str, ...] = ()) -> Any:
    import cupy

    global compile_seconds
    started = time.perf_counter()
    module = cupy.RawModule(
        code=source(name),
        options=(*COMPILE_OPTIONS, *arch_options(name), *options),
        name_expressions=list(name_expressions),
    )
    module.compile()
    with _compile_seconds_lock:  # modules may compile in several threads at once
        compile_seconds += time.perf_counter() - started
    return module


def module(name: str, name_expressions: tuple[str, ...], options: tuple[str, ...] = ()) -> Any:
    """Compiled :class:`cupy.RawModule` of ``cuda/<name>`` (memoised per device).

    ``options`` are compiler options added to :data:`COMPILE_OPTIONS` (e.g. ``-D`` defines of
    tuning variants); each set compiles a module of its own.
    """
    if options:
        return _memoized_compile()(name, name_expressions, options)
    return _memoized_compile()(name, name_expressions)


@functools.cache
def _memoized_compile() -> Any:
    import cupy

    return cupy.memoize(for_each_device=True)(_compile)


#: template instantiations compiled by the CPU-only test (``tests/test_cuda_compile.py``): the
#: engine's extremes (1 and 32 features, float and double, diag and spherical, 1-4 items/thread)
SAMPLE_INSTANCES: dict[str, tuple[str, ...]] = {
    "em_diag.cu": (
        "diag_pass<float, 16, 1, false, false, false>",
        "diag_pass<float, 16, 1, true, false, false>",
        "diag_pass<float, 2, 4, false, false, false>",
        "diag_pass<double, 2, 4, true, false, false>",
        "diag_pass<float, 1, 2, false, false, false>",
        "diag_pass<double, 7, 4, false, false, false>",
        "diag_pass<float, 32, 1, false, false, false>",
        "diag_pass<double, 32, 1, true, false, false>",
        "diag_pass<float, 16, 1, false, true, false>",
        "diag_pass<double, 2, 4, true, true, false>",
        "diag_pass<float, 2, 4, false, false, true>",
        "diag_pass<double, 5, 4, true, false, true>",
        "diag_mstep<float, 16, false>",
        "diag_mstep<double, 2, true>",
        "diag_mstep<float, 32, false>",
        "prepare_params<float, 16, false>",
        "prepare_params<double, 3, true>",
        "reduce_partials",
        "reduce_exchange_mstep<float, 16, false>",
        "diag_em_small<float, 2, false, 8>",
        "diag_em_small<double, 4, true, 4>",
        "diag_em_small<float, 1, false, 2>",
        "reduce_exchange_mstep<double, 3, true>",
        "diag_pass_tc<16, 2, false, 128>",
        "diag_pass_tc<16, 2, true, 128>",
        "diag_pass_tc<16, 2, false, 256>",
        "diag_pass_tc<4, 1, false, 128>",
        "diag_pass_tc<8, 1, true, 256>",
        "diag_pass_tc<12, 2, false, 128>",
        "diag_pass_tc<16, 2, false, 256, false>",
        "diag_pass_tc<16, 2, true, 256, true, true>",
        "diag_pass_tc<8, 1, false, 128, true, true>",
        "diag_pass<float, 16, 1, false, false, false, true>",
        "diag_pass<double, 3, 2, true, false, true, true>",
    ),
    "em_diag_wg.cu": ("diag_pass_wg", "diag_wg_params"),
    "init.cu": (
        "kpp_potentials<float>",
        "kpp_potentials<double>",
        "kpp_update<float>",
        "kpp_update<double>",
        "column_stats<float>",
        "column_stats<double>",
        "kpp_block_sums<float>",
        "kpp_sample<float>",
        "gather_rows<float>",
        "gather_rows<double>",
        "kpp_choose<float>",
        "kpp_choose<double>",
        "lloyd_step<double>",
        "centre_rows<float>",
        "centre_rows<double>",
    ),
    "em_largek_tc.cu": (
        "lkt_weights",
        "lkt_lse<true>",
        "lkt_lse<false>",
        "lkt_stats<true, 64>",
        "lkt_stats<true, 32>",
        "lkt_stats<false, 64>",
    ),
    "em_largek_sparse.cu": (
        "lks_norms",
        "lks_bf16",
        "lks_features16",
        "lks_select<float>",
        "lks_select<unsigned short>",
        "lks_order_keys",
        "lks_reduce",
        "lks_combine",
        "lks_gather",
        "lks_mma<true>",
        "lks_mma<false>",
        "lks_exact",
    ),
    "em_largek.cu": (
        "lk_features",
        "lk_weights",
        "lk_rows",
        "lk_flush",
        "lk_features64",
        "lk_weights64",
        "lk_rows64",
        "lk_flush64",
    ),
    "gemm_rows.cu": (
        "quad_features<float>",
        "quad_features<double>",
        "score_rows<float>",
        "score_rows<double>",
    ),
    "em_loop.cu": ("em_update", "loop_mstep"),
    "em_full.cu": (
        "full_mstep<1>",
        "full_mstep<32>",
        "full_mstep<48>",
        "full_constants<float, 32>",
        "full_constants<double, 5>",
        "full_constants<float, 48>",
        "full_tc_params<32>",
        "full_tc_params<1>",
        "full_pass_tc<32, true>",
        "full_pass_tc<32, false>",
        "full_pass_tc<5, true>",
        "full_pass_tc<1, true>",
        "full_pass_tc<24, false>",
        "full_pass_tc<32, true, true>",
        "full_pass_tc<6, false, true>",
    ),
}
