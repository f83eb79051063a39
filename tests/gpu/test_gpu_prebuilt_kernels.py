"""Kernels built ahead of time load without NVRTC and compute what the NVRTC-compiled ones do
(needs a usable CUDA GPU of compute capability 8.x or 9.x, and NVRTC for the build)."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_fixtures import RTOL, assert_stats_close, make_data, numpy_stats, random_params

from gmm_core import GaussianMixture, _cuda_loader, _nvrtc, _prebuilt
from gmm_core._engine import cupy_unavailable_reason

_REASON = cupy_unavailable_reason()
_NVRTC = _nvrtc.unavailable_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_REASON is not None, reason=f"needs a usable CUDA GPU: {_REASON}"),
    pytest.mark.skipif(_NVRTC is not None, reason=f"the build needs NVRTC: {_NVRTC}"),
]

#: (covariance type, dtype, n_samples, n_features, n_components, n_restarts): the tensor-core
#: diag pass (SIMT on GPUs without), the SIMT pass in float64, the fused full pass
PASSES = [
    ("diag", np.float32, 20_011, 16, 32, 1),
    ("diag", np.float64, 9_001, 6, 4, 3),
    ("full", np.float32, 8_000, 32, 16, 1),
]
#: whole fits (k-means initialisation, one restart): n_samples, n_features, n_components
FITS = [("diag", np.float32, 40_000, 16, 32), ("full", np.float32, 20_000, 8, 4)]


def _kernels_of_tests() -> list:
    from gmm_core._build_kernels import EXTRA_KERNELS
    from gmm_core._cupy import CupyData, CupyEngine
    from gmm_core._cupy.kernels import kernel_ref
    from gmm_core._warmup import kernels_for_shapes

    engine = CupyEngine()
    refs = []
    for cov, dtype, n, d, k, r in PASSES:
        refs += engine.kernel_refs(CupyData([], True, cov, np.dtype(dtype), n, d), r, k)
    for cov, dtype, n, d, k in FITS:
        data = CupyData([], True, cov, np.dtype(dtype), n, d)
        refs += engine.kernel_refs(data, 1, k, init_params="kmeans")
    # the data's own kernels (input check, centring, scoring), as the real build adds them
    dtypes = (np.dtype(np.float32), np.dtype(np.float64))  # those of PASSES and FITS
    refs += [kernel_ref(f, name, dt) for f, name in EXTRA_KERNELS for dt in dtypes]
    # and, as the real build does, those of the fits' shapes at a small and a large row count
    refs += kernels_for_shapes([(d, k, cov, dtype, 1) for cov, dtype, _, d, k in FITS])
    return sorted(set(refs))


@pytest.fixture(scope="module")
def prebuilt_tree(tmp_path_factory):
    """This GPU's architecture, the tests' kernels only (seconds of NVRTC)."""
    from gmm_core._build_kernels import build, native_arch

    try:
        arch = native_arch()
    except ValueError as exc:
        pytest.skip(str(exc))
    out = tmp_path_factory.mktemp("prebuilt")
    build([arch], out, refs=_kernels_of_tests())
    return out


@pytest.fixture
def loader(prebuilt_tree, tmp_path, monkeypatch):
    """Switch between prebuilt and NVRTC kernels; counts NVRTC compiles of gmm_core's sources."""
    import cupy

    from gmm_core._cupy import kernels

    monkeypatch.setenv(_prebuilt.DIR_ENV, str(prebuilt_tree))
    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path / "kernel_cache"))
    compiled: list[str] = []
    nvrtc_program = cupy.cuda.compiler._NVRTCProgram
    original = nvrtc_program.compile

    def counting(self, *args, **kwargs):
        if str(_cuda_loader.CUDA_DIR) in self.src:
            compiled.append(self.src)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(nvrtc_program, "compile", counting)

    def use(prebuilt: bool) -> list[str]:
        """Forget every loaded kernel; the next loads come from cubins or from NVRTC."""
        monkeypatch.setenv(_prebuilt.ENABLE_ENV, "1" if prebuilt else "0")
        kernels._load_memoized.cache_clear()
        _prebuilt._module_memoized.cache_clear()
        monkeypatch.setattr(kernels, "_loaded", set())
        monkeypatch.setattr(kernels, "_carveout_set", set())  # keyed on id(kernel)
        monkeypatch.setattr(kernels, "_dynamic_smem", {})
        monkeypatch.setattr(_prebuilt, "served", set())
        compiled.clear()
        return compiled

    yield use
    kernels._load_memoized.cache_clear()
    _prebuilt._module_memoized.cache_clear()


@pytest.mark.parametrize(
    ("cov", "dtype", "n", "d", "k", "n_restarts"), PASSES, ids=[f"{p[0]}-{p[3]}" for p in PASSES]
)
def test_a_prebuilt_pass_loads_without_nvrtc_and_matches_the_compiled_one(
    loader, cov, dtype, n, d, k, n_restarts
):
    import cupy

    from gmm_core._cupy import CupyEngine

    X = make_data(n, d, k, dtype, seed=n)
    params = random_params(X, cov, k, n_restarts, seed=d)
    shift = X.mean(0)

    def one_pass():
        engine = CupyEngine()
        data = engine.prepare(X, shift, cov)
        active = cupy.ones(n_restarts, bool)
        return engine.accumulate(data, params.map(cupy.asarray), active)

    compiled = loader(prebuilt=True)
    from_cubin = one_pass()
    assert compiled == []  # not one NVRTC compile of gmm_core's sources
    assert _prebuilt.served  # the pass's kernels came from the prebuilt cubins
    loader(prebuilt=False)
    from_nvrtc = one_pass()
    assert not _prebuilt.served
    # the same code: the same statistics (and, diag, those of the NumPy engine; the full pass's
    # own comparison with scales is test_fused_kernels')
    assert_stats_close(from_cubin, from_nvrtc, 1e-12)
    if cov == "diag":
        want = numpy_stats(X, shift, cov, params)
        assert_stats_close(from_cubin, want, RTOL[np.dtype(dtype).type])


@pytest.mark.parametrize(("cov", "dtype", "n", "d", "k"), FITS, ids=[f[0] for f in FITS])
def test_a_cold_fit_compiles_none_of_our_kernels_when_they_are_prebuilt(
    loader, cov, dtype, n, d, k
):
    X = make_data(n, d, k, dtype, seed=k)

    def fit():
        gm = GaussianMixture(k, covariance_type=cov, backend="cupy", random_state=0, max_iter=20)
        return gm.fit(X)

    compiled = loader(prebuilt=True)
    from_cubin = fit()
    assert compiled == []
    loader(prebuilt=False)
    from_nvrtc = fit()
    assert from_cubin.n_iter_ == from_nvrtc.n_iter_
    np.testing.assert_allclose(from_cubin.means_, from_nvrtc.means_, rtol=1e-6, atol=1e-6)
    assert from_cubin.lower_bound_ == pytest.approx(from_nvrtc.lower_bound_, rel=1e-7)
