"""The large-K pass's layout and choice, without a GPU (numerics: tests/gpu/test_gpu_large_k.py)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gmm_core._cupy")
from gmm_core._cupy import CupyData, LaunchConfig  # noqa: E402
from gmm_core._cupy.data import Scratch  # noqa: E402
from gmm_core._cupy.large_k import (  # noqa: E402
    CHUNK_BYTES,
    MIN_COMPONENTS,
    STATS_ROWS,
    LargeKPass,
    geometry,
)

SM90 = LaunchConfig(n_sm=132, smem_optin=232_448, compute_capability=90)


def _data(cov: str, dtype=np.float32, n: int = 10**6, d: int = 128) -> CupyData:
    return CupyData([], True, cov, np.dtype(dtype), n, d)


@pytest.mark.parametrize(
    ("d", "cov", "want"),
    [
        (128, "diag", (256, 256, 264)),  # [x, x^2]
        (128, "spherical", (129, 136, 144)),  # [x, |x|^2], padded to 8
        (72, "spherical", (73, 80, 88)),
        (3, "diag", (6, 8, 16)),
    ],
)
def test_feature_rows_are_padded_to_aligned_gemm_operands(d, cov, want):
    f, fp, ldb = geometry(d, cov)
    assert (f, fp, ldb) == want
    assert fp % 8 == 0 and ldb % 8 == 0 and fp >= f and ldb == fp + 8  # + the ones column


def test_it_takes_float32_diag_and_spherical_with_many_components_on_tensor_core_gpus():
    lk = LargeKPass(SM90, Scratch(), lambda: 1 << 34)
    assert lk.supports(_data("diag"), 1, 1024)
    assert lk.supports(_data("spherical"), 4, MIN_COMPONENTS // 4)  # restarts count together
    assert not lk.supports(_data("diag"), 1, MIN_COMPONENTS - 1)
    assert not lk.supports(_data("diag", np.float64), 1, 1024)  # float64: the GEMM path
    assert not lk.supports(_data("full"), 1, 1024)
    assert not lk.supports(_data("tied"), 1, 1024)
    old = LaunchConfig(n_sm=80, smem_optin=98_304, compute_capability=70, tensor_cores=False)
    assert not LargeKPass(old, Scratch(), lambda: 1 << 34).supports(_data("diag"), 1, 1024)


@pytest.mark.parametrize("budget", [1 << 34, 1 << 28, 1 << 20])
def test_chunks_hold_the_l2_sized_temporary_within_the_scratch_allowance(budget):
    lk = LargeKPass(SM90, Scratch(), lambda: budget)
    data = _data("diag", n=10**6, d=128)
    _, _, ldb = geometry(128, "diag")
    rows = lk.chunk_rows(data, 1024, ldb)
    assert 256 <= rows <= STATS_ROWS and rows % 256 == 0
    assert rows * 1024 * 4 <= CHUNK_BYTES
    if budget >= 1 << 34:  # an ample budget: the chunk is the L2-sized one
        assert rows == CHUNK_BYTES // (4 * 1024) // 256 * 256
