"""Former home of the CuPy engine, now the package :mod:`gmm_core._cupy`; re-exported here."""

from ._cupy import CupyData, CupyEngine, drive_launches, full_tc_smem
from ._cupy.gemm import resp_t_dot as _resp_t_dot

__all__ = ["CupyData", "CupyEngine", "_resp_t_dot", "drive_launches", "full_tc_smem"]
