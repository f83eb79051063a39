"""Lloyd iterations of the device k-means (``init_params="kmeans"``; the GPU engines' init).

After k-means++ seeding (:mod:`gmm_core._kmeans_seeding`), every restart's Lloyd iterations are
EM passes of a "hard" mixture (equal weights, one huge precision: every responsibility is 0 or
1), so the engine's fused passes run every restart's k-means in one pass over the data (weighted
data: the passes weigh their statistics). :mod:`gmm_core._init` turns the centres into initial
parameters.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._gaussian import Params, Stats
from ._kmeans_seeding import put_restarts, take_restarts

#: scikit-learn's ``KMeans`` defaults
KMEANS_MAX_ITER = 300
KMEANS_TOL = 1e-4
#: data with at least COARSE_MIN_ROWS rows are seeded, and Lloyd runs first, on every
#: COARSE_STEP-th row (k-means++ on 1.25 M of 10 M evenly spaced rows: 1/8 of the seeding's
#: time and memory; every row takes part in the last Lloyd iterations)
COARSE_STEP = 8
COARSE_MIN_ROWS = 1 << 20
#: precision (times the total variance) of the mixture whose EM pass is a Lloyd assignment:
#: a distance difference of 1e-10 of the total variance already weighs exp(-50)
HARD_PRECISION = 1e12
#: the ``init.cu`` kernel of Lloyd's update (template argument: its arrays' type)
LLOYD_KERNELS = (("lloyd_step", np.float64),)


# ---------------------------------------------------------------------------------------------
# Lloyd iterations as EM passes of a hard mixture


def hard_params(
    centres: Any, covariance_type: str, precision: float, xp: Any, sizes: Any = None
) -> Params:
    """A mixture whose EM pass assigns every sample to its nearest centre.

    Equal weights, ``centres`` as means (the same array where it is float64 already, so that
    updating it in place moves the mixture) and one precision for every component and feature.
    ``sizes`` (R,): each restart's own number of centres, the rest padding of weight exactly 0
    (model selection's candidates of several K side by side; see :mod:`gmm_core._padded_em`).
    The constant arrays are made on the host and copied once.
    """
    n_restarts, n_components, n_features = centres.shape
    if sizes is None:
        weights = np.full((n_restarts, n_components), 1.0 / n_components)
    else:
        sizes = np.asarray(sizes, dtype=np.int64)
        live = np.arange(n_components)[None, :] < sizes[:, None]
        weights = np.where(live, 1.0 / sizes[:, None], 0.0)
    root = math.sqrt(precision)
    if covariance_type in ("full", "tied"):
        eye = np.eye(n_features)
        shape = (
            (n_restarts, n_components, n_features, n_features)
            if covariance_type == "full"
            else (n_restarts, n_features, n_features)
        )
        chol = np.ascontiguousarray(np.broadcast_to(eye * root, shape))
        cov = np.ascontiguousarray(np.broadcast_to(eye / precision, shape))
    else:
        per_component = (
            (n_restarts, n_components, n_features)
            if covariance_type == "diag"
            else (n_restarts, n_components)
        )
        chol = np.full(per_component, root)
        cov = np.full(per_component, 1.0 / precision)
    means = xp.asarray(centres, dtype=xp.float64)
    return Params(xp.asarray(weights), means, xp.asarray(cov), xp.asarray(chol))


def _lloyd_step(
    engine: Any, stats: Stats, centres: Any, active: Any, n_iter: Any, tol: float, kernel: Any
) -> tuple[Any, Any]:
    """Move every active restart's centres to the means of their samples.

    A restart stops once they moved by at most ``tol``. In place on the device
    (``lloyd_step``); new arrays on the host. Returns ``(centres, active)``.
    """
    if kernel is not None:
        cupy = engine.xp
        n_restarts, n_components, n_features = centres.shape
        kernel(
            (n_restarts,),
            (256,),
            (
                cupy.ascontiguousarray(stats.nk),
                cupy.ascontiguousarray(stats.sx),
                np.int32(n_components),
                np.int32(n_features),
                np.float64(tol),
                centres,
                active,
                n_iter,
            ),
        )
        return centres, active
    nk = stats.nk[..., None]
    new = np.where(nk > 0, stats.sx / np.where(nk > 0, nk, 1.0), centres)
    moved = ((new - centres) ** 2).sum(axis=(1, 2))
    n_iter += active
    return np.where(active[:, None, None], new, centres), active & (moved > tol)


#: Lloyd's batch drops its stopped restarts once at most this fraction of it still iterates
#: (the GPU passes compute every restart they are given, stopped or not)
LLOYD_COMPACT = 0.75


def lloyd(
    engine: Any,
    data: Any,
    centres: Any,
    *,
    tol: float,
    precision: float,
    max_iter: int = KMEANS_MAX_ITER,
    sizes: Any = None,
) -> tuple[Any, Any]:
    """Lloyd iterations of every restart, each one EM pass of the engine (diag layout).

    A restart stops once its centres moved by at most ``tol`` (sum of squares), as scikit-learn's
    ``KMeans``. ``sizes``: each restart's own number of centres (:func:`hard_params`; the
    padding takes no sample, so it stays where it is). Returns the centres (R, K, D) float64 (a
    new array) and the iterations of every restart (int64).

    The passes run on the restarts still iterating: once at most :data:`LLOYD_COMPACT` of the
    batch does, the stopped ones leave it (their centres are final), so restarts that converge
    early (model selection's small K) do not ride along in every later pass.
    """
    xp = engine.xp
    diag = engine.retype(data, "diag")
    n_restarts = centres.shape[0]
    sizes = None if sizes is None else np.asarray(sizes, dtype=np.int64)
    kernel = None
    if xp is np:
        centres = np.array(centres, dtype=np.float64)
    else:
        from ._cupy.copies import duplicate
        from ._cupy.kernels import get_kernel

        kernel = get_kernel("init.cu", *LLOYD_KERNELS[0])
        centres = duplicate(xp.ascontiguousarray(centres, dtype=xp.float64))
    out, out_iter = centres, xp.zeros(n_restarts, dtype=xp.int64)
    rows = np.arange(n_restarts)  # the batch's restarts (rows of out)
    n_iter = out_iter
    active = all_active(xp, n_restarts)
    hard = hard_params(centres, "diag", precision, xp, sizes)
    pending = None
    for _ in range(max_iter):
        stats = engine.lloyd_pass(diag, hard, active)
        centres, active = _lloyd_step(engine, stats, centres, active, n_iter, tol, kernel)
        hard.means = centres
        # read one iteration late (the device runs on meanwhile); the extra iteration after
        # the last restart stopped changes nothing (every restart is masked). The device updates
        # `active` in place behind the copy; the host makes a new array.
        reader = engine.read_later(active)
        if pending is not None:
            going = np.asarray(pending(), dtype=bool)  # stopped then: stopped for good
            if not going.any():
                break
            if going.sum() <= LLOYD_COMPACT * len(rows):
                keep = np.flatnonzero(going)
                put_restarts(xp, out, rows, centres)  # every restart's centres so far
                put_restarts(xp, out_iter, rows, n_iter)
                rows = rows[keep]
                centres = take_restarts(xp, centres, keep)
                active, n_iter = take_restarts(xp, active, keep), take_restarts(xp, n_iter, keep)
                hard = hard_params(centres, "diag", precision, xp, _sizes_of(sizes, rows))
                reader = engine.read_later(active)
        pending = reader
    put_restarts(xp, out, rows, centres)
    put_restarts(xp, out_iter, rows, n_iter)
    return out, out_iter


def all_active(xp: Any, n: int) -> Any:
    """Every restart iterating: bool on the host, int32 on a device (``lloyd_step``'s flags)."""
    return np.ones(n, dtype=bool) if xp is np else xp.asarray(np.ones(n, dtype=np.int32))


def _sizes_of(sizes: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if sizes is None else sizes[rows]


def lloyd_coarse_to_fine(
    engine: Any,
    data: Any,
    centres: Any,
    *,
    tol: float,
    precision: float,
    coarse: Any = None,
    sizes: Any = None,
) -> Any:
    """Lloyd to convergence on every :data:`COARSE_STEP`-th row, then on all rows.

    Most of Lloyd's iterations move the centres far; evenly spaced rows find those moves at a
    fraction of the cost, and the iterations over all rows then start close to their fixed
    point (the stopping rule is the same, on all rows). Small data go straight to all rows.
    ``coarse``: the subsample, where the caller made it already (the seeding used it);
    ``sizes``: as :func:`lloyd`'s.
    """
    if coarse is None and data.n_samples >= COARSE_MIN_ROWS:
        coarse = engine.subsample(data, COARSE_STEP)
    if coarse is not None:
        centres, _ = lloyd(engine, coarse, centres, tol=tol, precision=precision, sizes=sizes)
        del coarse
    centres, _ = lloyd(engine, data, centres, tol=tol, precision=precision, sizes=sizes)
    return centres
