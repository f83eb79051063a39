"""Without a GPU: every CUDA source compiles for sm_90, and backends fall back or refuse clearly."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gmm_core import GaussianMixture, _nvrtc
from gmm_core._cuda_loader import ARCH_SPECIFIC, COMPILE_OPTIONS, CUDA_DIR, SAMPLE_INSTANCES
from gmm_core._engine import cupy_unavailable_reason

NVCC = shutil.which("nvcc") or (
    "/usr/local/bin/nvcc" if Path("/usr/local/bin/nvcc").exists() else None
)
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) is not installed")
CU_FILES = sorted(CUDA_DIR.glob("*.cu"))
# telemetry (float32, D=16, K=32, diag): the tensor-core pass, and the SIMT pass that serves
# float64 data, GPUs older than sm_80 and GMM_CORE_TENSOR_CORES=0; the full case (float32,
# D=32, K=16): the fused full-covariance pass
HOT_KERNELS = (
    ("em_diag.cu", "diag_pass_tc<16, 2, false, 256>"),
    ("em_diag.cu", "diag_pass<float, 16, 1, false, false, false>"),
    ("em_full.cu", "full_pass_tc<32, true>"),
    ("em_full.cu", "full_pass_tc<32, false>"),
)


def test_every_cuda_source_has_sample_instances():
    assert CU_FILES, "gmm_core/cuda holds no .cu files"
    assert {p.name for p in CU_FILES} == set(SAMPLE_INSTANCES)


@needs_nvcc
@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_cuda_source_compiles_for_sm90(path, tmp_path):
    """nvcc builds the file for sm_90 (or its own target) with the template instantiations the
    engine launches."""
    wrapper = tmp_path / f"inst_{path.stem}.cu"
    refs = ",\n".join(f"    (void*)&{name}" for name in SAMPLE_INSTANCES[path.name])
    wrapper.write_text(f'#include "{path}"\nvoid* gmm_instances[] = {{\n{refs}\n}};\n')
    cubin = tmp_path / f"{path.stem}.cubin"
    arch = ARCH_SPECIFIC.get(path.name, "sm_90")  # wgmma sources: the sm_90a target
    cmd = [NVCC, f"-arch={arch}", "--cubin", "-Xptxas", "-v", *COMPILE_OPTIONS, "-o", str(cubin)]
    proc = subprocess.run([*cmd, str(wrapper)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert cubin.stat().st_size > 0
    assert "error" not in proc.stderr.lower()
    # every listed template became a kernel in the cubin (ptxas reports one entry each)
    entries = re.findall(r"Compiling entry function '([^']+)'", proc.stderr)
    assert len(entries) >= len(SAMPLE_INSTANCES[path.name])


@needs_nvcc
@pytest.mark.parametrize(("source", "kernel"), HOT_KERNELS, ids=[k for _, k in HOT_KERNELS])
def test_hot_kernel_keeps_its_registers(source, kernel):
    """The benchmark cases' pass instantiations must not spill to local memory."""
    path = CUDA_DIR / source
    proc = subprocess.run(
        [
            NVCC,
            "-arch=sm_90",
            "--cubin",
            "-Xptxas",
            "-v",
            *COMPILE_OPTIONS,
            "-o",
            "/dev/null",
            "-x",
            "cu",
            "-",
        ],
        input=f'#include "{path}"\nvoid* p = (void*)&{kernel};\n',
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "bytes spill stores" in proc.stderr  # ptxas reported the resources
    assert not re.search(r"[1-9]\d* bytes spill stores", proc.stderr), proc.stderr


def _no_gpu() -> bool:
    return cupy_unavailable_reason() is not None


@pytest.mark.skipif(not _no_gpu(), reason="a GPU is usable here: the fallback is not exercised")
def test_auto_falls_back_to_numpy_and_says_why(caplog):
    X = np.random.default_rng(0).normal(size=(200, 2))
    with caplog.at_level(logging.INFO, logger="gmm_core"):
        gm = GaussianMixture(2, backend="auto", random_state=0).fit(X)
    assert gm.backend_ == "numpy"
    assert any("uses NumPy" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(not _no_gpu(), reason="a GPU is usable here: backend='cupy' would run")
def test_cupy_backend_without_gpu_raises_naming_the_fix():
    X = np.random.default_rng(0).normal(size=(200, 2))
    with pytest.raises(RuntimeError, match="backend='cupy' cannot run.*backend='auto'"):
        GaussianMixture(2, backend="cupy").fit(X)


@pytest.mark.parametrize("n_features", [4, 8, 12, 16])
def test_tensor_core_geometry_fits_every_gpu_generation(n_features):
    """The tensor-core pass's plans cover every restart once in groups dividing the block's
    warps, and the 128-thread fallback fits the 99 KiB per block of sm_86/89/120 for every shape
    the pass serves (the 256-thread kernel needs 110 KiB with 17-32 components)."""
    ce = pytest.importorskip("gmm_core._cupy")
    data = ce.CupyData([], True, "diag", np.dtype(np.float32), 1_000_003, n_features)
    for n_components in (1, 5, 16, 17, 32):
        for n_restarts in range(1, 11):
            for threads in (256, 128):
                plans = ce.CupyEngine._tc_geometry(data, n_restarts, n_components, threads)
                assert [p.r0 for p in plans] == [0, *(p.r1 for p in plans[:-1])]
                assert plans[-1].r1 == n_restarts
                warps = threads // 32
                assert all(warps % (p.r1 - p.r0) == 0 for p in plans)
                c = 1 + 2 * n_features
                assert all(p.pstride == (p.r1 - p.r0) * (n_components * c + 1) for p in plans)
                if threads == 128:
                    assert max(p.smem_bytes for p in plans) <= 101_376


class _FakeEvent:
    def __init__(self, log: list, n: int) -> None:
        self.log, self.n = log, n

    def synchronize(self) -> None:
        self.log.append(("wait", self.n))


class _FakeStream:
    """Records the order of launches, flag copies and waits (no GPU)."""

    def __init__(self) -> None:
        self.log: list = []

    def record(self) -> _FakeEvent:
        return _FakeEvent(self.log, sum(1 for e in self.log if e[0] == "launch"))


class _FakeFlags:
    """Device restart flags (4, R): restart r runs until launch ``stop[r]``, or fails there."""

    def __init__(self, stream: _FakeStream, stop: list[int], fail_at: int | None = None) -> None:
        self.stream, self.stop, self.fail_at = stream, stop, fail_at

    def get(self, stream, out, blocking):
        assert stream is self.stream and blocking is False
        n = sum(1 for e in self.stream.log if e[0] == "launch")
        out[:] = 0
        out[0] = [int(n < s) for s in self.stop]
        if self.fail_at is not None and n >= self.fail_at:
            out[3, 0] = 1
        self.stream.log.append(("copy", n))


@pytest.mark.parametrize(
    ("stop", "fail_at", "max_iter", "launches"),
    [
        ([2, 3], None, 100, 4),  # all stopped after launch 3: seen while launch 4 runs
        ([50, 50], None, 40, 4),  # max_iter: 4 launches of 10
        ([50, 50], 2, 100, 3),  # failure in launch 2, seen while launch 3 runs
        ([1], None, 10, 1),  # one launch is all max_iter needs
    ],
)
def test_device_loop_reads_flags_one_launch_late(stop, fail_at, max_iter, launches):
    """drive_launches (run_em of the one- and multi-GPU engines) never waits for the launch it
    just queued: the flags of launch i are read while launch i + 1 runs."""
    ce = pytest.importorskip("gmm_core._cupy")
    stream = _FakeStream()
    flags = _FakeFlags(stream, stop, fail_at)
    host = [np.zeros((4, len(stop)), np.int32) for _ in range(2)]

    def launch() -> None:
        stream.log.append(("launch", sum(1 for e in stream.log if e[0] == "launch") + 1))

    done = ce.drive_launches(launch, 10, max_iter, flags, host, stream)
    assert done == 10 * launches
    assert sum(1 for e in stream.log if e[0] == "launch") == launches
    for i, entry in enumerate(stream.log):
        if entry[0] == "wait":  # waiting for launch n only once launch n + 1 is queued
            queued = sum(1 for e in stream.log[:i] if e[0] == "launch")
            assert queued == entry[1] + 1


@needs_nvcc
def test_full_tc_shared_memory_matches_the_kernel(tmp_path):
    """The launcher's shared-memory size of full_pass_tc (gmm_core._cupy.full_tc_smem) is
    the kernel's own layout (full_tc_smem<D> in em_full.cu), computed by a host program built
    with nvcc: a smaller launch would overrun shared memory, a larger one refuse to launch."""
    ce = pytest.importorskip("gmm_core._cupy")
    shapes = [
        (d, k, usm)
        for d in (1, 5, 8, 16, 17, 24, 31, 32)
        for k in (1, 2, 5, 16, 17, 30, 64)
        for usm in (True, False)
    ]
    program = tmp_path / "smem.cu"
    lines = "\n".join(
        f'    std::printf("%zu\\n", full_tc_smem<{d}>({k}, {str(usm).lower()}));'
        for d, k, usm in shapes
    )
    program.write_text(
        f'#include <cstdio>\n#include "{CUDA_DIR / "em_full.cu"}"\nint main() {{\n{lines}\n}}\n'
    )
    exe = tmp_path / "smem"
    build = subprocess.run(
        [NVCC, "-arch=sm_90", *COMPILE_OPTIONS, "-o", str(exe), str(program)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    got = [int(v) for v in run.stdout.split()]
    assert got == [ce.full_tc_smem(d, k, usm) for d, k, usm in shapes]


@needs_nvcc
def test_the_mma_screens_shared_memory_matches_the_kernel(tmp_path):
    """``large_k_sparse.mma_smem`` is ``lks_mma``'s own layout (``lkm::layout`` in
    em_largek_sparse.cu), computed by host programs built with nvcc: the default build and
    the tuning variants' list length and stage (-DLKM_CAP, -DLKM_KC)."""
    sparse = pytest.importorskip("gmm_core._cupy.large_k_sparse")
    for cap, kc in ((sparse.MMA_CAP, sparse.MMA_KC), (32, 64)):
        inners = list(range(kc, 513, kc))
        program = tmp_path / f"lkm_{cap}_{kc}.cu"
        lines = "\n".join(f'    std::printf("%d\\n", 4 * lkm::layout({p}).end);' for p in inners)
        program.write_text(
            f'#include <cstdio>\n#include "{CUDA_DIR / "em_largek_sparse.cu"}"\n'
            f"int main() {{\n{lines}\n}}\n"
        )
        exe = tmp_path / f"lkm_{cap}_{kc}"
        defines = [f"-DLKM_CAP={cap}", f"-DLKM_KC={kc}"]
        build = subprocess.run(
            [NVCC, "-arch=sm_90", *COMPILE_OPTIONS, *defines, "-o", str(exe), str(program)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert build.returncode == 0, build.stderr
        run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
        want = [sparse.mma_smem(p, cap, kc) for p in inners]
        assert [int(v) for v in run.stdout.split()] == want
    # d = 256 diag (inner 512) fits an H100's 227 KiB opt-in, not an A100's 163 KiB (the BF16
    # GEMM screen takes it there), and one restart only
    h100, a100 = 227 * 1024, 163 * 1024
    assert sparse.mma_serves(1, 1, 1024, 512, h100) and not sparse.mma_serves(1, 1, 1024, 512, a100)
    assert sparse.mma_serves(1, 1, 4096, 256, a100)
    assert not sparse.mma_serves(2, 2, 1024, 256, h100)
    assert not sparse.mma_serves(0, 1, 64, 64, h100)


#: sources small enough to compile with NVRTC in seconds (the fused passes' files take minutes:
#: ``make kernels`` compiles them)
NVRTC_FILES = (
    "em_largek.cu",
    "em_largek_sparse.cu",
    "em_largek_tc.cu",
    "gemm_rows.cu",
    "init.cu",
    "em_loop.cu",
    "em_diag_wg.cu",
)


@pytest.mark.skipif(
    _nvrtc.unavailable_reason() is not None, reason=f"NVRTC: {_nvrtc.unavailable_reason()}"
)
@pytest.mark.parametrize("file", NVRTC_FILES)
def test_cuda_source_compiles_with_nvrtc(file):
    """NVRTC, the compiler a GPU worker runs, builds the sample instances: it sees no host
    headers (nvcc's ``math.h`` defines what NVRTC lacks, e.g. ``INFINITY``)."""
    from gmm_core._build_kernels import _compile_group

    arch, _, _, compiled, packed, _ = _compile_group(
        "sm_90", file, "test", list(SAMPLE_INSTANCES[file])
    )
    assert arch == "sm_90"
    assert set(compiled.lowered_names) == set(SAMPLE_INSTANCES[file])
    assert packed


@needs_nvcc
def test_the_large_k_row_kernel_rounds_its_log_densities_before_subtracting():
    """``lk_rows`` takes max and log-sum-exp over float32-rounded log2 densities; its
    responsibilities must use the same rounded values. A plain ``mul.f32`` by log2(e) may be
    fused by ptxas into the following subtraction (an FMA keeps the unrounded product), which
    turned a Lloyd pass's 0/1 responsibilities into inf on an H200: every product by log2(e)
    must be ``mul.rn`` (never contracted)."""
    proc = subprocess.run(
        [NVCC, "-arch=sm_90", "--ptx", *COMPILE_OPTIONS, "-o", "-", "-x", "cu", "-"],
        input=f'#include "{CUDA_DIR / "em_largek.cu"}"\n',
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    body = proc.stdout.split(".entry _Z7lk_rows", 1)[1].split("\n}\n", 1)[0]
    l2e = "0f3FB8AA3B"  # log2(e) in float32
    regs = set(re.findall(rf"mov\.f32\s+(%f\d+), {l2e};", body))
    products = [
        line
        for line in body.splitlines()
        if re.match(r"\s*(mul|fma)\.", line)
        and (l2e in line or any(re.search(rf"{re.escape(r)}\b", line) for r in regs))
    ]
    assert products, "lk_rows no longer multiplies by log2(e): update this test"
    bad = [line.strip() for line in products if not re.match(r"\s*mul\.rn\.f32", line)]
    assert not bad, bad


def _probe_ptx(tmp_path: Path, module: str, *extra: str) -> str:
    """PTX for sm_90 of ``benchmarks/<module>.py``'s ``SOURCE`` and its ``extra`` attributes
    (explicit instances), tc.cuh on the include path."""
    import importlib
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    probe = importlib.import_module(f"benchmarks.{module}")
    source = "".join(getattr(probe, name) for name in ("SOURCE", *extra))
    src, ptx = tmp_path / f"{module}.cu", tmp_path / f"{module}.ptx"
    src.write_text(source)
    assert NVCC is not None  # the callers are @needs_nvcc
    cmd = [NVCC, "-std=c++17", "-arch=sm_90", f"-I{CUDA_DIR}", "--ptx", "-o", str(ptx), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return ptx.read_text()


@needs_nvcc
def test_the_mma_peak_probe_compiles_every_instruction(tmp_path):
    """benchmarks/probe_mma_peak.py: TF32, FP16 and BF16 mma.sync chains (the next device run's
    rates for the cheaper exact products, benchmarks/tc_emulate.py)."""
    text = _probe_ptx(tmp_path, "probe_mma_peak")
    for shape in (
        "m16n8k8.row.col.f32.tf32",
        "m16n8k16.row.col.f32.f16",
        "m16n8k16.row.col.f32.bf16",
    ):
        assert f"mma.sync.aligned.{shape}" in text, shape


@needs_nvcc
def test_the_mma_rounding_probe_compiles(tmp_path):
    """benchmarks/probe_mma_rounding.py: one TF32 and one FP16 mma.sync per warp."""
    text = _probe_ptx(tmp_path, "probe_mma_rounding")
    assert "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in text
    assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in text


@needs_nvcc
def test_the_fp16_lse_probe_compiles_to_fp16_mma(tmp_path):
    """benchmarks/probe_fp16_lse.py's kernel (the FP16 form of lkt_lse, not yet run on a GPU)."""
    text = _probe_ptx(tmp_path, "probe_fp16_lse", "NVCC_INSTANCES")
    assert text.count("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32") >= 2
    assert "tf32" not in text


@needs_nvcc
def test_the_wgmma_probe_compiles_for_sm90a(tmp_path):
    """benchmarks/probe_wgmma.py's generated CUDA (the layouts the next passes build on)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from benchmarks.probe_wgmma import cuda_source

    src = tmp_path / "probe_wgmma.cu"
    src.write_text(cuda_source())
    cmd = [NVCC, "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "-Xptxas", "-v"]
    ptx = tmp_path / "probe_wgmma.ptx"
    proc = subprocess.run(
        [*cmd, "--ptx", "-o", str(ptx), str(src)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    text = ptx.read_text()
    for shape in ("m64n64k8", "m64n128k8", "m64n256k8"):
        assert f"wgmma.mma_async.sync.aligned.{shape}.f32.tf32.tf32" in text, shape
    assert "wgmma.commit_group" in text and "wgmma.wait_group" in text


@needs_nvcc
@pytest.mark.parametrize(("d", "nwg", "pipe", "vec", "sm1"), [(16, 2, 2, 0, 0), (12, 1, 0, 1, 1)])
def test_the_experimental_wgmma_pass_compiles_without_spills(tmp_path, d, nwg, pipe, vec, sm1):
    """benchmarks/wgmma_pass.py's kernel: no spills, no serialised wgmma (ptxas C75xx)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from benchmarks.wgmma_pass import source

    src = tmp_path / "wg_pass.cu"
    src.write_text(source(d, nwg, pipe, 0, vec, sm1))
    cmd = [NVCC, "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "--cubin", "-Xptxas", "-v"]
    out = tmp_path / "wg_pass.cubin"
    proc = subprocess.run(
        [*cmd, "-o", str(out), str(src)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    assert "C75" not in proc.stderr, proc.stderr  # ptxas: wgmma serialised or waits injected
    assert "warning" not in proc.stderr.lower(), proc.stderr
    assert "bytes spill stores" in proc.stderr  # ptxas reported every kernel
    assert not re.search(r"[1-9][0-9]* bytes spill stores", proc.stderr), proc.stderr


@needs_nvcc
def test_the_wgmma_pass_compiles_to_wgmma_without_serialising_it(tmp_path):
    """em_diag_wg.cu for sm_90a: both products are wgmma (13 RS + 8 SS per tile), ptxas does
    not serialise them (C75xx), and what spills is a few words (the kernel holds 255
    registers; measured with them on an H200, docs/benchmarks.md)."""
    path = CUDA_DIR / "em_diag_wg.cu"
    wrapper = tmp_path / "inst.cu"
    refs = ", ".join(f"(void*)&{name}" for name in SAMPLE_INSTANCES[path.name])
    wrapper.write_text(f'#include "{path}"\nvoid* gmm_instances[] = {{{refs}}};\n')
    ptx = tmp_path / "wg.ptx"
    cmd = [NVCC, "-arch=sm_90a", "-Xptxas", "-v", *COMPILE_OPTIONS]
    proc = subprocess.run(
        [*cmd, "--ptx", "-o", str(ptx), str(wrapper)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    text = ptx.read_text()
    # the loop's 13 + 8 and the prologue's E-step
    assert text.count("wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32") == 13 + 8 + 13
    cubin = tmp_path / "wg.cubin"
    proc = subprocess.run(
        [*cmd, "--cubin", "-o", str(cubin), str(wrapper)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "C75" not in proc.stderr, proc.stderr
    spills = [int(b) for b in re.findall(r"(\d+) bytes spill stores", proc.stderr)]
    assert spills and max(spills) <= 64, proc.stderr


@needs_nvcc
def test_the_research_rows_pass_compiles_without_spills(tmp_path):
    """benchmarks/wgmma_pass_rows.py (the research form of em_diag_wg.cu) for sm_90a."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from benchmarks.wgmma_pass_rows import source

    src = tmp_path / "rows.cu"
    src.write_text(source(16, 1, 1, 1))
    out = tmp_path / "rows.cubin"
    cmd = [NVCC, "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "--cubin", "-Xptxas", "-v"]
    proc = subprocess.run([*cmd, "-o", str(out), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "C75" not in proc.stderr, proc.stderr
    assert " 0 bytes spill stores" in proc.stderr and "warning" not in proc.stderr.lower()


@pytest.mark.skipif(
    _nvrtc.unavailable_reason() is not None, reason=f"NVRTC: {_nvrtc.unavailable_reason()}"
)
def test_the_runtime_options_build_the_wgmma_source_for_sm90a():
    """At run time CuPy appends its own -arch=sm_90 to the loader's --gpu-architecture=sm_90a:
    the pair must still compile with sm_90a's features (else the wgmma wrappers are empty and
    the kernel traps); -arch=sm_90 alone must not have them (the check can fail)."""
    from gmm_core._cuda_loader import NVRTC_ADDED_OPTIONS, arch_options, source

    file = "em_diag_wg.cu"
    checked = source(file) + '\n#if !WGMMA_OK\n#error "built without sm_90a features"\n#endif\n'
    runtime = (*COMPILE_OPTIONS, *NVRTC_ADDED_OPTIONS, *arch_options(file), "-arch=sm_90")
    assert arch_options(file) == ("--gpu-architecture=sm_90a",)
    compiled = _nvrtc.compile_cubin(checked, file, list(SAMPLE_INSTANCES[file]), runtime)
    assert compiled.cubin
    with pytest.raises(_nvrtc.NvrtcError, match="sm_90a features"):
        _nvrtc.compile_cubin(checked, file, [], (*COMPILE_OPTIONS, "-arch=sm_90"))
