"""The CuPy engine: fused CUDA passes for diag/spherical and full, cuBLAS GEMMs otherwise.

:class:`CupyEngine` (:mod:`.engine`) places the data and picks, per data set and shape, one pass
strategy; each strategy module says which data it serves (``supports``) and runs a pass over
them (``accumulate``, or plans the device loop launches):

================================  =========================================================
:mod:`.full_pass_tc`              full covariance, float32, up to 32 features and 32
                                  components: one fused pass on tensor cores (3xTF32)
:mod:`.diag_pass_tc`              diag, float32, 4/8/12/16 features, up to 32 components:
                                  both GEMMs of the fused pass on tensor cores (3xTF32)
:mod:`.diag_pass`                 diag/spherical up to 32 features and 256 components: the
                                  fused pass on the SIMT cores (float32 and float64)
:mod:`.diag_em_small`             one restart, few components and rows: whole iterations per
                                  launch (device loop only)
:mod:`.gemm`                      everything else (tied, full beyond the fused pass, diag
                                  beyond the fused kernels): cuBLAS GEMMs over row chunks
================================  =========================================================

The rest: :mod:`.data` (data on the device, or host chunks streamed through it),
:mod:`.kernels` (``get_kernel(file, name, *template_args)``, memoised per device; concurrent
compilation), :mod:`.diag_common` (plans and launches shared by the fused diag passes),
:mod:`.loop` (the whole EM loop on the device: CUDA graphs, flags read one launch late),
:mod:`.tracker` (the estimator's loop's per-restart bookkeeping as kernels, where :mod:`.loop`
does not serve), :mod:`.copies` (copies and sums by memcpy and cuBLAS: no CuPy-generated kernel),
:mod:`.config` (device properties and launch settings every strategy reads).

A process's first fit compiles our ``cuda/*.cu`` modules and nothing else: the fit and scoring
paths use no CuPy array operation (each would be a generated kernel NVRTC compiles on first use);
parameter-sized math runs on the host (``tests/gpu/test_cold_compiles.py`` counts them).

Data that fit the memory budget stay on the device; otherwise they are streamed from host memory
in row chunks with the same result. A ``cupy`` out-of-memory error while uploading falls back to
streaming, and during a GEMM pass to smaller chunks.
"""

from .config import LaunchConfig
from .data import CupyData
from .diag_common import MAX_FUSED_FEATURES, DiagPlan, tail_reduce
from .engine import CupyEngine, FusedDiag
from .full_pass_tc import full_tc_smem
from .kernels import KernelRef, compile_kernels, get_kernel
from .loop import DeviceLoop, DeviceLoopState, drive_launches

__all__ = [
    "MAX_FUSED_FEATURES",
    "CupyData",
    "CupyEngine",
    "DeviceLoop",
    "DeviceLoopState",
    "DiagPlan",
    "FusedDiag",
    "KernelRef",
    "LaunchConfig",
    "compile_kernels",
    "drive_launches",
    "full_tc_smem",
    "get_kernel",
    "tail_reduce",
]
