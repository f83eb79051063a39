"""Without a GPU: the kernels a fit compiles, the warm-up's refusal and command line, the image."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from support.fake_device import fake_kernel_loading

import gmm_core
from gmm_core._cuda_loader import COMPILE_OPTIONS, CUDA_DIR
from gmm_core._device import cupy_unavailable_reason
from gmm_core._warmup import DEFAULT_SHAPES, SHAPES_ENV, parse_shape

pytest.importorskip("gmm_core._cupy")
from gmm_core._cupy import CupyData, CupyEngine, LaunchConfig, kernels, large_k_sparse  # noqa: E402
from gmm_core._cupy.kernels import KernelRef, kernel_ref  # noqa: E402
from gmm_core._warmup import kernels_for_shapes  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
NVCC = shutil.which("nvcc") or (
    "/usr/local/bin/nvcc" if Path("/usr/local/bin/nvcc").exists() else None
)
NO_GPU = cupy_unavailable_reason() is not None
#: an H100/H200 (sm_90, 227 KiB of shared memory per block) and an sm_86 card (99 KiB)
SM90 = LaunchConfig(n_sm=132, smem_optin=232_448, compute_capability=90)
SM86 = LaunchConfig(n_sm=84, smem_optin=101_376, compute_capability=86)
SM70 = LaunchConfig(n_sm=80, smem_optin=98_304, compute_capability=70, tensor_cores=False)


def sm90(**settings):
    return LaunchConfig(n_sm=132, smem_optin=232_448, compute_capability=90, **settings)


def names(config, cov, dtype, d, k, r, n, resident=True):
    engine = CupyEngine(config=config)
    data = CupyData([], resident, cov, np.dtype(dtype), n, d)
    return [ref.expr for ref in engine.kernel_refs(data, r, k)]


def test_kernel_names_are_spelled_as_the_sources_instantiate_them():
    assert kernel_ref(
        "em_diag.cu", "diag_pass", np.dtype("float32"), 16, 1, False, False, True
    ) == (
        "em_diag.cu",
        "diag_pass<float, 16, 1, false, false, true>",
    )
    assert (
        kernel_ref("em_full.cu", "full_constants", np.float64, 5).expr
        == "full_constants<double, 5>"
    )
    assert kernel_ref("em_diag.cu", "reduce_partials").expr == "reduce_partials"


def test_telemetry_fit_needs_the_tensor_core_pass_its_mstep_and_nothing_else():
    got = names(SM90, "diag", np.float32, 16, 32, 1, 10_000_000)
    assert got == [
        "prepare_params<float, 16, false>",
        "diag_pass_tc<16, 2, false, 256>",  # test_cuda_compile.HOT_KERNELS
        "reduce_partials",
        "diag_mstep<float, 16, false>",
    ]
    # 99 KiB of shared memory: the 128-thread variant; no tensor cores: the SIMT pass
    assert "diag_pass_tc<16, 2, false, 128>" in names(SM86, "diag", np.float32, 16, 32, 1, 10**7)
    assert "diag_pass<float, 16, 1, false, false, false>" in names(
        SM70, "diag", np.float32, 16, 32, 1, 10**7
    )
    # float64 never runs on tensor cores
    assert not any("_tc<" in n for n in names(SM90, "diag", np.float64, 16, 32, 1, 10**7))


def test_engine_switches_read_the_environment_with_their_defaults(monkeypatch):
    from gmm_core._cupy.config import WGMMA_ENV, env_flag

    monkeypatch.delenv(WGMMA_ENV, raising=False)
    assert env_flag(WGMMA_ENV, default=False) is False and env_flag(WGMMA_ENV) is True
    for on in ("1", "true", " YES ", "on"):
        monkeypatch.setenv(WGMMA_ENV, on)
        assert env_flag(WGMMA_ENV, default=False) is True
    for off in ("0", "False", "no", "off"):
        monkeypatch.setenv(WGMMA_ENV, off)
        assert env_flag(WGMMA_ENV) is False


def test_eight_telemetry_restarts_take_the_wgmma_pass_on_sm90_unless_turned_off():
    # GMM_CORE_WGMMA=0 (wgmma=False): the tensor-core pass
    off = names(sm90(wgmma=False), "diag", np.float32, 16, 32, 8, 10**7)
    assert "diag_pass_tc<16, 2, false, 256>" in off
    assert not any("_wg" in n for n in off)
    WG = SM90  # the default
    got = names(WG, "diag", np.float32, 16, 32, 8, 10_000_000)
    assert got == [
        "prepare_params<float, 16, false>",
        "diag_wg_params",
        "diag_pass_wg",
        "reduce_partials",
        "diag_mstep<float, 16, false>",
    ]
    # groups of 8 and a last group of 5 or more; 5-7 alone too
    for r in (5, 7, 13, 16):
        assert "diag_pass_wg" in names(WG, "diag", np.float32, 16, 32, r, 10**6), r
    # fewer restarts (or a last group of 1-4), other widths, float64, sm_86, small data: the
    # tensor-core pass as before
    for config, dtype, d, r, n in (
        (WG, np.float32, 16, 4, 10**6),
        (WG, np.float32, 16, 10, 10**6),
        (WG, np.float32, 12, 8, 10**6),
        (WG, np.float64, 16, 8, 10**6),
        (SM86, np.float32, 16, 8, 10**6),
        (WG, np.float32, 16, 8, 60_000),
    ):
        got = names(config, "diag", dtype, d, 32, r, n)
        assert not any("diag_pass_wg" in name for name in got), (config, dtype, d, r, n)
    # k-means' Lloyd passes of 8 restarts: diag_pass_tc's unguarded variant (a hard mixture has
    # every component far: the guarded wgmma pass would recompute every logit)
    engine = CupyEngine(config=WG)
    data = CupyData([], True, "diag", np.dtype(np.float32), 10**6, 16)
    kmeans = [ref.expr for ref in engine.kernel_refs(data, 8, 32, init_params="kmeans")]
    assert "diag_pass_tc<16, 2, false, 256, false>" in kmeans
    assert "diag_pass_tc<16, 2, false, 256>" in kmeans  # the Lloyd plans' occupancy query


def test_lloyd_passes_take_the_unguarded_tensor_core_pass_where_the_wgmma_pass_serves(
    monkeypatch,
):
    """engine.lloyd_pass: with diag_pass_wg chosen for the EM passes, Lloyd's passes run
    diag_pass_tc unguarded (a hard mixture has every component far: the always-guarded wgmma
    pass would recompute every logit), with plans made once per shape."""
    engine = CupyEngine(config=sm90(wgmma=True))
    data = CupyData([], True, "diag", np.dtype(np.float32), 10**6, 16)
    calls, plans_made = [], []

    def accumulate(strategy):
        def run(data, params, plans, guard=True):
            calls.append((strategy.name, guard))
            return "stats"

        return run

    tc_plans = engine.diag_pass_tc.plans

    def plans(data, r, k, *, fit_grid=True):
        plans_made.append(fit_grid)
        return tc_plans(data, r, k, fit_grid=False)  # no occupancy query without a GPU

    for strategy in (engine.diag_pass_wg, engine.diag_pass_tc):
        monkeypatch.setattr(strategy, "accumulate", accumulate(strategy))
    monkeypatch.setattr(engine.diag_pass_tc, "plans", plans)
    monkeypatch.setattr(engine, "compile_for_fit", lambda *a, **k: [])
    params = gmm_core._gaussian.Params(*(np.zeros((8, 32, 16)),) * 4)
    assert engine._fused_diag(data, 8, 32).strategy is engine.diag_pass_wg
    assert engine.lloyd_pass(data, params, None) == "stats"
    assert engine.lloyd_pass(data, params, None) == "stats"
    assert calls == [("diag_pass_tc", False)] * 2
    assert plans_made == [True]  # once per shape
    assert engine.accumulate(data, params, None) == "stats"  # EM: the wgmma pass, guarded
    assert calls[-1] == ("diag_pass_wg", True)


def test_full_fit_needs_the_fused_full_pass_where_shared_memory_holds_it():
    got = names(SM90, "full", np.float32, 32, 16, 1, 1_000_000)
    assert got == [
        "full_tc_params<32>",
        "full_pass_tc<32, true>",
        "reduce_partials",
        "full_constants<float, 32>",
        "full_mstep<32>",
        "em_update",  # the estimator's loop: its per-restart bookkeeping
    ]
    # sm_86: the operands do not fit, the GEMM path (constants and M-step kernels only)
    assert names(SM86, "full", np.float32, 32, 16, 1, 10**6) == [
        "full_constants<float, 32>",
        "full_mstep<32>",
        "em_update",
    ]
    # 24 components: U read through L1
    assert "full_pass_tc<32, false>" in names(SM90, "full", np.float32, 32, 24, 1, 10**6)
    # 33 components or float64: the GEMM path
    assert not any("full_pass_tc" in n for n in names(SM90, "full", np.float32, 32, 33, 1, 10**6))
    assert not any("full_pass_tc" in n for n in names(SM90, "full", np.float64, 32, 16, 1, 10**6))
    # beyond 48 features even the constants and the M-step are CuPy operations
    assert names(SM90, "full", np.float64, 64, 4, 1, 10**5) == ["em_update"]


def test_small_problems_need_the_persistent_kernel_only_in_the_device_loop():
    assert names(SM90, "diag", np.float32, 2, 5, 1, 500_000) == [
        "diag_em_small<float, 2, false, 8>",
        "prepare_params<float, 2, false>",
        "diag_mstep<float, 2, false>",
    ]
    assert names(sm90(small_kernel=False), "diag", np.float32, 2, 5, 1, 500_000)[:2] == [
        "prepare_params<float, 2, false>",
        "diag_pass<float, 2, 4, false, false, false>",
    ]
    # streamed data (no device loop): the pass, its reduction, and the estimator's loop with
    # its own M-step kernel, not the device loop's
    streamed = names(SM90, "diag", np.float32, 2, 5, 1, 500_000, resident=False)
    assert not any(n.startswith(("diag_em_small", "diag_mstep")) for n in streamed)
    assert "loop_mstep" in streamed
    # two restarts, or more rows than 2**21: passes
    assert not any("diag_em_small" in n for n in names(SM90, "diag", np.float32, 2, 5, 2, 500_000))
    assert not any("diag_em_small" in n for n in names(SM90, "diag", np.float32, 2, 5, 1, 1 << 22))


def test_where_occupancy_decides_the_tail_reduction_both_pass_variants_are_listed():
    got = names(SM90, "diag", np.float64, 6, 4, 3, 1 << 24)
    assert "diag_pass<double, 6, 4, false, false, false>" in got
    assert "diag_pass<double, 6, 4, false, false, true>" in got  # its last block runs the M-step
    assert "reduce_partials" in got


def test_tied_fits_compile_the_loop_bookkeeping_and_wide_ones_the_large_k_pass():
    loop = ["em_update"]
    dloop = ["em_update", "loop_mstep"]  # diag/spherical: the loop's M-step kernel as well
    gemms = ["lk_features", "lk_weights", "lk_rows", "lk_flush"]
    # the screened pass (the default) and the float32 GEMMs it sends listed rows through
    # (those of the default screen: LARGE_K_SCREEN_DEFAULT)
    screened = [ref.expr for ref in large_k_sparse.kernel_refs(SM90.large_k_screen, "spherical")]
    screened += gemms
    assert names(SM90, "tied", np.float64, 6, 4, 3, 10**5) == loop
    assert names(SM90, "spherical", np.float32, 128, 1024, 1, 10**6) == screened + dloop
    assert names(SM90, "diag", np.float64, 128, 1024, 1, 10**6) == dloop  # float64: GEMM path
    # past the fused passes' 32 features, 64 components and more take the large-K pass
    assert names(SM90, "diag", np.float32, 40, 64, 1, 10**6) == screened + dloop
    assert names(SM90, "diag", np.float32, 40, 63, 1, 10**6) == dloop
    # without the screen (GMM_CORE_LARGE_K_SPARSE=0), and past its 256 features: the GEMMs
    off = dataclasses.replace(SM90, large_k_sparse=False)
    assert names(off, "spherical", np.float32, 128, 1024, 1, 10**6) == gemms + dloop
    assert names(SM90, "diag", np.float32, 257, 1024, 1, 10**6) == gemms + dloop
    # opted into the fused kernels (GMM_CORE_LARGE_K_FUSED=1): up to 256 features, 32-component
    # blocks at 256 diag features; past 256, cuBLAS GEMMs
    on = dataclasses.replace(SM90, large_k_fused=True)
    fused = ["lkt_weights", "lkt_lse<false>", "lkt_stats<false, 64>"]
    assert names(on, "spherical", np.float32, 128, 1024, 1, 10**6) == fused + dloop
    fused = ["lkt_weights", "lkt_lse<true>", "lkt_stats<true, 64>"]
    assert names(on, "diag", np.float32, 40, 64, 1, 10**6) == fused + dloop
    assert "lkt_stats<true, 32>" in names(on, "diag", np.float32, 256, 1024, 1, 10**6)
    assert names(on, "diag", np.float32, 257, 1024, 1, 10**6) == gemms + dloop
    # where float64 is fast (large_k_f64): the float64 E-step's kernels instead of the float32
    f64 = dataclasses.replace(SM90, large_k_f64=True)
    exact = ["lk_features64", "lk_weights64", "lk_rows64", "lk_flush64"]
    assert names(f64, "spherical", np.float32, 128, 1024, 1, 10**6) == exact + dloop


def test_default_warmup_shapes_cover_the_pipeline_and_the_benchmark_kernels():
    got = {ref.expr for ref in kernels_for_shapes(DEFAULT_SHAPES, SM90)}
    assert {
        "full_constants<double, 6>",  # the retraining pipeline's default fit
        "full_mstep<6>",
        "diag_pass_tc<16, 2, false, 256>",
        "full_pass_tc<32, true>",
        "diag_em_small<float, 2, false, 8>",
        "kpp_potentials<double>",  # k-means++ seeding (init_params="kmeans", the default)
        "kpp_update<float>",
    } <= got


def test_kmeans_initialisation_adds_the_seeding_kernels_and_the_lloyd_passes():
    engine = CupyEngine(config=SM90)
    data = CupyData([], True, "full", np.dtype(np.float32), 10**6, 32)
    em = [r.expr for r in engine.kernel_refs(data, 1, 16)]
    got = [r.expr for r in engine.kernel_refs(data, 1, 16, init_params="kmeans")]
    assert got[: len(em)] == em
    assert got[len(em) :] == [
        "kpp_potentials<float>",
        "kpp_update<float>",
        "gather_rows<float>",
        "kpp_choose<float>",
        "kpp_block_sums<float>",  # the candidate sampling: float32 distances
        "kpp_sample<float>",
        "lloyd_step<double>",  # Lloyd: the update, and the passes of a hard diag mixture
        "prepare_params<float, 32, false>",
        "diag_pass<float, 32, 2, false, false, false>",
        "diag_mstep<float, 32, false>",
    ]
    assert [r.expr for r in engine.kernel_refs(data, 1, 16, init_params="random")] == em


@pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) is not installed")
def test_every_kernel_the_warmup_lists_compiles(tmp_path):
    """The listed name expressions are instantiations the sources accept (nvcc, sm_90)."""
    refs = kernels_for_shapes(DEFAULT_SHAPES, SM90) + kernels_for_shapes(DEFAULT_SHAPES, SM86)
    by_file: dict[str, set[str]] = {}
    for ref in refs:
        by_file.setdefault(ref.file, set()).add(ref.expr)
    for file, exprs in sorted(by_file.items()):
        wrapper = tmp_path / f"inst_{file}"
        lines = ",\n".join(f"    (void*)&{e}" for e in sorted(exprs))
        wrapper.write_text(
            f'#include "{CUDA_DIR / file}"\nvoid* gmm_instances[] = {{\n{lines}\n}};\n'
        )
        cmd = [NVCC, "-arch=sm_90", "--cubin", *COMPILE_OPTIONS, "-o", str(tmp_path / "x.cubin")]
        proc = subprocess.run([*cmd, str(wrapper)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr


def test_kernels_compile_concurrently_and_a_failed_one_again_in_the_caller(monkeypatch):
    """Four modules compile in four threads at once (a barrier that only opens when all four
    wait); the one that fails in its thread compiles again, in the calling thread."""
    n = 4
    barrier = threading.Barrier(n, timeout=30)
    calls: list[tuple[str, bool]] = []

    def load(ref, options=()):
        in_caller = threading.current_thread() is threading.main_thread()
        calls.append((ref.expr, in_caller))
        if not in_caller:
            barrier.wait()
            if ref.expr == "k3":
                raise RuntimeError("failed in a thread")
        return ref.expr

    fake_kernel_loading(monkeypatch, kernels, load)
    refs = [KernelRef("em_diag.cu", f"k{i}") for i in range(n)]
    assert kernels.compile_kernels([*refs, refs[0]], max_workers=n) == ["k0", "k1", "k2", "k3"]
    assert sorted(name for name, in_caller in calls if not in_caller) == ["k0", "k1", "k2", "k3"]
    assert [name for name, in_caller in calls if in_caller] == ["k3"]


def test_parse_shape_reads_the_command_line_form():
    assert parse_shape("16,32,diag,float32,1") == (16, 32, "diag", "float32", 1)
    for bad in (
        "16,32,diag,float32",
        "16,32,round,float32,1",
        "16,32,diag,int8,1",
        "0,1,diag,float32,1",
    ):
        with pytest.raises(ValueError):
            parse_shape(bad)


@pytest.mark.skipif(not NO_GPU, reason="a GPU is usable here: warmup would compile")
def test_warmup_without_a_gpu_raises_naming_the_reason():
    with pytest.raises(RuntimeError, match="no kernels compiled: .*(GPU|CUDA|CuPy)"):
        gmm_core.warmup([(16, 32, "diag", "float32", 1)])


@pytest.mark.skipif(not NO_GPU, reason="a GPU is usable here: the command would compile")
def test_warmup_command_exits_0_without_a_gpu_and_says_so():
    env = {**os.environ, SHAPES_ENV: "2,5,diag,float32,1"}
    done = subprocess.run(
        [sys.executable, "-m", "gmm_core.warmup"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "no GPU, nothing compiled" in done.stdout
    assert "RuntimeWarning" not in done.stderr  # the module is not imported twice


def test_warmup_command_rejects_a_malformed_shape():
    done = subprocess.run(
        [sys.executable, "-m", "gmm_core.warmup", "--shape", "16,32,diag"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 2 and "a shape is" in done.stderr


def test_gpu_worker_image_warms_the_kernels_before_taking_tasks():
    text = (REPO / "docker" / "Dockerfile.gpu-worker").read_text()
    entrypoint = re.search(r"^ENTRYPOINT (.+)$", text, re.MULTILINE).group(1)
    assert "python -m gmm_core.warmup" in entrypoint and 'exec \\"$@\\"' in entrypoint
    assert re.search(r"CUPY_CACHE_DIR=/opt/cupy-cache", text)
    compose = (REPO / "docker" / "compose.yaml").read_text()
    assert "- cupy-cache:/opt/cupy-cache" in compose and "\n  cupy-cache:\n" in compose


def test_a_dropped_engine_is_freed_at_once_not_by_the_garbage_collector():
    """No reference cycle through the engine: its device buffers (a fit's data copy, the device
    loop) go back when the fit drops it (a cycle kept 3 GB on an H200 after telemetry fits)."""
    import gc
    import weakref

    gc.disable()
    try:
        engine = CupyEngine(config=SM90, memory_budget_bytes=1 << 30)
        alive = weakref.ref(engine)
        assert engine.gemm.budget() == 1 << 30
        del engine
        assert alive() is None
    finally:
        gc.enable()
