"""Compile the CUDA kernels that fits of given shapes need, before the first fit asks for them.

A fit of a new (dtype, width, components, covariance type) compiles its kernels with NVRTC on
first use: seconds per kernel. :func:`warmup` compiles them ahead, concurrently, into CuPy's
on-disk kernel cache (``CUPY_CACHE_DIR``, default ``~/.cupy/kernel_cache``), so that a later
process (a GPU worker's task, a notebook) only loads them. The GPU worker image runs
``python -m gmm_core.warmup`` at start, before it takes tasks, with the cache on a volume.
Kernels built ahead of time (``python -m gmm_core.build_kernels``, :mod:`gmm_core._prebuilt`)
need no compile at all: the warm-up only loads them, and :func:`kernels_for_shapes` is also
what chooses which kernels that build compiles.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._device import cupy_unavailable_reason

if TYPE_CHECKING:
    from ._cupy import KernelRef, LaunchConfig

logger = logging.getLogger("gmm_core")

#: a fit's shape: (n_features, n_components, covariance_type, dtype, n_init)
Shape = tuple[int, int, str, Any, int]

#: the shapes :func:`warmup` compiles by default: the retraining pipeline's defaults
#: (``emflow.pipeline``: 6 telemetry features, K=4, float64, n_init=3, full and diag) and the
#: benchmark cases of ``docs/benchmarks.md`` (telemetry 16 features K=32 diag, one and eight
#: restarts; full 32 features K=16; Blobs 2 features K=5)
DEFAULT_SHAPES: tuple[Shape, ...] = (
    (6, 4, "full", "float64", 3),
    (6, 4, "diag", "float64", 3),
    (16, 32, "diag", "float32", 1),
    (16, 32, "diag", "float32", 8),
    (32, 16, "full", "float32", 1),
    (2, 5, "diag", "float32", 1),
)
#: environment variable with the shapes ``python -m gmm_core.warmup`` compiles (see ``--shape``)
SHAPES_ENV = "GMM_CORE_WARMUP_SHAPES"
#: data sizes whose kernels are listed for a shape (the row count is not part of a shape): small
#: fits (``diag_em_small`` up to 2**21 rows, passes that reduce their own partials) and large
_SAMPLE_COUNTS = (1 << 16, 1 << 24)
_COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def _checked(shape: Sequence[Any]) -> tuple[int, int, str, np.dtype, int]:
    if len(shape) != 5:
        raise ValueError(
            f"a warm-up shape is (n_features, n_components, covariance_type, dtype, n_init), "
            f"got {tuple(shape)!r}"
        )
    n_features, n_components, covariance_type, dtype, n_init = shape
    dtype = np.dtype(dtype)
    if covariance_type not in _COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {_COVARIANCE_TYPES}, got {covariance_type!r}"
        )
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if min(int(n_features), int(n_components), int(n_init)) < 1:
        raise ValueError(f"n_features, n_components and n_init must be >= 1, got {tuple(shape)}")
    return int(n_features), int(n_components), covariance_type, dtype, int(n_init)


def kernels_for_shapes(
    shapes: Iterable[Sequence[Any]], config: LaunchConfig | None = None
) -> list[KernelRef]:
    """The kernels fits of ``shapes`` compile on a device of ``config`` (default: this GPU's).

    Asks the CuPy engine (:meth:`gmm_core._cupy.CupyEngine.kernel_refs`, the one place that
    knows) for every shape, for data resident on the device, at a small and a large row count,
    with the estimator's default initialisation (``init_params="kmeans"``: k-means++ seeding
    and Lloyd passes, which covers the other methods' kernels). With ``config`` given no GPU
    is needed.
    """
    from ._cupy import CupyData, CupyEngine

    engine = CupyEngine(config=config)
    refs: list[KernelRef] = []
    for shape in shapes:
        n_features, n_components, covariance_type, dtype, n_init = _checked(shape)
        for n_samples in _SAMPLE_COUNTS:
            data = CupyData([], True, covariance_type, dtype, n_samples, n_features)
            refs += engine.kernel_refs(data, n_init, n_components, init_params="kmeans")
    return list(dict.fromkeys(refs))


def warmup(shapes: Iterable[Sequence[Any]] | None = None, *, verbose: bool = False) -> list[str]:
    """Compile the CUDA kernels that fits of ``shapes`` need, on the current GPU.

    Parameters
    ----------
    shapes : iterable of (n_features, n_components, covariance_type, dtype, n_init), optional
        The fits to prepare for, e.g. ``[(16, 32, "diag", "float32", 1)]``. Default:
        :data:`DEFAULT_SHAPES` (the retraining pipeline's defaults and the benchmark cases).
    verbose : bool, default=False
        Log (``gmm_core`` logger, INFO) what was compiled and how long it took.

    Returns
    -------
    list of str
        The kernels compiled or found in the cache (name expressions, e.g.
        ``"diag_pass_tc<16, 2, false, 256>"``).

    Raises
    ------
    RuntimeError
        When no GPU is usable here (the message says why).

    Notes
    -----
    Independent kernels compile concurrently (NVRTC releases the GIL); compiled kernels land in
    CuPy's on-disk cache (``CUPY_CACHE_DIR``), keyed on the source, options and architecture,
    so any later process on a GPU of the same architecture loads them instead of compiling.
    The row count is not part of a shape: the kernels of small and of large fits are compiled.
    """
    reason = cupy_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"gmm_core.warmup: no kernels compiled: {reason}")
    from ._cupy import compile_kernels

    refs = kernels_for_shapes(DEFAULT_SHAPES if shapes is None else shapes)
    started = time.perf_counter()
    names = compile_kernels(refs)
    if verbose:
        logger.info(
            "gmm_core.warmup: %d kernels ready in %.1f s (cache: %s): %s",
            len(names),
            time.perf_counter() - started,
            cache_dir(),
            ", ".join(names),
        )
    return names


def cache_dir() -> str:
    """Where CuPy keeps compiled kernels (``CUPY_CACHE_DIR`` or its default)."""
    return os.environ.get("CUPY_CACHE_DIR") or os.path.expanduser("~/.cupy/kernel_cache")


def parse_shape(text: str) -> Shape:
    """``"16,32,diag,float32,1"`` -> ``(16, 32, "diag", "float32", 1)``.

    >>> parse_shape("6, 4, full, float64, 3")
    (6, 4, 'full', 'float64', 3)
    """
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 5:
        raise ValueError(
            f"a shape is n_features,n_components,covariance_type,dtype,n_init, got {text!r}"
        )
    shape = (int(parts[0]), int(parts[1]), parts[2], parts[3], int(parts[4]))
    _checked(shape)
    return shape


def _shape_argument(text: str) -> Shape:
    try:
        return parse_shape(text)
    except ValueError as exc:  # argparse shows an ArgumentTypeError's own message
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gmm_core.warmup``: compile, print what; exit 0 (with why) without a GPU."""
    parser = argparse.ArgumentParser(
        prog="python -m gmm_core.warmup",
        description="Compile gmm_core's CUDA kernels for the given fit shapes into CuPy's "
        "on-disk kernel cache (CUPY_CACHE_DIR), so that first fits do not wait for NVRTC.",
    )
    parser.add_argument(
        "--shape",
        action="append",
        type=_shape_argument,
        metavar="D,K,COV,DTYPE,N_INIT",
        help=f"a fit shape, e.g. 16,32,diag,float32,1 (repeatable; default: ${SHAPES_ENV} as "
        "shapes separated by ';', else the built-in list)",
    )
    args = parser.parse_args(argv)
    shapes: list[Shape] | None = args.shape
    if shapes is None and os.environ.get(SHAPES_ENV, "").strip():
        try:
            shapes = [parse_shape(s) for s in os.environ[SHAPES_ENV].split(";") if s.strip()]
        except ValueError as exc:
            parser.error(f"${SHAPES_ENV}: {exc}")
    reason = cupy_unavailable_reason()
    if reason is not None:  # not a failure: a machine without a GPU has nothing to warm
        print(f"gmm_core.warmup: no GPU, nothing compiled: {reason}")
        return 0
    started = time.perf_counter()
    names = warmup(shapes)  # a kernel that does not compile fails the command
    print(
        f"gmm_core.warmup: {len(names)} kernels ready in {time.perf_counter() - started:.1f} s "
        f"(cache: {cache_dir()})"
    )
    for name in names:
        print(f"  {name}")
    return 0
