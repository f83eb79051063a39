"""k-means++ seeding on the engine's device (``init_params="kmeans"`` and ``"k-means++"``).

scikit-learn's greedy variant (``2 + log K`` candidates per centre, the one with the smallest
potential kept) for every restart at once, each step a ``cuda/init.cu`` kernel on CuPy engines and
array code on host array modules (the NumPy reference the unit tests run). With sample weights the
seeding keeps ``w * distance``. Restarts of several K (model selection's candidates) seed
together. The Lloyd iterations that follow are :mod:`gmm_core._kmeans`; :mod:`gmm_core._init`
turns the centres into initial parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

#: rows per block of the reductions and GEMMs done here with array operations (at most; fewer
#: where the engine's scratch allowance is smaller)
_ROWS = 1 << 18


def _blocks(engine: Any, data: Any) -> Iterator[tuple[int, Any]]:
    """``(first row, device array)`` of every row block of the centred data."""
    row0 = 0
    for block in engine.device_chunks(data):
        yield row0, block
        row0 += block.shape[0]


def _runs(rows: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """``(first position, end position, first row)`` of each run of consecutive ``rows``."""
    cuts = np.flatnonzero(np.diff(rows) != 1) + 1
    for start, stop in zip(np.r_[0, cuts], np.r_[cuts, len(rows)], strict=True):
        yield int(start), int(stop), int(rows[start])


def take_restarts(xp: Any, a: Any, rows: Any, width: int | None = None) -> Any:
    """``a[rows, :width]``, a new C-contiguous array: restarts ``rows`` of an init's array.

    ``rows`` host ints; ``a`` C-contiguous (centres (R, K, D), flags and counts (R,)).

    On CuPy arrays one 2-D memcpy per run of consecutive rows: a gather (fancy indexing) is a
    kernel CuPy compiles on first use, 0.1 s of a process's first fit.
    """
    rows = np.asarray(rows, dtype=np.int64)
    full = a.shape[1] if a.ndim > 1 else 1
    width = full if width is None or a.ndim < 2 else width
    if width > full or (rows.size and not 0 <= rows.min() <= rows.max() < a.shape[0]):
        raise ValueError(f"take_restarts: rows or width {width} outside an array of {a.shape}")
    if xp is np:
        return np.ascontiguousarray(a[rows, :width] if a.ndim > 1 else a[rows])
    from ._cupy.copies import copy_rows

    if not a.flags.c_contiguous:
        raise ValueError("take_restarts() reads C-contiguous arrays only")
    shape = (len(rows), width, *a.shape[2:]) if a.ndim > 1 else (len(rows),)
    out = xp.empty(shape, dtype=a.dtype)
    if not rows.size:
        return out
    size = out.nbytes // len(rows)  # bytes taken per restart
    for start, stop, first in _runs(rows):
        copy_rows(out[start:], size, a, a.strides[0], size, stop - start, first * a.strides[0])
    return out


def put_restarts(xp: Any, out: Any, rows: Any, values: Any) -> None:
    """``out[rows, :values.shape[1]] = values`` (``out[rows] = values`` for 1-D arrays).

    The inverse of :func:`take_restarts`; compiles nothing on CuPy arrays (C-contiguous, one
    dtype).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if values is out:  # the whole batch, in place (Lloyd before it dropped a restart)
        if not np.array_equal(rows, np.arange(out.shape[0])):
            raise ValueError("put_restarts: an array put into itself must be all of it, in order")
        return
    if (
        values.shape[0] != len(rows)
        or values.shape[2:] != out.shape[2:]
        or (values.ndim > 1 and values.shape[1] > out.shape[1])
        or (rows.size and not 0 <= rows.min() <= rows.max() < out.shape[0])
    ):
        raise ValueError(f"put_restarts: {values.shape} does not fit rows of {out.shape}")
    if not rows.size:
        return
    if xp is np:
        if out.ndim > 1:
            out[rows, : values.shape[1]] = values
        else:
            out[rows] = values
        return
    from ._cupy.copies import copy_rows

    if not (out.flags.c_contiguous and values.flags.c_contiguous) or out.dtype != values.dtype:
        raise ValueError("put_restarts() writes C-contiguous arrays of one dtype only")
    size = values.nbytes // len(rows)
    for start, stop, first in _runs(rows):
        copy_rows(out[first:], out.strides[0], values[start:], size, size, stop - start)


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
#: candidate sampling (their own arrays' types)
SEEDING_KERNELS = ("kpp_potentials", "kpp_update", "gather_rows", "kpp_choose")
SAMPLING_KERNELS = (("kpp_block_sums", np.float32), ("kpp_sample", np.float32))


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


def kmeans_plusplus(engine: Any, data: Any, n_clusters: Any, first: Any, u: Any) -> tuple[Any, Any]:
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

    Returns
    -------
    centres : array of shape (R, max(n_clusters), n_features), float64 (rows of the data; zeros
        past a restart's own ``n_clusters``)
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
    # -1 filled on the host: a device fill of -1 is a kernel CuPy compiles on first use
    indices = xp.asarray(np.full((n_restarts, k_max), -1, dtype=np.int64))
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
            centres, _ = kmeans_plusplus(engine, seed_data, k_part, first, u)
            put_restarts(xp, out, part, centres)
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
