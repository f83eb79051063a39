"""The diag/spherical M-step kernel (``loop_mstep``, ``gmm_core/_cupy/tracker.py``) against the
array M-step it replaces (``gmm_core._gaussian.m_step`` on CuPy and on NumPy). Needs a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from gmm_core._engine import cupy_unavailable_reason
from gmm_core._gaussian import Stats, m_step

_REASON = cupy_unavailable_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_REASON is not None, reason=f"needs a usable CUDA GPU: {_REASON}"),
]


def _stats(cov: str, r: int, k: int, d: int, seed: int) -> Stats:
    """Statistics of a real pass: float64 responsibilities of random data, summed."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(500, d)) * rng.uniform(0.5, 3.0, size=d) + 4.0
    resp = rng.dirichlet(np.full(k, 0.3), size=(r, 500))  # (r, n, k)
    nk = resp.sum(axis=1)
    sx = np.einsum("rnk,nd->rkd", resp, x)
    sxx = np.einsum("rnk,nd->rkd", resp, x * x)
    if cov == "spherical":
        sxx = sxx.sum(axis=-1)
    nk[0, 1] = 0.0  # an empty component: the eps terms decide it
    sx[0, 1] = 0.0
    sxx[0, 1] = 0.0
    sxx[0, 2] *= 0.5  # second moments below the mean's square: the variance floors at 0
    return Stats(np.zeros(r), nk, sx, sxx, 500)


@pytest.mark.parametrize("k", [37, 600])  # one block per restart, and three
@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("cov", ["diag", "spherical"])
def test_the_m_step_kernel_gives_the_array_m_step_values(cov, shifted, k):
    import cupy

    from gmm_core._cupy.tracker import loop_m_step

    stats = _stats(cov, 3, k, 7, seed=1)
    shift = np.linspace(-2.0, 3.0, 7) if shifted else None
    eps = 10 * np.finfo(np.float32).eps
    got = loop_m_step(stats.map(cupy.asarray), cov, 1e-6, eps, None if shift is None else
                      cupy.asarray(shift))  # fmt: skip
    on_device = m_step(
        stats.map(cupy.asarray), cov, 1e-6, eps, cupy, check=False,
        shift=None if shift is None else cupy.asarray(shift),
    )  # fmt: skip
    on_host = m_step(stats, cov, 1e-6, eps, np, check=False, shift=shift)
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        a = cupy.asnumpy(getattr(got, name))
        assert a.shape == getattr(on_host, name).shape, name
        np.testing.assert_allclose(a, getattr(on_host, name), rtol=1e-13, atol=0, err_msg=name)
        b = cupy.asnumpy(getattr(on_device, name))
        if name in ("means",) or (cov == "diag" and name != "weights"):
            # each value the same operations in the same order: equal to the last bit
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:  # a sum's order (weights; spherical cross terms) may differ in the last bits
            np.testing.assert_allclose(a, b, rtol=1e-14, atol=0, err_msg=name)
    # the floored component: reg_covar, as the array M-step gives it
    assert (cupy.asnumpy(got.covariances)[0, 2] == 1e-6).any()


def test_a_collapsed_component_gives_a_non_finite_precision_as_the_array_m_step():
    """reg_covar = 0 and a component on one point: variance exactly 0, precision inf (the
    loop's flags raise "ill-defined covariance"); a NaN statistic stays NaN (max(NaN, 0) as
    NumPy's)."""
    import cupy

    from gmm_core._cupy.tracker import loop_m_step

    stats = _stats("diag", 1, 4, 3, seed=2)
    stats.sx[0, 2] = stats.sxx[0, 2] = 0.0  # its rows all at the origin: no spread
    stats.sx[0, 3, 0] = np.nan
    got = loop_m_step(stats.map(cupy.asarray), "diag", 0.0, 0.0)
    want = m_step(stats, "diag", 0.0, 0.0, np, check=False)
    pchol = cupy.asnumpy(got.precisions_cholesky)
    assert not np.isfinite(pchol[0, 2]).all() and not np.isfinite(pchol[0, 3]).all()
    assert np.isnan(cupy.asnumpy(got.covariances)[0, 3, 0])
    np.testing.assert_array_equal(np.isfinite(pchol), np.isfinite(want.precisions_cholesky))
