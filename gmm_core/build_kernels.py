"""``python -m gmm_core.build_kernels [--arch sm_80|sm_90|native] ...``: kernels ahead of time.

The command line of :mod:`gmm_core._build_kernels`: compiles the CUDA kernels of the usual fits
for sm_80 and sm_90 with NVRTC (no GPU needed) into ``gmm_core/cuda/prebuilt/``, which a first
fit loads instead of compiling (:mod:`gmm_core._prebuilt`).
"""

from ._build_kernels import main

if __name__ == "__main__":
    raise SystemExit(main())
