"""``emflow gpu warmup``: compile gmm_core's CUDA kernels ahead of the first fit.

A worker that runs this once after start (or in its image build, with ``CUPY_CACHE_DIR`` on a
persistent path) spares the first retrain the kernel compile. On a machine without a usable GPU
it says that nothing was compiled, and why, and exits 0: there is nothing to warm.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``emflow gpu``."""
    sub = parser.add_subparsers(dest="gpu_command", required=True, metavar="ACTION")
    warm = sub.add_parser("warmup", help="compile the CUDA kernels into the kernel cache")
    warm.add_argument("--verbose", action="store_true", help="let gmm_core say what it does")


def warmup(verbose: bool = False) -> tuple[list[str], str | None]:
    """Run ``gmm_core.warmup()``; return the compiled kernels, or ``[]`` and why none were.

    ``gmm_core.warmup`` raises RuntimeError naming the reason when no GPU is usable; a gmm_core
    without ``warmup`` compiles its kernels on the first fit instead.
    """
    import gmm_core

    warm = getattr(gmm_core, "warmup", None)
    if warm is None:
        return [], "this gmm_core has no warmup(); kernels compile on the first GPU fit"
    try:
        return list(warm(verbose=verbose)), None
    except RuntimeError as error:
        return [], str(error)


def run(args: argparse.Namespace) -> int:
    """Run ``emflow gpu warmup``; 0 also when there is no GPU (nothing to compile)."""
    compiled, reason = warmup(verbose=args.verbose)
    if reason is not None:
        print(f"emflow gpu warmup: nothing compiled: {reason}", file=sys.stderr)
        return 0
    print(f"compiled {len(compiled)} kernel(s):")
    for name in compiled:
        print(f"  {name}")
    return 0
