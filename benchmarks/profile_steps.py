"""Where an iteration's time goes: per-kernel and per-step timings with device synchronisation.

    PYTHONPATH=. python3 benchmarks/profile_steps.py            # Blobs run_em + full-cov steps
    ncu --kernel-name regex:"diag_pass|diag_mstep" --launch-skip 20 --launch-count 4 \
        --section SpeedOfLight python3 benchmarks/profile_steps.py --blobs-only
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(label: str, fn, repeat: int = 20) -> float:
    import cupy as cp

    fn()
    cp.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    cp.cuda.Device().synchronize()
    ms = 1e3 * (time.perf_counter() - t0) / repeat
    print(f"  {label:48s} {ms:9.4f} ms", flush=True)
    return ms


def blobs() -> None:
    import cupy as cp
    import numpy as np
    from sklearn.datasets import make_blobs

    from gmm_core._cupy import CupyEngine
    from gmm_core._gaussian import Params

    X = make_blobs(500_000, n_features=2, centers=5, random_state=0)[0].astype(np.float32)
    for graphs in (True, False):
        engine = CupyEngine(use_graphs=graphs)
        data = engine.prepare(X, X.mean(0, dtype=np.float64), "diag")
        rng = np.random.default_rng(0)
        means = X[rng.choice(len(X), 5, replace=False)].astype(np.float64) - X.mean(0)
        var = np.repeat(X.var(0)[None].astype(np.float64), 5, 0)
        params = Params(np.full((1, 5), 0.2), means[None], var[None], 1 / np.sqrt(var)[None])
        params = params.map(cp.asarray)
        for iters in (32, 64, 500):
            timed(
                f"blobs run_em {iters} it (graphs={graphs})",
                lambda iters=iters, engine=engine, data=data, params=params: engine.run_em(
                    data, params, reg_covar=1e-6, eps=1e-6, tol=0.0, max_iter=iters
                ),
                repeat=3,
            )


def full() -> None:
    import cupy as cp
    import numpy as np

    from gmm_core._cupy import CupyEngine
    from gmm_core._gaussian import Params, cholesky_precisions, m_step

    n, d, k = 1_000_000, 32, 16
    rs = cp.random.RandomState(1)
    X = rs.standard_normal((n, d), dtype=cp.float32) * 2
    engine = CupyEngine()
    data = engine.prepare(X, None, "full")
    Xh = cp.asnumpy(X[:100_000]).astype(np.float64)
    cov = np.repeat((np.cov(Xh.T) + 1e-6 * np.eye(d))[None], k, 0)[None]
    means = Xh[np.random.default_rng(0).choice(len(Xh), k, replace=False)][None]
    params = Params(np.full((1, k), 1 / k), means, cov, cholesky_precisions(cov, "full", np))
    params = params.map(cp.asarray)
    active = cp.ones(1, bool)
    stats = engine.accumulate(data, params, active)
    c = engine._gemm_constants(data, params)
    feats = data._features[0] if data._features else engine._full_features(X, c["triu"])
    lp = engine._log_prob_chunk(X, c, feats)
    resp = cp.exp(lp).reshape(n, -1)
    from gmm_core._cupy.gemm import resp_t_dot as _resp_t_dot

    timed("full accumulate (whole pass)", lambda: engine.accumulate(data, params, active), 5)
    timed("full constants", lambda: engine._gemm_constants(data, params))
    timed("full E GEMM feats @ M", lambda: feats @ c["M"])
    timed("full stats GEMM (batched, float64 sum)", lambda: _resp_t_dot(resp, feats))
    timed("full stats GEMM plain resp.T @ feats", lambda: resp.T @ feats)
    timed("full softmax ops", lambda: cp.exp(lp - lp.max(axis=2, keepdims=True)).sum(axis=2))
    timed("full m_step (lead's xp code)", lambda: m_step(stats, "full", 1e-6, 1e-6, cp))
    # the accumulate sequence step by step
    R, K = 1, k
    steps = {
        "lp = feats @ M + const": lambda: engine._log_prob_chunk(X, c, feats),
        "amax": lambda: lp.max(axis=2, keepdims=True),
        "lp -= amax; exp; sum; divide": lambda: _softmax(lp.copy()),
        "loglik sum": lambda: (cp.log(lp[..., 0].astype(cp.float64)) + lp[..., 0]).sum(0),
        "nk = resp.sum(0, float64)": lambda: resp.sum(axis=0, dtype=cp.float64).reshape(R, K),
        "sxx scatter": lambda: _scatter(c, d, R, K),
    }
    for label, fn in steps.items():
        timed("  step: " + label, fn)


def _softmax(lp):
    import cupy as cp

    amax = lp.max(axis=2, keepdims=True)
    lp -= amax
    cp.exp(lp, out=lp)
    norm = lp.sum(axis=2, keepdims=True)
    lp /= norm
    return lp


def _scatter(c, d, R, K):
    import cupy as cp

    n_tri = d * (d + 1) // 2
    s_feat = cp.zeros((R * K, n_tri + d))
    tri = s_feat[:, :n_tri].reshape(R, K, n_tri)
    sxx = cp.empty((R, K, d, d))
    iu0, iu1 = c["triu"]
    sxx[..., iu0, iu1] = tri
    sxx[..., iu1, iu0] = tri
    return sxx


if __name__ == "__main__":
    print("blobs:", flush=True)
    blobs()
    if "--blobs-only" not in sys.argv:
        print("full:", flush=True)
        full()
