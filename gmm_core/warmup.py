"""``python -m gmm_core.warmup [--shape D,K,COV,DTYPE,N_INIT ...]``: compile kernels ahead.

The command line of :func:`gmm_core.warmup` (see :mod:`gmm_core._warmup`); from Python call the
function, ``gmm_core.warmup(shapes)``, not this module.
"""

from ._warmup import main

if __name__ == "__main__":
    raise SystemExit(main())
