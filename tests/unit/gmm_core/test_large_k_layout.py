"""The large-K pass's layout and choice, without a GPU (numerics: tests/gpu/test_gpu_large_k.py)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("gmm_core._cupy")
from gmm_core._cupy import CupyData, LaunchConfig  # noqa: E402
from gmm_core._cupy.data import Scratch  # noqa: E402
from gmm_core._cupy.large_k import (  # noqa: E402
    CHUNK_BYTES,
    FUSED_KERNELS,
    FUSED_MAX_FEATURES,
    MIN_COMPONENTS,
    STATS_ROWS,
    LargeKPass,
    fused_geometry,
    fused_smem,
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


@pytest.mark.parametrize(
    ("d", "cov", "want"),
    [
        (128, "spherical", (128, 128, 64)),
        (40, "spherical", (64, 64, 64)),  # padded to whole 32-feature chunks
        (128, "diag", (128, 256, 64)),  # [x, x^2]
        (160, "diag", (160, 320, 32)),  # 64 components' weights would not fit shared memory
        (256, "diag", (256, 512, 32)),
    ],
)
def test_fused_kernels_pad_features_to_chunks_and_halve_blocks_past_256_products(d, cov, want):
    dp, fi, bn = fused_geometry(d, cov)
    assert (dp, fi, bn) == want
    lse, stats = fused_smem(d, cov)
    # the weights a lkt_stats block keeps: fi / 32 chunks x bn components x 32 x (hi, lo)
    assert stats > (fi // 32) * bn * 32 * 2 * 4
    assert max(lse, stats) <= SM90.smem_optin  # every width up to 256 fits an H100/H200


def test_the_fused_pass_is_opt_in_and_takes_up_to_256_features():
    lk = LargeKPass(SM90, Scratch(), lambda: 1 << 34)
    assert not lk.fused(_data("diag"))  # off by default: the cuBLAS path is faster today
    on = LargeKPass(
        LaunchConfig(n_sm=132, smem_optin=232_448, compute_capability=90, large_k_fused=True),
        Scratch(),
        lambda: 1 << 34,
    )
    assert on.fused(_data("diag", d=FUSED_MAX_FEATURES))
    assert not on.fused(_data("diag", d=FUSED_MAX_FEATURES + 1))
    assert on.fused(_data("spherical", d=3))
    small = LaunchConfig(n_sm=80, smem_optin=101_376, compute_capability=86, large_k_fused=True)
    assert not LargeKPass(small, Scratch(), lambda: 1 << 34).fused(_data("diag", d=128))
    assert {r.expr for r in on.kernel_refs(_data("diag", d=256))} <= set(FUSED_KERNELS)
    dense = LargeKPass(dataclasses.replace(SM90, large_k_sparse=False), Scratch(), lambda: 1)
    assert [r.file for r in dense.kernel_refs(_data("diag"))] == ["em_largek.cu"] * 4
    # the screened pass (on by default) launches its own kernels and the dense ones
    files = [r.file for r in lk.kernel_refs(_data("diag"))]
    assert files.count("em_largek.cu") == 4 and "em_largek_sparse.cu" in files


def test_every_pass_is_screened_whatever_the_engine_ran_before(monkeypatch):
    """Review: a back-off kept on the engine (skip the screen for a few passes after one that
    listed most rows) made a pass's path, dense float32 or screened float64, depend on what
    the engine had run before: dask partitions on shared per-thread engines, the selection's
    candidates and the Lloyd passes before EM. Every pass is screened; the rows it lists take
    the dense pass within it."""
    from gmm_core._cupy import large_k, large_k_sparse

    data = _data("diag", n=1000)
    calls = []

    def screened(lk, data, params, active):
        calls.append("screened")
        return "stats"

    class Dense:
        def __init__(self, *args):
            calls.append("dense")

    monkeypatch.setattr(large_k_sparse, "accumulate", screened)
    monkeypatch.setattr(large_k, "DensePass", Dense)
    lk = LargeKPass(SM90, Scratch(), lambda: 1 << 34)
    params = SimpleNamespace(means=np.zeros((1, 1024, 128)))
    assert [lk.accumulate(data, params) for _ in range(4)] == ["stats"] * 4
    assert calls == ["screened"] * 4


def test_the_full_pass_raises_its_shared_memory_limit_once_and_never_lowers_it(monkeypatch):
    """``FullPassTC.kernels`` sets the pass's dynamic shared-memory limit through
    ``kernels.allow_dynamic_smem``, as the other passes do: raised to the largest size a launch
    asks for, never lowered by a smaller one."""
    from types import SimpleNamespace

    from gmm_core._cupy import full_pass_tc, kernels

    # the attribute memos are keyed by id(): fresh ones, so no fake outlives this test in them
    monkeypatch.setattr(kernels, "_dynamic_smem", {})
    monkeypatch.setattr(kernels, "_carveout_set", set())

    made: dict[str, SimpleNamespace] = {}

    def load(ref, options=()):
        return made.setdefault(ref.expr, SimpleNamespace(max_dynamic_shared_size_bytes=48 * 1024))

    monkeypatch.setattr(full_pass_tc, "load_kernel", load)
    config = LaunchConfig(n_sm=132, smem_optin=232_448, compute_capability=90)
    strategy = full_pass_tc.FullPassTC(config, Scratch())
    _, kern, _ = strategy.kernels(24, True, 150_000)
    assert kern.max_dynamic_shared_size_bytes == 150_000
    strategy.kernels(24, True, 120_000)  # a smaller launch of the same kernel
    assert kern.max_dynamic_shared_size_bytes == 150_000
    strategy.kernels(24, True, 200_000)
    assert kern.max_dynamic_shared_size_bytes == 200_000


@pytest.mark.parametrize(
    ("d", "cov", "want"),
    [
        (128, "diag", (256, 256, 520)),  # [x, x^2]; [hi x, lo x, hi x^2, lo x^2, 1]
        (128, "spherical", (129, 136, 264)),  # [x, |x|^2]; [hi x, lo x, hi |x|^2, lo |x|^2, 1]
        (72, "spherical", (73, 80, 152)),
        (1, "diag", (2, 8, 8)),
    ],
)
def test_the_float64_e_step_splits_every_statistic_into_tf32_hi_and_lo(d, cov, want):
    from gmm_core._cupy.large_k_f64 import geometry as geometry64

    f, fp, ldf = geometry64(d, cov)
    assert (f, fp, ldf) == want
    assert fp % 8 == 0 and ldf % 8 == 0 and ldf >= 2 * f + 1  # two columns a statistic + N_k


def test_the_float64_e_step_serves_where_the_config_says_and_the_fused_pass_comes_first():
    import dataclasses

    from gmm_core._cupy import large_k_f64

    on = LargeKPass(dataclasses.replace(SM90, large_k_f64=True), Scratch(), lambda: 1 << 34)
    assert [r.expr for r in on.kernel_refs(_data("diag"))] == list(large_k_f64.KERNELS)
    both = dataclasses.replace(SM90, large_k_f64=True, large_k_fused=True)
    fused = LargeKPass(both, Scratch(), lambda: 1 << 34).kernel_refs(_data("diag"))
    assert {r.expr for r in fused} <= set(FUSED_KERNELS)
    # past the fused kernels' 256 features the float64 E-step serves
    wide = LargeKPass(both, Scratch(), lambda: 1 << 34).kernel_refs(_data("diag", d=300))
    assert [r.expr for r in wide] == list(large_k_f64.KERNELS)


@pytest.mark.parametrize(("budget", "kp"), [(1 << 34, 1024), (1 << 34, 32768), (1 << 26, 1024)])
def test_float64_chunks_hold_whole_slices_within_the_scratch_allowance(budget, kp):
    from gmm_core._cupy import large_k_f64
    from gmm_core._cupy.data import scratch_bytes

    data = _data("diag", n=10**6, d=128)
    _, fp, ldf = large_k_f64.geometry(128, "diag")
    rows = large_k_f64.chunk_rows(data, budget, kp, fp, ldf)
    assert rows >= 32 and rows * kp * 8 <= max(large_k_f64.CHUNK_BYTES, 32 * kp * 8)
    if rows >= large_k_f64.SLICE_ROWS:
        assert rows % large_k_f64.SLICE_ROWS == 0
    per_row = 12 * kp + 8 * fp + 4 * ldf
    assert rows * per_row <= max(scratch_bytes(data, budget), 32 * per_row)
    if budget >= 1 << 34 and kp == 1024:
        assert rows == large_k_f64.CHUNK_BYTES // (8 * kp)


def test_the_screen_setting_reads_the_environment_and_names_its_values(monkeypatch):
    from gmm_core._cupy import config

    monkeypatch.delenv(config.LARGE_K_SCREEN_ENV, raising=False)
    assert config.screen_setting() == config.LARGE_K_SCREEN_DEFAULT == "bf16"
    monkeypatch.setenv(config.LARGE_K_SCREEN_ENV, " TF32 ")
    assert config.screen_setting() == "tf32"
    monkeypatch.setenv(config.LARGE_K_SCREEN_ENV, "fp16")
    with pytest.raises(ValueError, match="GMM_CORE_LARGE_K_SCREEN='fp16'.*bf16, tf32"):
        config.screen_setting()
