"""Device k-means for ``init_params="kmeans"`` and ``"k-means++"`` (the GPU engines' init).

k-means++ seeding (scikit-learn's greedy variant: ``2 + log K`` candidates per centre, the one
with the smallest potential kept) for every restart at once, each step a ``cuda/init.cu`` kernel
on CuPy engines and array code on host array modules (the NumPy reference the unit tests run);
then Lloyd iterations, each one EM pass of a "hard" mixture (equal weights, one huge precision:
every responsibility is 0 or 1), so the engine's fused passes run every restart's k-means in one
pass over the data. With sample weights the seeding keeps ``w * distance`` and the passes weigh
their statistics. :mod:`gmm_core._init` turns the centres into initial parameters.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._gaussian import Params, Stats

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
#: rows per block of the reductions and GEMMs done here with array operations (at most; fewer
#: where the engine's scratch allowance is smaller)
_ROWS = 1 << 18


def _blocks(engine: Any, data: Any) -> Iterator[tuple[int, Any]]:
    """``(first row, device array)`` of every row block of the centred data."""
    row0 = 0
    for block in engine.device_chunks(data):
        yield row0, block
        row0 += block.shape[0]


def host_weights(data: Any) -> np.ndarray | None:
    """The sample weights on the host (float64), or None: unweighted or all equal.

    Equal weights draw the initialisation as no weights do (the passes scale alike, so the
    model is the same); only unequal weights change which rows are drawn.
    """
    weights = data.host_weights
    if weights is None or (weights == weights[0]).all():
        return None
    return np.asarray(weights, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# k-means++ seeding
#
# Each step has two implementations: ``cuda/init.cu`` kernels for CuPy engines (runtime sizes,
# one compiled module per kernel and data type, nothing for a new shape) and array code for host
# array modules (the NumPy reference the unit tests run).

#: rows per block sum of the candidate sampling (``kpp_block_sums``): the second search step
#: scans at most this many rows
SAMPLE_BLOCK_ROWS = 2048
#: device bytes the seeding holds per sample and restart: the float32 distances to the nearest
#: centre (the block sums add 8 / SAMPLE_BLOCK_ROWS)
SEED_BYTES_PER_SAMPLE = 4
#: the ``init.cu`` kernels of the seeding (template argument: the data's type) and of its
#: candidate sampling and Lloyd's update (their own arrays' types)
SEEDING_KERNELS = ("kpp_potentials", "kpp_update", "gather_rows", "kpp_choose")
SAMPLING_KERNELS = (("kpp_block_sums", np.float32), ("kpp_sample", np.float32))
LLOYD_KERNELS = (("lloyd_step", np.float64),)


def _kernels(engine: Any, dtype: Any) -> dict[str, Any] | None:
    """The ``init.cu`` kernels for CuPy engines, ``None`` for host array modules."""
    if engine.xp is np:
        return None
    from ._cupy.kernels import get_kernel

    out = {name: get_kernel("init.cu", name, dtype) for name in SEEDING_KERNELS}
    out.update((name, get_kernel("init.cu", name, of)) for name, of in SAMPLING_KERNELS)
    return out


def _grid(engine: Any, n: int) -> tuple[int]:
    return (max(1, min(-(-n // 256), 4 * engine.config.n_sm)),)


def _potentials(
    engine: Any, data: Any, cand: Any, closest: Any, n_trials: int, kernels: Any
) -> Any:
    """``pot[r * n_trials + l] = sum_n min(closest[r, n], |x_n - cand[r * n_trials + l]|^2)``."""
    xp = engine.xp
    n_restarts, n_samples = closest.shape
    n_cand, n_features = cand.shape
    pot = xp.zeros(n_cand, dtype=xp.float64)
    owner = np.repeat(np.arange(n_restarts), n_trials)
    weights = data.weights
    for row0, x in _blocks(engine, data):
        if kernels is not None:
            kernels["kpp_potentials"](
                _grid(engine, x.shape[0]),
                (256,),
                (
                    x,
                    np.int64(x.shape[0]),
                    np.int32(n_features),
                    cand,
                    np.int32(n_restarts),
                    np.int32(n_trials),
                    closest,
                    np.int64(n_samples),
                    np.int64(row0),
                    np.intp(0) if weights is None else weights,
                    pot,
                ),
                shared_mem=8 * n_cand,
            )
            continue
        for start in range(0, x.shape[0], _ROWS // max(1, n_cand)):
            part = x[start : start + _ROWS // max(1, n_cand)]
            diff = (part[:, None, :] - cand[None]).astype(np.float64)
            d2 = np.einsum("ncd,ncd->nc", diff, diff)
            rows = slice(row0 + start, row0 + start + part.shape[0])
            if weights is not None:
                d2 *= weights[rows, None]
            pot += np.minimum(d2, closest[owner, rows].T.astype(np.float64)).sum(axis=0)
    return pot


def _update_closest(
    engine: Any, data: Any, centres: Any, closest: Any, kernels: Any, reset: bool = False
) -> None:
    """``closest[r] = min(closest[r], |x - centres[r]|^2)`` in place (``reset``: closest = +inf)."""
    n_restarts, n_samples = closest.shape
    if kernels is None and reset:
        closest.fill(np.inf)
    weights = data.weights
    for row0, x in _blocks(engine, data):
        if kernels is not None:
            kernels["kpp_update"](
                _grid(engine, x.shape[0]),
                (256,),
                (
                    x,
                    np.int64(x.shape[0]),
                    np.int32(x.shape[1]),
                    centres,
                    np.int32(n_restarts),
                    closest,
                    np.int64(n_samples),
                    np.int64(row0),
                    np.intp(0) if weights is None else weights,
                    np.int32(reset),
                ),
            )
            continue
        for start in range(0, x.shape[0], _ROWS):
            part = x[start : start + _ROWS]
            diff = (part[None, :, :] - centres[:, None, :]).astype(np.float64)
            d2 = np.einsum("rnd,rnd->rn", diff, diff)
            rows = slice(row0 + start, row0 + start + part.shape[0])
            if weights is not None:
                d2 *= weights[None, rows]
            closest[:, rows] = np.minimum(closest[:, rows].astype(np.float64), d2)


def _sample(engine: Any, closest: Any, u: Any, kernels: Any) -> Any:
    """Candidate rows of every restart, (R * n_trials,) int64.

    Candidate ``l`` of restart ``r`` is the first row whose cumulative distance reaches
    ``u[r, l]`` times the restart's total (scikit-learn's ``searchsorted`` on
    ``stable_cumsum``). ``u`` (R, n_trials) float64, a view of the draws.
    """
    n_restarts, n_samples = closest.shape
    n_trials = u.shape[1]
    if kernels is None:
        ids = np.empty((n_restarts, n_trials), dtype=np.int64)
        for r in range(n_restarts):
            cum = np.cumsum(closest[r], dtype=np.float64)
            ids[r] = np.minimum(np.searchsorted(cum, u[r] * cum[-1]), n_samples - 1)
        return ids.ravel()
    xp = engine.xp
    n_sums = -(-n_samples // SAMPLE_BLOCK_ROWS)
    sums = xp.empty((n_restarts, n_sums), dtype=xp.float64)
    ids = xp.empty(n_restarts * n_trials, dtype=xp.int64)
    kernels["kpp_block_sums"](
        (n_sums, n_restarts),
        (256,),
        (closest, np.int64(n_samples), np.int32(SAMPLE_BLOCK_ROWS), np.int32(n_sums), sums),
    )
    kernels["kpp_sample"](
        (n_trials, n_restarts),
        (256,),
        (
            closest,
            np.int64(n_samples),
            np.int32(SAMPLE_BLOCK_ROWS),
            np.int32(n_sums),
            sums,
            u,
            np.int64(u.strides[0] // u.itemsize),
            np.int32(n_trials),
            ids,
        ),
    )
    return ids


def gather_rows(engine: Any, data: Any, ids: Any, out: Any = None) -> Any:
    """Rows ``ids`` (global row numbers, engine array of int64) of the centred data.

    Returns ``out``, shape (len(ids), n_features) in the data's type (new unless given; a
    C-contiguous engine array).
    """
    xp = engine.xp
    n_ids = ids.shape[0]
    if out is None:
        out = xp.empty((n_ids, data.n_features), dtype=data.dtype)
    kernel = None
    if xp is not np:
        from ._cupy.kernels import get_kernel

        kernel = get_kernel("init.cu", "gather_rows", data.dtype)
    for row0, x in _blocks(engine, data):
        if kernel is not None:
            kernel(
                _grid(engine, n_ids * x.shape[1]),
                (256,),
                (
                    x,
                    np.int64(x.shape[0]),
                    np.int32(x.shape[1]),
                    np.int64(row0),
                    ids,
                    np.int32(n_ids),
                    out,
                    np.int64(x.shape[1]),
                ),
            )
            continue
        local = ids - row0
        inside = (local >= 0) & (local < x.shape[0])
        out[inside] = x[local[inside]]
    return out


def _choose(
    engine: Any,
    cand: Any,
    pot: Any,
    cand_ids: Any,
    c: int,
    centres: Any,
    indices: Any,
    chosen: Any,
    kernels: Any,
) -> None:
    """Make every restart's candidate with the smallest potential its centre ``c``.

    The first of equal ones, as ``argmin``: ``centres[:, c]`` (float64), ``indices[:, c]`` and
    ``chosen`` (R, D), the data's type. ``cand`` (R * n_trials, D); with one candidate per
    restart ``pot`` is not read.
    """
    n_restarts, n_clusters, n_features = centres.shape
    n_trials = cand.shape[0] // n_restarts
    if kernels is not None:
        kernels["kpp_choose"](
            (n_restarts,),
            (min(256, max(32, -(-n_features // 32) * 32)),),
            (
                cand,
                pot,
                cand_ids,
                np.int32(n_trials),
                np.int32(n_features),
                np.int32(c),
                np.int32(n_clusters),
                centres,
                indices,
                chosen,
            ),
        )
        return
    best = (
        np.zeros(n_restarts, dtype=np.int64)
        if n_trials == 1
        else np.argmin(pot.reshape(n_restarts, n_trials), axis=1)
    )
    src = np.arange(n_restarts) * n_trials + best
    indices[:, c] = cand_ids[src]
    chosen[...] = cand[src]
    centres[:, c] = chosen


def kmeans_plusplus(
    engine: Any, data: Any, n_clusters: Any, first: Any, u: Any, out: Any = None
) -> tuple[Any, Any]:
    """Greedy k-means++ seeding of ``R`` restarts at once.

    Parameters
    ----------
    engine, data
        An engine and its prepared data.
    n_clusters : int or sequence of R ints
        Centres of every restart, or of each restart (non-increasing: model selection seeds
        candidates of several K together; the restarts still seeding at centre ``c`` are then
        a leading block, whose arrays are views of the whole batch's).
    first : array of shape (R,)
        Row of every restart's first centre.
    u : array of shape (R, max(n_clusters) - 1, n_local_trials)
        Uniform draws in [0, 1): candidate ``l`` of centre ``c`` is the first row whose
        cumulative potential reaches ``u[r, c - 1, l]`` of the restart's potential (rows past a
        restart's own ``n_clusters - 1`` are not read).
    out : engine array of shape (R, max(n_clusters), n_features), float64, optional
        Where to write the centres (C-contiguous). Centres past a restart's own
        ``n_clusters`` are left as they are (zeros in a new array).

    Returns
    -------
    centres : array of shape (R, max(n_clusters), n_features), float64 (rows of the data)
    indices : array of shape (R, max(n_clusters)), int64 (-1 past a restart's centres)
    """
    xp = engine.xp
    n_restarts = len(first)
    sizes = np.broadcast_to(np.asarray(n_clusters, dtype=np.int64), (n_restarts,))
    if (np.diff(sizes) > 0).any() or sizes.min() < 1:
        raise ValueError("kmeans_plusplus: n_clusters must be positive and non-increasing")
    k_max = int(sizes[0])
    n_samples, n_features = data.n_samples, data.n_features
    kernels = _kernels(engine, data.dtype)
    first = xp.asarray(np.asarray(first, dtype=np.int64))
    u = xp.asarray(np.ascontiguousarray(u, dtype=np.float64))
    n_trials = u.shape[2] if k_max > 1 else 1
    indices = xp.full((n_restarts, k_max), -1, dtype=xp.int64)
    centres = out
    if centres is None:
        centres = xp.zeros((n_restarts, k_max, n_features), dtype=xp.float64)
    chosen = xp.empty((n_restarts, n_features), dtype=data.dtype)
    # float32 whatever the data: it only weighs the sampling of the next candidates
    closest = xp.empty((n_restarts, n_samples), dtype=xp.float32)
    pot = xp.zeros(n_restarts * n_trials, dtype=xp.float64)
    rows = gather_rows(engine, data, first)
    _choose(engine, rows, pot, first, 0, centres, indices, chosen, kernels)
    seeding = int((sizes > 1).sum())  # the leading restarts that need centre 1
    if seeding:
        _update_closest(engine, data, chosen[:seeding], closest[:seeding], kernels, reset=True)
    for c in range(1, k_max):
        m = seeding  # restarts with more than c centres
        ids = _sample(engine, closest[:m], u[:m, c - 1, :], kernels)
        cand = gather_rows(engine, data, ids)
        pot = _potentials(engine, data, cand, closest[:m], n_trials, kernels)
        _choose(engine, cand, pot, ids, c, centres[:m], indices[:m], chosen[:m], kernels)
        seeding = int((sizes > c + 1).sum())
        if seeding:
            _update_closest(engine, data, chosen[:seeding], closest[:seeding], kernels)
    return centres, indices


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
    active = _all_active(xp, n_restarts)
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
                out[xp.asarray(rows)] = centres  # every restart's centres so far
                out_iter[xp.asarray(rows)] = n_iter
                rows, pick = rows[keep], xp.asarray(keep)
                centres = xp.ascontiguousarray(centres[pick])
                active, n_iter = xp.ascontiguousarray(active[pick]), n_iter[pick]
                hard = hard_params(centres, "diag", precision, xp, _sizes_of(sizes, rows))
                reader = engine.read_later(active)
        pending = reader
    out[xp.asarray(rows)] = centres
    out_iter[xp.asarray(rows)] = n_iter
    return out, out_iter


def _all_active(xp: Any, n: int) -> Any:
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


def seed_all(engine: Any, data: Any, k: Any, draws: list[dict[str, Any]]) -> Any:
    """k-means++ centres of every restart, (R, K, D) float64.

    ``k``: the centres of every restart, or of each (model selection: candidates of several K,
    ``K`` their largest; a restart's centres past its own K are zeros). Restarts are seeded
    together where they draw as many candidates per centre, the larger K first, so a batch of
    candidates costs the data passes of its largest K rather than of their sum.

    The seeding holds :data:`SEED_BYTES_PER_SAMPLE` per sample and restart on the device:
    restarts are seeded in groups that fit the engine's scratch allowance, and where even one
    restart does not fit it, on evenly spaced rows that do (every sample then takes part in the
    Lloyd iterations).
    """
    xp = engine.xp
    sizes = np.broadcast_to(np.asarray(k, dtype=np.int64), (len(draws),))
    k_max = int(sizes.max())
    scratch = engine.scratch_bytes(data)
    n = data.n_samples
    per_sample = SEED_BYTES_PER_SAMPLE
    seed_data = data
    if per_sample * n > scratch:
        n_rows = int(max(k_max, scratch // (per_sample + data.n_features * data.dtype.itemsize)))
        seed_data = engine.subsample(data, max(1, -(-n // n_rows)))
    group = int(max(1, min(len(draws), scratch // (per_sample * seed_data.n_samples))))
    trials = np.array([d["u"].shape[1] for d in draws])
    # by candidates per centre, then K descending (stable: equal K keep their order)
    order = np.lexsort((-sizes, trials))
    out = xp.zeros((len(draws), k_max, data.n_features), dtype=xp.float64)
    for t in np.unique(trials):
        same = order[trials[order] == t]
        for g in range(0, len(same), group):
            part = same[g : g + group]
            k_part = sizes[part]
            u = np.zeros((len(part), int(k_part[0]) - 1, int(t)))
            for i, r in enumerate(part):
                u[i, : sizes[r] - 1] = draws[r]["u"]
            first = _first_rows(seed_data, [draws[r] for r in part])
            if len(part) == len(draws) and (part == np.arange(len(part))).all():  # in order
                kmeans_plusplus(engine, seed_data, k_part, first, u, out=out)
                continue
            centres, _ = kmeans_plusplus(engine, seed_data, k_part, first, u)
            out[xp.asarray(part), : int(k_part[0])] = centres
    return out


def _first_rows(data: Any, draws: list[dict[str, Any]]) -> np.ndarray:
    """Every restart's first k-means++ centre: a row of ``data`` (what is seeded, or a subsample).

    ``first`` was drawn uniformly; ``first_u`` is mapped through the rows' cumulative weight
    (probability proportional to weight; rows of weight 0 are never drawn).
    """
    if "first_u" not in draws[0]:
        return np.array([d["first"] for d in draws]) % data.n_samples
    weights = host_weights(data)
    if weights is None:  # the subsample's weights happen to be equal
        return np.array([int(d["first_u"] * data.n_samples) for d in draws])
    cum = np.cumsum(weights)
    ids = np.searchsorted(cum, np.array([d["first_u"] for d in draws]) * cum[-1], side="right")
    return np.minimum(ids, data.n_samples - 1)
