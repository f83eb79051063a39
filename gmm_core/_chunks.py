"""Exact EM over data given as chunks of rows (data larger than host memory).

``GaussianMixture.fit`` takes, instead of one array, a re-iterable source of row chunks: a list
or tuple of 2-D arrays, or a function returning a new iterator of them on every call (a file
reader). EM's sufficient statistics add up over rows, so every iteration is one pass over the
chunks with the engine's own pass on each (prepared, accumulated, dropped): the same algorithm
as the in-memory fit, with only one chunk in memory at a time. A chunk may also be a pair
``(X_chunk, sample_weight_chunk)``.

The data are read ``max_iter + 1`` times at most (one pass for the column means that centre the
data, then one per iteration). The initialisation is drawn from the first chunk, unless
``weights_init``, ``means_init`` and ``precisions_init`` are all given.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.utils import check_random_state

from ._checks import check_magnitude
from ._engine import Engine, get_engine
from ._fit import keep_best, run_model_em
from ._gaussian import Params, Stats
from ._host_init import host_restarts
from ._init import with_user_init
from ._weights import (
    check_enough_weighted_rows,
    check_sample_weight,
    em_scale,
    engine_for_weights,
)

if TYPE_CHECKING:
    from .mixture import GaussianMixture

Chunk = tuple[np.ndarray, np.ndarray | None]


def _is_chunk(item: Any) -> bool:
    if isinstance(item, tuple) and len(item) == 2:
        item = item[0]
    return getattr(item, "ndim", None) == 2


def is_chunk_source(X: Any) -> bool:
    """Whether ``X`` is a source of row chunks rather than one array-like."""
    if hasattr(X, "shape") or hasattr(X, "__array__"):
        return False
    if isinstance(X, Iterator) or callable(X):
        return True
    return isinstance(X, list | tuple) and len(X) > 0 and all(_is_chunk(c) for c in X)


class ChunkReader:
    """A re-iterable over ``(X_chunk, sample_weight_chunk or None)`` pairs of a source."""

    def __init__(self, source: Any) -> None:
        if isinstance(source, Iterator):
            raise TypeError(
                "fit got a one-shot iterator (a generator?) of chunks, but EM reads the data "
                "once per iteration; pass a function returning a new iterator on every call "
                "(e.g. lambda: read_chunks(path)) or a list of arrays."
            )
        self._source = source

    def __iter__(self) -> Iterator[Chunk]:
        items: Iterable[Any] = self._source() if callable(self._source) else self._source
        for item in items:
            if isinstance(item, tuple) and len(item) == 2:
                yield item[0], item[1]
            else:
                yield item, None


@dataclass
class ChunkedData:
    """What the chunked engine needs to run a pass: the reader and the centring."""

    reader: ChunkReader
    shift: np.ndarray
    covariance_type: str
    dtype: np.dtype
    n_features: int
    n_samples: int
    weighted: bool  # any chunk came with weights (chunks without weigh 1)
    weight_scale: float = 1.0  # _weights.em_scale of all the chunks' weights


class ChunkedEngine(Engine):
    """An engine whose every pass walks the chunks through an inner engine's pass."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.name = inner.name
        self.xp = inner.xp

    def _chunk(self, X: Any, w: np.ndarray | None, data: ChunkedData) -> Any:
        X = np.asarray(X, dtype=data.dtype)
        if X.ndim != 2 or X.shape[1] != data.n_features:
            raise ValueError(
                f"a chunk has shape {X.shape} where (n_rows, {data.n_features}) was read before; "
                "the chunk source must yield the same data on every pass."
            )
        if not data.weighted:
            return self.inner.prepare(X, data.shift, data.covariance_type)
        weight = np.ones(len(X)) if w is None else np.asarray(w, dtype=np.float64)
        weight = weight * data.weight_scale
        return self.inner.prepare(
            X,
            data.shift,
            data.covariance_type,
            sample_weight=weight,  # type: ignore[call-arg]
        )

    def accumulate(self, data: ChunkedData, params: Params, active: Any) -> Stats:
        total: Stats | None = None
        for X, w in data.reader:
            if len(X) == 0:  # an empty file or row group adds nothing
                continue
            stats = self.inner.accumulate(self._chunk(X, w, data), params, active)
            total = stats if total is None else total + stats
        if total is None or total.n_samples != data.n_samples:
            seen = 0 if total is None else total.n_samples
            raise ValueError(
                f"a pass over the chunks read {seen} rows where the first pass read "
                f"{data.n_samples}; the chunk source must yield the same data on every pass."
            )
        return total

    def m_step(
        self, stats: Stats, covariance_type: str, reg_covar: float, eps: float, shift: Any = None
    ) -> Any:
        return self.inner.m_step(stats, covariance_type, reg_covar, eps, shift)

    def asarray(self, a: Any) -> Any:
        return self.inner.asarray(a)

    def to_host(self, a: Any) -> Any:
        return self.inner.to_host(a)

    def read_later(self, a: Any) -> Callable[[], np.ndarray]:
        return self.inner.read_later(a)

    def synchronize(self) -> None:
        self.inner.synchronize()


@dataclass
class _FirstPass:
    first: Chunk
    n_samples: int
    total: np.ndarray  # column sums, float64
    n_positive: int
    weighted: bool
    largest: float
    dtype: np.dtype
    weight_total: float  # sum of the weights (1 for rows of chunks without)


def _first_pass(model: GaussianMixture, reader: ChunkReader) -> _FirstPass:
    """Validate every chunk once; the column sums, row count and largest magnitude.

    ``first``: the chunk the initialisation is drawn from, the first with ``n_components`` rows
    of positive weight (else the first non-empty one, for the error that names the fix).
    """
    first: Chunk | None = None
    n_samples = n_positive = 0
    total: np.ndarray | None = None
    weighted, largest, weight_total = False, 0.0, 0.0
    first_enough = False
    dtype = np.dtype(np.float64)
    for i, (X, w) in enumerate(reader):
        X = model._check_X(X, reset=i == 0, min_samples=0)  # an empty chunk is no error
        if i == 0:
            dtype = X.dtype
        X = X.astype(dtype, copy=False)
        positive = X.shape[0]
        if w is not None:
            w = check_sample_weight(w, X.shape[0], None)
            weighted = True
            positive = int(np.count_nonzero(w))
            weight_total += float(w.sum())
        else:
            weight_total += X.shape[0]
        n_positive += positive
        if positive >= model.n_components and (first is None or not first_enough):
            first, first_enough = (X, w), True
        elif first is None and X.shape[0]:
            first = (X, w)
        n_samples += X.shape[0]
        sums = X.sum(axis=0, dtype=np.float64)
        total = sums if total is None else total + sums
        if X.size:
            largest = max(largest, float(X.max()), -float(X.min()))
    if first is None or total is None:
        raise ValueError("the chunk source yielded no rows; pass at least one non-empty 2-D array.")
    return _FirstPass(first, n_samples, total, n_positive, weighted, largest, dtype, weight_total)


def fit_chunks(model: GaussianMixture, source: Any) -> None:
    """``model.fit`` over chunks of rows (see the module docstring); sets the fitted attributes."""
    started = time.perf_counter()
    reader = ChunkReader(source)
    inner = get_engine(model.backend)
    if inner.name == "dask":
        raise ValueError(
            "backend='dask' does not read chunks from the client; pass a dask.array instead "
            "(its partitions are read where they live)."
        )
    seen = _first_pass(model, reader)
    if seen.weighted:
        inner = engine_for_weights(inner, model.backend)
    n_features = model.n_features_in_
    if seen.n_samples < model.n_components:
        raise ValueError(
            f"Expected n_samples >= n_components but got n_components = {model.n_components}, "
            f"n_samples = {seen.n_samples}; lower n_components or provide more samples."
        )
    if seen.weighted:
        check_enough_weighted_rows(seen.n_positive, model.n_components)
    check_magnitude(seen.largest, seen.dtype, n_features)
    shift = seen.total / seen.n_samples
    eps = 10 * float(np.finfo(seen.dtype).eps)
    weight_scale = em_scale(seen.weight_total, seen.n_samples) if seen.weighted else 1.0
    user = model._checked_initial_parameters(n_features)
    do_init = not (model.warm_start and hasattr(model, "converged_"))
    first_bound = -np.inf
    if do_init:
        drawn: tuple[Any, Any, Any] | None = None
        if len(user) < 3:
            X0, w0 = seen.first
            if (X0.shape[0] if w0 is None else int(np.count_nonzero(w0))) < model.n_components:
                raise ValueError(
                    f"no chunk has n_components = {model.n_components} rows of positive weight "
                    f"(the first has {X0.shape[0]} rows): the initialisation is drawn from one "
                    "chunk; make the chunks larger, or give weights_init, means_init and "
                    "precisions_init."
                )
            random_state = check_random_state(model.random_state)
            w0 = None if w0 is None else np.asarray(w0, np.float64) * weight_scale
            drawn = host_restarts(
                model, X0, X0 - shift.astype(X0.dtype), shift, random_state, eps, w0
            )
        params = with_user_init(
            drawn,
            user,
            shift=shift,
            covariance_type=model.covariance_type,
            n_components=model.n_components,
            n_init=model.n_init,
            xp=np,
        )
    else:  # warm start
        params = model._fitted_params(shift)
        first_bound = float(model.lower_bound_)
    engine = ChunkedEngine(inner)
    data = ChunkedData(
        reader,
        shift,
        model.covariance_type,
        seen.dtype,
        n_features,
        seen.n_samples,
        seen.weighted,
        weight_scale,
    )
    result = run_model_em(model, engine, data, params.map(engine.asarray), first_bound, eps, shift)
    keep_best(model, result, engine, shift, seen.dtype)
    model.fit_seconds_ = time.perf_counter() - started
    model.fit_timings_ = {"chunked": model.fit_seconds_}
    model.device_peak_bytes_ = None
    if not math.isfinite(model.lower_bound_) and model.max_iter > 0:
        raise ValueError("the chunked fit produced a non-finite lower bound; check the chunks.")
