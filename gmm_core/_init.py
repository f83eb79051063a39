"""Initial parameters of every restart, drawn where the data live (the GPU engines).

scikit-learn draws each restart's initial responsibilities on the host, one restart after the
other (``KMeans`` for ``init_params="kmeans"``). On a GPU that costs a copy of the data to the
host and seconds of host k-means. Here every ``init_params`` runs on the engine's device, for
all restarts at once, from random numbers that still come from the estimator's
``random_state`` (so a seed gives the same model every time on the same device):

``kmeans``
    k-means++ seeding (scikit-learn's greedy variant: ``2 + log K`` candidates per centre, the
    one with the smallest potential kept), two data passes per centre for all restarts
    (``cuda/init.cu``), then Lloyd iterations. A Lloyd iteration *is* an EM pass: with equal
    weights and one huge equal precision, every responsibility is 0 or 1 (the nearest centre,
    float32 distances as in any k-means) and the pass's statistics are the cluster counts and
    sums; so the engine's fused passes run every restart's k-means in one pass over the data.
    A last pass at the final centres, with the fit's covariance type, gives the initial
    statistics (scikit-learn's labels after ``KMeans.fit``).
``k-means++`` / ``random_from_data``
    The seeding alone / K distinct random rows; one sample per component.
``random``
    Uniform random responsibilities, normalised per sample, generated and reduced chunk by chunk
    (no N x K array).

Differences from scikit-learn's ``KMeans``, by design: the first centre is drawn uniformly, a
centre left without samples keeps its position (scikit-learn moves it to a far sample), and
Lloyd stops on the centre-shift rule alone (``tol=1e-4`` of the mean feature variance). The
NumPy backend does not use this module: it reproduces scikit-learn exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ._gaussian import (
    Params,
    Stats,
    cholesky_from_precisions,
    cholesky_precisions,
    covariances_from_precisions,
    estimate_parameters,
)
from ._kmeans import (
    COARSE_MIN_ROWS,
    COARSE_STEP,
    HARD_PRECISION,
    KMEANS_TOL,
    all_active,
    hard_params,
    lloyd_coarse_to_fine,
)
from ._kmeans_seeding import (
    _ROWS,
    _blocks,
    gather_rows,
    host_weights,
    seed_all,
    take_restarts,
)
from ._padded_em import buckets

__all__ = ["candidate_params", "column_moments", "draw", "initial_params"]


def _sub_blocks(block: Any, rows: int = _ROWS) -> Iterator[Any]:
    for start in range(0, block.shape[0], rows):
        yield block[start : start + rows]


def column_moments(xp: Any, blocks: Any, max_bytes: int = 32 << 20) -> tuple[Any, Any]:
    """Mean and (biased) variance of every column, float64, without a full-size temporary.

    ``blocks`` iterates over row blocks of one array (any float dtype). Sums over rows are
    products with a vector of ones (a GEMV: a CuPy reduction over the leading axis of a tall
    array runs one block per column), in float64 blocks of at most ``max_bytes`` (one at a
    time: the peak beside the data is one such block).
    """
    n, total, total_sq = 0, 0.0, 0.0
    for block in blocks:
        rows = max(1, max_bytes // (8 * max(1, block.shape[1])))
        ones = xp.ones(min(rows, block.shape[0]), dtype=xp.float64)
        for part in _sub_blocks(block, rows):
            p64 = part.astype(xp.float64)
            w = ones[: part.shape[0]]
            total = total + w @ p64
            p64 *= p64
            total_sq = total_sq + w @ p64
            n += part.shape[0]
            del p64  # before the next block's copy is allocated
    mean = total / n
    return mean, xp.maximum(total_sq / n - mean * mean, 0.0)


# ---------------------------------------------------------------------------------------------
# Random draws (host, from the estimator's random_state, in a fixed order)


def _n_local_trials(n_clusters: int) -> int:
    return 2 + int(math.log(n_clusters))  # scikit-learn's k-means++


def _draws(
    random_state: np.random.RandomState,
    init_params: str,
    n_init: int,
    n_samples: int,
    k: int,
    weighted: bool = False,
) -> list[dict[str, Any]]:
    """What each restart draws from ``random_state``, restart after restart.

    ``weighted`` (unequal weights, see :func:`host_weights`): k-means++ draws its first centre
    with probability proportional to the row's weight (as scikit-learn's weighted k-means++):
    a uniform ``first_u`` that ``_kmeans._first_rows`` maps to a row of the data it seeds.
    """
    out = []
    for _ in range(n_init):
        if init_params in ("kmeans", "k-means++"):
            first = random_state.uniform() if weighted else int(random_state.randint(n_samples))
            out.append(
                {
                    "first_u" if weighted else "first": first,
                    "u": random_state.uniform(size=(k - 1, _n_local_trials(k))),
                }
            )
        else:  # 'random' (the device generator's seed), 'random_from_data' (rows' generator)
            out.append({"seed": int(random_state.randint(np.iinfo(np.int32).max))})
    return out


# ---------------------------------------------------------------------------------------------
# Initial statistics


def _stats_of_rows(
    engine: Any,
    data: Any,
    rows: Any,
    covariance_type: str,
    shift: Any,
    eps: float,
    moments: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[Stats]:
    """One-sample components (``k-means++``, ``random_from_data``): host statistics per restart.

    ``rows`` (R, K, D) centred samples (engine array). ``tied`` uses X^T X over all samples
    (``moments``: :func:`_tied_moments`, where the caller has them) with scikit-learn's
    handling of the samples no component holds (see ``_host_init.stats_from_resp``).
    """
    rows = np.asarray(engine.to_host(rows), dtype=np.float64)
    n_restarts, n_components, _ = rows.shape
    if covariance_type == "tied" and moments is None:
        moments = _tied_moments(engine, data)
    out = []
    for r in range(n_restarts):
        x = rows[r]
        nk = np.ones(n_components)
        if covariance_type == "full":
            sxx = x[:, :, None] * x[:, None, :]
        elif covariance_type == "diag":
            sxx = x * x
        elif covariance_type == "spherical":
            sxx = (x * x).sum(axis=1)
        else:
            # as _host_init.stats_from_resp (the derivation there), nk_raw = 1 per component
            assert moments is not None
            xtx, column_sum = moments
            s = np.asarray(shift, dtype=np.float64)
            outside = _weight_sum(data) - n_components + eps * n_components
            d = column_sum - x.sum(axis=0)
            sxx = xtx + outside * np.outer(s, s) + np.outer(d, s) + np.outer(s, d)
        expand = (lambda a: a) if covariance_type == "tied" else (lambda a: a[None])
        out.append(
            Stats(np.zeros(1), nk[None], x[None], expand(sxx), data.n_samples, data.total_weight)
        )
    return out


def _weight_sum(data: Any) -> float:
    """What a lower bound divides by: the total weight, else the number of rows."""
    return float(data.n_samples if data.total_weight is None else data.total_weight)


def _tied_moments(engine: Any, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """``X^T W X`` and ``sum_n w_n x_n`` of the centred data, host float64, in one pass.

    Unweighted (W = 1) the sum is 0 up to rounding: the shift is the data's mean.
    """
    xp = engine.xp
    weights = data.weights
    xtx = xp.zeros((data.n_features, data.n_features), dtype=xp.float64)
    total = xp.zeros(data.n_features, dtype=xp.float64)
    for row0, block in _blocks(engine, data):
        for start in range(0, block.shape[0], _ROWS):  # float64 temporaries of _ROWS rows
            p = block[start : start + _ROWS].astype(xp.float64, copy=False)
            left = p
            if weights is not None:
                w = weights[row0 + start : row0 + start + p.shape[0]]
                left = p * w.astype(xp.float64)[:, None]
            xtx += left.T @ p
            total += left.sum(axis=0)
    return engine.to_host(xtx), np.asarray(engine.to_host(total), dtype=np.float64)


def _random_resp_stats(
    engine: Any, data: Any, k: int, seed: int, covariance_type: str, scratch: float = np.inf
) -> Stats:
    """Statistics of uniform random responsibilities (normalised per sample), block by block.

    Blocks of rows small enough that their float64 temporaries fit ``scratch`` bytes.
    """
    xp = engine.xp
    rows = int(max(1024, min(_ROWS, scratch // (8 * (2 * k + 2 * data.n_features)))))
    rng = xp.random.RandomState(seed)
    d = data.n_features
    nk, sx = xp.zeros(k), xp.zeros((k, d))
    sxx = {
        "full": (k, d, d),
        "tied": (d, d),
        "diag": (k, d),
        "spherical": (k,),
    }[covariance_type]
    sxx = xp.zeros(sxx)
    weights = data.weights
    for row0, block in _blocks(engine, data):
        for start in range(0, block.shape[0], rows):
            part = block[start : start + rows]
            resp = rng.uniform(size=(part.shape[0], k)).astype(part.dtype)
            resp /= resp.sum(axis=1)[:, None]
            # as scikit-learn: responsibilities in the data's dtype, sums in float64 here
            r64 = resp.astype(xp.float64)
            x = part.astype(xp.float64, copy=False)
            if weights is not None:  # weighted: every row's responsibilities times its weight
                w = weights[row0 + start : row0 + start + part.shape[0]].astype(xp.float64)
                r64 *= w[:, None]
                xw = x * w[:, None]
            nk += r64.sum(axis=0)
            sx += r64.T @ x
            if covariance_type == "full":
                for j in range(k):
                    sxx[j] += (x * r64[:, j : j + 1]).T @ x
            elif covariance_type == "tied":
                sxx += (x if weights is None else xw).T @ x
            elif covariance_type == "diag":
                sxx += r64.T @ (x * x)
            else:
                sxx += r64.T @ (x * x).sum(axis=1)
    expand = (lambda a: a) if covariance_type == "tied" else (lambda a: a[None])
    return Stats(xp.zeros(1), nk[None], sx[None], expand(sxx), data.n_samples, data.total_weight)


def _params_of(
    stats: Stats, covariance_type: str, reg_covar: float, eps: float, xp: Any, shift: Any = None
) -> tuple[Any, Any, Any]:
    nk, means, covariances = estimate_parameters(stats, covariance_type, reg_covar, eps, xp, shift)
    return nk / stats.weight_sum, means, covariances


def initial_params(
    engine: Any,
    data: Any,
    *,
    init_params: str,
    n_components: int,
    n_init: int,
    covariance_type: str,
    reg_covar: float,
    eps: float,
    random_state: np.random.RandomState,
    user: dict[str, np.ndarray],
    shift: np.ndarray,
    variance: Any = None,
) -> Params:
    """Initial parameters of ``n_init`` restarts (engine arrays, float64, centred coordinates).

    ``user`` holds the estimator's validated ``*_init`` arrays (host, uncentred); with all three
    given nothing is drawn. ``variance`` (D,) of the data, when the caller knows it. The passes
    over the data run on the engine; the parameters are computed from their statistics on the
    host (a few KB) and copied to the engine once.
    """
    k = n_components
    drawn: tuple[Any, Any, Any] | None = None
    if len(user) < 3:
        draws = draw(random_state, init_params, n_init, data, k)
        (drawn,) = candidate_params(
            engine,
            data,
            init_params=init_params,
            sizes=[k],
            draws=[draws],
            covariance_type=covariance_type,
            reg_covar=reg_covar,
            eps=eps,
            shift=shift,
            variance=variance,
        )
    params = with_user_init(
        drawn,
        user,
        shift=shift,
        covariance_type=covariance_type,
        n_components=k,
        n_init=n_init,
        xp=np,
    )
    return params.map(engine.asarray)


def draw(
    random_state: np.random.RandomState, init_params: str, n_init: int, data: Any, k: int
) -> list[dict[str, Any]]:
    """What ``n_init`` restarts of ``k`` components draw from ``random_state`` (in order)."""
    unequal = host_weights(data) is not None
    return _draws(random_state, init_params, n_init, data.n_samples, k, unequal)


def candidate_params(
    engine: Any,
    data: Any,
    *,
    init_params: str,
    sizes: Sequence[int],
    draws: Sequence[list[dict[str, Any]]],
    covariance_type: str,
    reg_covar: float,
    eps: float,
    shift: np.ndarray,
    variance: Any = None,
) -> list[tuple[Any, Any, Any]]:
    """Initial ``(weights, means, covariances)`` of candidates of ``sizes[c]`` components.

    Candidate ``c`` has ``len(draws[c])`` restarts and the draws :func:`draw` made for them;
    host arrays with a restart axis, float64, centred coordinates (an ill-defined covariance
    among them raises where they are factored, :func:`with_user_init`, so one candidate's
    failure can spare the others). Every candidate gets what it would get alone; the
    k-means inits of model selection's candidates (``GaussianMixtureSelect``) share their passes:
    seeding as restarts of one k-means++ (:func:`gmm_core._kmeans_seeding.seed_all`), Lloyd as
    restarts of one hard mixture padded to the largest K of each
    :func:`gmm_core._padded_em.buckets` group (the candidates' EM passes share theirs alike).
    """
    xp = engine.xp
    ks = np.asarray(sizes, dtype=np.int64)
    n_init = np.array([len(d) for d in draws])
    owned = np.split(np.arange(int(n_init.sum())), np.cumsum(n_init)[:-1])  # candidate -> rows
    if init_params not in ("kmeans", "k-means++"):
        return [
            _sampled_params(
                engine, data, init_params, int(k), restarts, covariance_type, reg_covar, eps, shift
            )
            for k, restarts in zip(ks, draws, strict=True)
        ]
    # large data: seeding and the first Lloyd iterations on one evenly spaced subsample
    coarse = engine.subsample(data, COARSE_STEP) if data.n_samples >= COARSE_MIN_ROWS else None
    flat = [d for restarts in draws for d in restarts]
    per_restart = np.repeat(ks, n_init)
    centres = seed_all(engine, coarse if coarse is not None else data, per_restart, flat)
    if init_params == "k-means++":
        del coarse
        moments = _tied_moments(engine, data) if covariance_type == "tied" else None
        return [
            _stack(
                _stats_of_rows(
                    engine,
                    data,
                    take_restarts(xp, centres, rows, int(k)),
                    covariance_type,
                    shift,
                    eps,
                    moments,
                ),
                covariance_type,
                reg_covar,
                eps,
                shift,
            )
            for k, rows in zip(ks, owned, strict=True)
        ]
    if variance is None:
        _, variance = column_moments(xp, (b for _, b in _blocks(engine, data)))
    total = float(np.sum(engine.to_host(variance), dtype=np.float64))
    precision = HARD_PRECISION / total if total > 0 else 1.0
    tol = KMEANS_TOL * total / data.n_features
    results: dict[int, tuple[Any, Any, Any]] = {}
    groups = buckets(ks.tolist())
    for i, bucket in enumerate(groups):
        rows = np.concatenate([owned[c] for c in bucket])
        width = int(ks[bucket].max())
        mine = take_restarts(xp, centres, rows, width)
        restart_sizes = per_restart[rows]
        mine = lloyd_coarse_to_fine(
            engine, data, mine, tol=tol, precision=precision, coarse=coarse, sizes=restart_sizes
        )
        if i == len(groups) - 1:
            coarse = None  # freed before the last pass over all rows
        hard = hard_params(mine, covariance_type, precision, xp, restart_sizes)
        active = all_active(xp, len(rows))
        stats = engine.lloyd_pass(data, hard, active).map(engine.to_host)
        first = 0
        for c in bucket:
            mine_rows = slice(first, first + int(n_init[c]))
            first += int(n_init[c])
            one = _candidate_stats(stats, mine_rows, int(ks[c]), covariance_type)
            results[int(c)] = _params_of(one, covariance_type, reg_covar, eps, np, shift)
    return [results[c] for c in range(len(ks))]


def _candidate_stats(stats: Stats, rows: slice, k: int, covariance_type: str) -> Stats:
    """The statistics of restarts ``rows`` and their first ``k`` components (padding dropped).

    ``tied``: ``sxx`` is the data's ``X^T X``, one for every restart.
    """
    sxx = stats.sxx if covariance_type == "tied" else stats.sxx[rows, :k]  # tied: X^T X
    return Stats(
        stats.loglik[rows],
        stats.nk[rows, :k],
        stats.sx[rows, :k],
        sxx,
        stats.n_samples,
        stats.total_weight,
    )


def _sampled_params(
    engine: Any,
    data: Any,
    init_params: str,
    k: int,
    draws: list[dict[str, Any]],
    covariance_type: str,
    reg_covar: float,
    eps: float,
    shift: np.ndarray,
) -> tuple[Any, Any, Any]:
    """``random_from_data`` (K rows per restart) and ``random`` (random responsibilities)."""
    xp = engine.xp
    if init_params == "random_from_data":
        unequal = host_weights(data)
        p = None if unequal is None else unequal / unequal.sum()
        ids = np.stack(
            [
                np.random.default_rng(d["seed"]).choice(data.n_samples, k, replace=False, p=p)
                for d in draws
            ]
        )
        rows = gather_rows(engine, data, xp.asarray(ids.ravel().astype(np.int64)))
        rows = rows.reshape(len(draws), k, -1)
        parts = _stats_of_rows(engine, data, rows, covariance_type, shift, eps)
        return _stack(parts, covariance_type, reg_covar, eps, shift)
    parts = [
        _random_resp_stats(engine, data, k, d["seed"], covariance_type).map(engine.to_host)
        for d in draws
    ]
    return _stack(parts, covariance_type, reg_covar, eps, shift)


def with_user_init(
    drawn: tuple[Any, Any, Any] | None,
    user: dict[str, np.ndarray],
    *,
    shift: np.ndarray,
    covariance_type: str,
    n_components: int,
    n_init: int,
    xp: Any,
) -> Params:
    """The Params the EM loop starts from: drawn initial parameters and the user's ``*_init``.

    ``drawn`` is ``(weights, means, covariances)`` with a restart axis of ``n_init`` (``None``
    when the user gave all three); ``user`` holds host arrays, means uncentred.
    """
    weights, means, covariances = drawn if drawn is not None else (None, None, None)
    k = n_components
    if "weights" in user:
        weights = xp.broadcast_to(xp.asarray(user["weights"], dtype=xp.float64), (n_init, k))
    if "means" in user:
        centred = np.asarray(user["means"], np.float64) - shift
        means = xp.broadcast_to(xp.asarray(centred), (n_init, *centred.shape))
    if "precisions" in user:
        precisions = xp.asarray(user["precisions"], dtype=xp.float64)[None]
        precisions = xp.broadcast_to(precisions, (n_init, *precisions.shape[1:]))
        prec_chol = cholesky_from_precisions(precisions, covariance_type, xp)
        covariances = covariances_from_precisions(precisions, covariance_type, xp)
    else:
        prec_chol = cholesky_precisions(covariances, covariance_type, xp)
    return Params(weights, means, covariances, prec_chol).map(xp.ascontiguousarray)


def _stack(
    parts: list[Stats], covariance_type: str, reg_covar: float, eps: float, shift: Any = None
) -> tuple[Any, Any, Any]:
    """Parameters of per-restart statistics (host), stacked along the restart axis.

    ``shift``: what the data were centred by (:func:`gmm_core._gaussian.estimate_parameters`).
    """
    out = [_params_of(s, covariance_type, reg_covar, eps, np, shift) for s in parts]
    weights, means, covariances = (np.concatenate(arrays) for arrays in zip(*out, strict=True))
    return weights, means, covariances
