"""Hopper's warp-group MMA as the benchmarks use it: the layouts of benchmarks/probe_wgmma.py and
the experimental pass of benchmarks/wgmma_pass.py against float64 (needs an sm_90 GPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import probe_wgmma, wgmma  # noqa: E402

_REASON = wgmma.skip_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_REASON is not None, reason=f"needs an sm_90 GPU (wgmma): {_REASON}"),
]


def test_wgmma_fragment_accumulator_and_descriptor_layouts_hold():
    module, _ = wgmma.build_module("nvrtc", probe_wgmma.cuda_source())
    ok, results = probe_wgmma.correctness(module, np.random.default_rng(0))
    failed = [r for r in results if not r["pass"] and not r.get("diagnosis_only")]
    assert ok and not failed, failed
    assert max(r["max_rel_err"] for r in results) < 1e-5


@pytest.mark.parametrize(
    ("d", "k", "r", "nwg", "pipe", "vec", "sm1"),
    [
        (16, 32, 3, 2, 2, 0, 0),
        (8, 20, 2, 1, 0, 0, 0),
        (16, 12, 3, 2, 2, 1, 1),
        (12, 32, 2, 1, 0, 1, 1),
        (16, 32, 5, 2, 3, 0, 0),
    ],
)
def test_the_experimental_wgmma_pass_matches_float64(d, k, r, nwg, pipe, vec, sm1):
    import cupy as cp

    from benchmarks.tune_fused import make_case, reference_stats, rel
    from benchmarks.wgmma_pass import WgPass

    X, shift, params = make_case(20_011, d, k, r)  # a partial last tile
    Xc = (X - shift.astype(np.float32)).astype(np.float32)
    want = reference_stats(Xc, params)
    got = WgPass(d, nwg, pipe, 0, vec, sm1).stats(cp.asarray(Xc), params)
    for key in ("nk", "sx", "sxx", "ll"):
        assert rel(got[key], want[key]) < 2e-5, key
