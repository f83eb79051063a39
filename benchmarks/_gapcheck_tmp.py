import os, sys, warnings
import numpy as np
warnings.simplefilter("ignore")
sys.path.insert(0, ".")
from benchmarks.tune_fused import make_case
from gmm_core import GaussianMixture
for n in (120_000, 1_000_000):
    X = make_case(n, 16, 32, 1, seed=7)[0]
    rng = np.random.default_rng(5)
    kw = dict(n_components=32, covariance_type="diag", tol=0.0, max_iter=15, weights_init=np.full(32, 1 / 32),
              means_init=X[rng.choice(len(X), 32, replace=False)].astype(np.float64),
              precisions_init=np.tile(1 / X.var(0, dtype=np.float64), (32, 1)))
    ref = GaussianMixture(n_init=1, backend="numpy", **kw).fit(X.astype(np.float64))
    for flag in ("1", "0"):
        os.environ["GMM_CORE_WGMMA"] = flag
        for n_init in (8, 1):
            g = GaussianMixture(n_init=n_init, backend="cupy", **kw).fit(X)
            print(f"n={n} wgmma={flag} n_init={n_init}: gap {g.lower_bound_ - ref.lower_bound_:+.2e} (ref {ref.lower_bound_:.6f})", flush=True)
