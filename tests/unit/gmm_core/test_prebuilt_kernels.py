"""Without a GPU: kernels built ahead of time (NVRTC), their index, staleness and the fallback."""

from __future__ import annotations

import json
import lzma
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from support.fake_device import fake_kernel_loading

from gmm_core import _cuda_loader, _nvrtc, _prebuilt

pytest.importorskip("gmm_core._cupy")  # the engine's kernel list (CuPy imports without a GPU)
from gmm_core._build_kernels import build, elf_symbols, kernels_for_arch  # noqa: E402
from gmm_core._cupy import CupyData, CupyEngine, LaunchConfig, kernels  # noqa: E402
from gmm_core._cupy.kernels import KernelRef  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
NVRTC_MISSING = _nvrtc.unavailable_reason()
needs_nvrtc = pytest.mark.skipif(
    NVRTC_MISSING is not None, reason=f"NVRTC is not available: {NVRTC_MISSING}"
)
SM90 = LaunchConfig(n_sm=132, smem_optin=232_448, compute_capability=90)
#: a small build: a non-template kernel, templates of two files, and one whose last template
#: argument is left to its default (GUARD = true): its symbol must name it
SMALL = [
    KernelRef("init.cu", "column_stats<float>"),
    KernelRef("em_diag.cu", "reduce_partials"),
    KernelRef("em_diag.cu", "prepare_params<float, 2, false>"),
    KernelRef("em_diag.cu", "diag_pass_tc<4, 1, false, 128>"),
]


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory):
    """sm_80 and sm_90 builds of :data:`SMALL` (a few seconds of NVRTC)."""
    if NVRTC_MISSING is not None:
        pytest.skip(f"NVRTC is not available: {NVRTC_MISSING}")
    out = tmp_path_factory.mktemp("prebuilt")
    reports = build(("sm_80", "sm_90"), out, refs=SMALL, jobs=2)
    return out, reports


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty kernel cache (prebuilt cubins are decompressed into it)."""
    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path / "kernel_cache"))
    return tmp_path / "kernel_cache"


def symbols_by_tool(path: Path) -> set[str]:
    """Symbol names as the CUDA toolkit's ``cuobjdump -symbols`` (else binutils) lists them."""
    if shutil.which("cuobjdump"):
        out = subprocess.run(
            ["cuobjdump", "-symbols", str(path)], capture_output=True, text=True, check=True
        ).stdout
        return {line.split()[-1] for line in out.splitlines() if line.startswith("STT_")}
    if shutil.which("readelf"):
        out = subprocess.run(
            ["readelf", "-Ws", "--wide", str(path)], capture_output=True, text=True
        ).stdout
        return {m.group(1) for m in re.finditer(r"^\s*\d+:.*\s(\S+)$", out, re.MULTILINE)}
    pytest.skip("neither cuobjdump nor readelf is installed")


@needs_nvrtc
def test_build_writes_one_index_per_arch_naming_every_kernel_with_a_symbol_in_its_cubin(
    prebuilt, cache
):
    out, reports = prebuilt
    assert [r.arch for r in reports] == ["sm_80", "sm_90"]
    for report in reports:
        assert report.n_kernels == len(SMALL)
        index = json.loads((out / report.arch / "index.json").read_text())
        assert f"-arch={report.arch}" in index["options"]
        assert {"-ftz=true", *_cuda_loader.COMPILE_OPTIONS} <= set(index["options"])
        for ref in SMALL:
            entry = _prebuilt.lookup(ref.file, ref.expr, report.arch, out)
            assert entry is not None, ref
            assert entry.symbol == index["kernels"][ref.file][ref.expr]["symbol"]
            cubin = _prebuilt.unpacked(entry)
            assert cubin.read_bytes()[:4] == b"\x7fELF"
            assert entry.symbol in symbols_by_tool(cubin), (report.arch, ref)
            assert entry.symbol in elf_symbols(cubin.read_bytes())
    # NVRTC's lowered name spells out the defaulted template arguments (GUARD = true,
    # WEIGHTED = false)
    tc = _prebuilt.lookup("em_diag.cu", "diag_pass_tc<4, 1, false, 128>", "sm_90", out)
    assert tc is not None and tc.symbol.startswith("_Z12diag_pass_tcILi4ELi1ELb0ELi128ELb1ELb0EE")
    assert _prebuilt.lookup("em_diag.cu", "reduce_partials", "sm_90", out).symbol == (
        "reduce_partials"
    )
    # a kernel that was not built: None (NVRTC serves it)
    assert _prebuilt.lookup("em_diag.cu", "diag_mstep<float, 2, false>", "sm_90", out) is None


@needs_nvrtc
def test_a_changed_source_makes_its_prebuilt_kernels_stale(prebuilt, monkeypatch):
    out, _ = prebuilt
    original = _cuda_loader.source

    def edited(name: str) -> str:
        text = original(name)
        return text + "// edited\n" if name == "em_diag.cu" else text

    monkeypatch.setattr(_cuda_loader, "source", edited)
    _cuda_loader.source_digest.cache_clear()
    try:
        reason = _prebuilt.stale_reason("em_diag.cu", "sm_90", out)
        assert reason is not None and "changed since the build" in reason
        assert _prebuilt.lookup("em_diag.cu", "reduce_partials", "sm_90", out) is None
        # the other source was not touched: its kernels are still served
        assert _prebuilt.lookup("init.cu", "column_stats<float>", "sm_90", out) is not None
    finally:
        monkeypatch.undo()
        _cuda_loader.source_digest.cache_clear()
    assert _prebuilt.stale_reason("em_diag.cu", "sm_90", out) is None


def test_the_source_digest_covers_the_text_and_the_options_but_not_the_folder(monkeypatch):
    digest = _cuda_loader.source_digest("init.cu")
    _cuda_loader.source_digest.cache_clear()
    monkeypatch.setattr(_cuda_loader, "COMPILE_OPTIONS", (*_cuda_loader.COMPILE_OPTIONS, "-DX"))
    try:
        assert _cuda_loader.source_digest("init.cu") != digest
    finally:
        monkeypatch.undo()
        _cuda_loader.source_digest.cache_clear()
    assert _cuda_loader.source_digest("init.cu") == digest
    assert str(_cuda_loader.CUDA_DIR) in _cuda_loader.source("init.cu")  # #line names the path


@needs_nvrtc
def test_missing_corrupt_or_foreign_prebuilt_files_fall_back_without_an_error(
    prebuilt, tmp_path, cache
):
    out, _ = prebuilt
    tree = tmp_path / "prebuilt"
    shutil.copytree(out, tree)
    ref = SMALL[2]
    entry = _prebuilt.lookup(ref.file, ref.expr, "sm_90", tree)
    assert entry is not None
    # a cubin whose bytes are not what the index says: refused, and the loader's module is None
    entry.cubin.write_bytes(lzma.compress(b"\x7fELF not a cubin"))
    with pytest.raises(ValueError, match="SHA-256"):
        _prebuilt.unpacked(entry)
    assert _prebuilt._module(str(entry.cubin), entry.sha256) is None
    entry.cubin.unlink()
    assert _prebuilt._module(str(entry.cubin), entry.sha256) is None
    # an unreadable index, an index of another format, no folder for the arch
    index = tree / "sm_90" / "index.json"
    index.write_text("{not json")
    assert "unreadable" in _prebuilt.stale_reason(ref.file, "sm_90", tree)
    assert _prebuilt.lookup(ref.file, ref.expr, "sm_90", tree) is None
    index.write_text(json.dumps({"format": 0, "sources": {}, "kernels": {}}))
    assert "format" in _prebuilt.stale_reason(ref.file, "sm_90", tree)
    assert _prebuilt.lookup(ref.file, ref.expr, "sm_75", tree) is None


def test_a_large_cubin_is_unpacked_and_checked_without_holding_it_in_host_memory(tmp_path, cache):
    """A fit of CuPy data may load a prebuilt group of tens of MB: decompressing it (the first
    time) and checking its SHA-256 (every process) read it in pieces, never whole, and its LZMA
    dictionary is small (the GPU test of no host copies of X measured 67 MB of host allocations
    while a group loaded: xz's preset 9 has a 64 MiB dictionary, which the decompressor
    allocates whole)."""
    import hashlib
    import tracemalloc

    rng = np.random.default_rng(0)
    body = np.repeat(rng.integers(0, 256, size=24 << 10, dtype=np.uint8), 1024).tobytes()  # 24 MB
    xz = tmp_path / "big.cubin.xz"
    xz.write_bytes(_prebuilt.pack(body))  # as the builder packs
    entry = _prebuilt.Entry(xz, "sym", hashlib.sha256(body).hexdigest())
    for _ in range(2):  # decompress into the cache, then check the cached file
        tracemalloc.start()
        try:
            path = _prebuilt.unpacked(entry)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert path.read_bytes() == body
        # a few pieces (input, output, the decompressor's buffer), a quarter of the cubin
        assert peak < 6 * _prebuilt.STREAM_BYTES, f"{peak} bytes held for a {len(body)}-byte cubin"
    # a truncated stream is refused and leaves no file behind
    xz.write_bytes(xz.read_bytes()[: len(xz.read_bytes()) // 2])
    path.unlink()
    with pytest.raises(lzma.LZMAError):
        _prebuilt.unpacked(entry)
    assert list(path.parent.iterdir()) == []


def test_prebuilt_kernels_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(_prebuilt.ENABLE_ENV, "0")
    assert not _prebuilt.enabled()
    assert _prebuilt.load("em_diag.cu", "reduce_partials") is None  # before any device call
    assert not _prebuilt.available("em_diag.cu", "reduce_partials")
    monkeypatch.setenv(_prebuilt.ENABLE_ENV, "1")
    assert _prebuilt.enabled()


def test_a_device_takes_the_cubins_of_its_own_or_its_major_architecture():
    assert _prebuilt.arch_candidates(90) == ["sm_90"]
    assert _prebuilt.arch_candidates("89") == ["sm_89", "sm_80"]
    assert _prebuilt.arch_candidates(103) == ["sm_103", "sm_100"]
    assert _prebuilt.arch_candidates(120) == ["sm_120"]


def test_the_loader_serves_a_prebuilt_kernel_before_compiling(monkeypatch):
    compiled: list[tuple] = []

    def nvrtc_module(file, exprs, options=()):
        compiled.append((file, exprs, options))
        return SimpleNamespace(get_function=lambda expr: f"nvrtc:{expr}")

    monkeypatch.setattr(kernels._cuda_loader, "module", nvrtc_module)
    monkeypatch.setattr(
        kernels._prebuilt, "load", lambda f, e: f"prebuilt:{e}" if "a" in e else None
    )
    runtime = SimpleNamespace(getDevice=lambda: 0)
    monkeypatch.setattr(kernels, "cupy", SimpleNamespace(cuda=SimpleNamespace(runtime=runtime)))
    monkeypatch.setattr(kernels, "_loaded", set())
    assert kernels._load(KernelRef("em_diag.cu", "a<1>"), ()) == "prebuilt:a<1>"
    assert compiled == []
    assert kernels._load(KernelRef("em_diag.cu", "b<1>"), ()) == "nvrtc:b<1>"  # not prebuilt
    # a tuning variant (extra -D options) is never prebuilt
    assert kernels._load(KernelRef("em_diag.cu", "a<1>"), ("-DX=1",)) == "nvrtc:a<1>"
    assert [c[2] for c in compiled] == [(), ("-DX=1",)]


def test_compile_kernels_loads_prebuilt_ones_in_the_caller_while_threads_compile(monkeypatch):
    calls: list[tuple[str, bool]] = []

    def load(ref, options=()):
        calls.append((ref.expr, threading.current_thread() is threading.main_thread()))
        return ref.expr

    fake_kernel_loading(monkeypatch, kernels, load)
    monkeypatch.setattr(kernels._prebuilt, "available", lambda file, expr: expr.startswith("p"))
    refs = [KernelRef("em_diag.cu", e) for e in ("p0", "c0", "p1", "c1")]
    assert kernels.compile_kernels(refs, max_workers=2) == ["p0", "c0", "p1", "c1"]
    assert sorted(e for e, in_caller in calls if in_caller) == ["p0", "p1"]
    assert sorted(e for e, in_caller in calls if not in_caller) == ["c0", "c1"]


@pytest.fixture(scope="module")
def sm90_kernels():
    return set(kernels_for_arch("sm_90"))


@pytest.mark.parametrize(
    ("case", "n_samples", "n_features", "n_components", "covariance_type"),
    [
        ("telemetry", 10_000_000, 16, 32, "diag"),
        ("full", 1_000_000, 32, 16, "full"),
        ("blobs", 500_000, 2, 5, "diag"),
    ],
)
def test_the_prebuilt_set_covers_the_benchmark_fits_on_sm90(
    sm90_kernels, case, n_samples, n_features, n_components, covariance_type
):
    """Every kernel the fit launches (k-means initialisation, one restart, float32) is built."""
    engine = CupyEngine(config=SM90)
    data = CupyData([], True, covariance_type, np.dtype(np.float32), n_samples, n_features)
    needed = set(engine.kernel_refs(data, 1, n_components, init_params="kmeans"))
    needed.add(KernelRef("init.cu", "column_stats<float>"))  # the input check
    assert needed, case
    assert not needed - sm90_kernels


def test_the_prebuilt_set_stays_within_the_fused_kernels_limits(sm90_kernels):
    by_name: dict[str, int] = {}
    for ref in sm90_kernels:
        name = ref.expr.split("<")[0]
        by_name[name] = by_name.get(name, 0) + 1
    # float and double of every width up to 32 (diag and spherical): M-step and prepare kernels
    assert by_name["diag_mstep"] == by_name["prepare_params"] == 2 * 32 * 2
    assert by_name["full_mstep"] == 48 and by_name["full_tc_params"] == 32
    assert {"kpp_potentials", "kpp_update", "column_stats", "reduce_partials"} <= set(by_name)
    assert any(r.expr.endswith(", false>") and "diag_pass_tc" in r.expr for r in sm90_kernels)


def test_command_without_nvrtc_says_why_and_fails_unless_told_to_skip(tmp_path):
    env = {"PATH": "/usr/bin:/bin", _nvrtc.LIBRARY_ENV: str(tmp_path / "libnvrtc.so")}
    command = [sys.executable, "-m", "gmm_core.build_kernels", "--out", str(tmp_path / "out")]
    for extra, code in (([], 1), (["--if-available"], 0)):
        done = subprocess.run(
            [*command, *extra], capture_output=True, text=True, timeout=120, cwd=REPO, env=env
        )
        assert done.returncode == code, done.stderr
        assert "nothing built: NVRTC (libnvrtc.so) was not found" in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_prebuilt_tree_is_package_data_built_by_make_and_the_gpu_image_not_committed():
    assert "gmm_core/cuda/prebuilt/" in (REPO / ".gitignore").read_text().splitlines()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'artifacts = \[[^\]]*"gmm_core/cuda/prebuilt/\*\*"', pyproject)
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^kernels:.*\n\t.*gmm_core\.build_kernels --if-available", makefile, re.M)
    dockerfile = (REPO / "docker" / "Dockerfile.gpu-worker").read_text()
    build_step = dockerfile.index("gmm_core.build_kernels")
    assert dockerfile.index("COPY --chown=airflow:0 gmm_core") < build_step
    assert build_step < dockerfile.index("--no-editable")  # the wheel takes the cubins along
    ignore = (REPO / "docker" / "Dockerfile.gpu-worker.dockerignore").read_text()
    assert "gmm_core/cuda/prebuilt" in ignore  # a developer's build does not leak into the image


def test_stale_cached_cubins_are_pruned_and_those_in_use_kept(tmp_path, cache, monkeypatch):
    """Decompressed cubins of an earlier prebuilt tree would pile up in CuPy's cache with every
    upgrade: a new decompression removes those the tree read now does not name and nobody used
    for PRUNE_AFTER_S (every use refreshes the file's time), and partial files of killed
    decompressions; the current tree's cubins, recent ones and other files stay."""
    import hashlib
    import os
    import time

    tree = tmp_path / "tree"
    (tree / "sm_90").mkdir(parents=True)
    body = b"current cubin" * 100
    xz = tree / "sm_90" / "a.cubin.xz"
    xz.write_bytes(_prebuilt.pack(body))
    named = hashlib.sha256(body).hexdigest()
    index = {"format": _prebuilt.INDEX_FORMAT, "sources": {}, "kernels": {}}
    index["cubins"] = {"a.cubin.xz": {"sha256": named}}
    (tree / "sm_90" / _prebuilt.INDEX_NAME).write_text(json.dumps(index))
    monkeypatch.setenv(_prebuilt.DIR_ENV, str(tree))

    cache_dir = _prebuilt.cache_dir()
    cache_dir.mkdir(parents=True)
    old = time.time() - _prebuilt.PRUNE_AFTER_S - 3600
    files = {
        "foreign_old": cache_dir / f"{'1' * 64}.cubin",
        "foreign_recent": cache_dir / f"{'2' * 64}.cubin",
        "partial_old": cache_dir / f"{'3' * 64}.cubin.4242.17",
        "partial_recent": cache_dir / f"{'4' * 64}.cubin.4243.17",
        "partial_two_days": cache_dir / f"{'6' * 64}.cubin.4244.17",
        "not_ours": cache_dir / "notes.txt",
        "not_ours_cubin": cache_dir / "kernel.cubin",
        "used_old": cache_dir / f"{'5' * 64}.cubin",
    }
    for path in files.values():
        path.write_bytes(b"x")
    for name in ("foreign_old", "partial_old", "not_ours", "not_ours_cubin", "used_old"):
        os.utime(files[name], (old, old))
    two_days = time.time() - 2 * 86_400  # past the partial files' day, within the cubins' month
    os.utime(files["partial_two_days"], (two_days, two_days))
    os.utime(files["partial_recent"], (time.time() - 60, time.time() - 60))

    # a use of an old cached cubin refreshes it (another environment's kernels, in use)
    used_body = b"x"
    entry_used = _prebuilt.Entry(xz, "sym", hashlib.sha256(used_body).hexdigest())
    files["used_old"].rename(cache_dir / f"{entry_used.sha256}.cubin")
    files["used_old"] = cache_dir / f"{entry_used.sha256}.cubin"
    assert _prebuilt.unpacked(entry_used) == files["used_old"]
    assert time.time() - files["used_old"].stat().st_mtime < 60

    # the current tree's cubin decompressed: the prune runs (once per process)
    _prebuilt._prune_once.cache_clear()
    path = _prebuilt.unpacked(_prebuilt.Entry(xz, "sym", named))
    assert path.read_bytes() == body
    left = {name for name, p in files.items() if p.exists()}
    assert left == {"foreign_recent", "partial_recent", "not_ours", "not_ours_cubin", "used_old"}
    # the current tree's cubin is never stale, however old
    os.utime(path, (old, old))
    assert _prebuilt.prune() == [] and path.exists()
    # a month on, whatever the tree does not name has gone stale too
    later = time.time() + _prebuilt.PRUNE_AFTER_S + 7200
    gone = {files[name] for name in ("foreign_recent", "partial_recent", "used_old")}
    assert set(_prebuilt.prune(now=later)) == gone
    assert path.exists() and files["not_ours"].exists() and files["not_ours_cubin"].exists()
