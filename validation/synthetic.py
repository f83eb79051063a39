"""Synthetic host telemetry with real mixture structure, and deliberately bad batches.

Every row is drawn from one of a few operating regimes of a service (idle, steady, peak, ...);
within a regime the features are Gaussian with a few physical correlations (busier CPU runs
hotter, more requests raise latency), so a Gaussian mixture has genuine components to find.
Values stay inside the ranges of ``validation/contracts/telemetry.yaml``.

Examples
--------
>>> from validation.synthetic import make_telemetry
>>> df = make_telemetry(1000, "2026-11-01", "2026-11-02", seed=1)
>>> list(df.columns)
['event_id', 'ts', 'cpu_util', 'mem_util', 'latency_ms', 'error_rate', 'req_rate', 'temp_c']
>>> bool(df["ts"].between("2026-11-01", "2026-11-02", inclusive="left").all())
True
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FEATURE_COLUMNS = ("cpu_util", "mem_util", "latency_ms", "error_rate", "req_rate", "temp_c")
# inclusive physical ranges, the same as the contract's (values are clipped into them)
FEATURE_RANGES = {
    "cpu_util": (0.0, 100.0),
    "mem_util": (0.0, 100.0),
    "latency_ms": (0.0, 60000.0),
    "error_rate": (0.0, 1.0),
    "req_rate": (0.0, 100000.0),
    "temp_c": (-20.0, 120.0),
}
# regime: weight, then (mean, std) per feature in FEATURE_COLUMNS order
REGIMES: dict[str, tuple[float, tuple[tuple[float, float], ...]]] = {
    "idle": (0.30, ((8, 3), (30, 5), (20, 5), (0.002, 0.001), (50, 15), (38, 2))),
    "steady": (0.35, ((35, 6), (50, 6), (45, 8), (0.005, 0.002), (800, 120), (52, 3))),
    "peak": (0.18, ((78, 7), (68, 6), (120, 20), (0.012, 0.004), (2600, 300), (68, 4))),
    "degraded": (0.10, ((55, 10), (85, 4), (650, 120), (0.08, 0.02), (400, 100), (60, 4))),
    "batch_jobs": (0.07, ((92, 3), (75, 5), (60, 10), (0.004, 0.002), (150, 40), (78, 3))),
    "overheating": (0.05, ((60, 8), (55, 6), (200, 40), (0.03, 0.01), (900, 150), (95, 4))),
    "memory_leak": (0.05, ((40, 6), (93, 2), (300, 60), (0.02, 0.008), (600, 100), (55, 3))),
    "incident": (0.03, ((20, 8), (40, 8), (2500, 600), (0.35, 0.08), (200, 80), (45, 4))),
}
MAX_MODES = len(REGIMES)
DEFAULT_WINDOW = ("2026-11-01", "2026-11-02")


def _utc(value: Any) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def make_telemetry(
    n_rows: int,
    start: Any,
    end: Any,
    *,
    seed: int = 0,
    n_modes: int = 4,
    shift: float = 0.0,
) -> pd.DataFrame:
    """Draw ``n_rows`` telemetry rows for the window ``[start, end)``.

    Parameters
    ----------
    n_rows : int
        Rows to draw.
    start, end : str, datetime or Timestamp
        Window bounds (naive means UTC); every ``ts`` lies in ``[start, end)``.
    seed : int
        Seed of the one random generator used.
    n_modes : int
        Number of operating regimes mixed (1 to 8), the first ones of :data:`REGIMES`.
    shift : float
        Moves every regime mean by ``shift`` of that regime's standard deviations on every
        feature (a regime change: the drift tests' and the demo's shifted data). 0 = reference.

    Returns
    -------
    pandas.DataFrame of shape (n_rows, 2 + 6)
        ``event_id`` (unique int64), ``ts`` (datetime64[us, UTC], sorted) and the features of
        :data:`FEATURE_COLUMNS` (float64).
    """
    if not 1 <= n_modes <= MAX_MODES:
        raise ValueError(f"n_modes must be in 1..{MAX_MODES}, got {n_modes}")
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    start_ts, end_ts = _utc(start), _utc(end)
    if not start_ts < end_ts:
        raise ValueError(f"window start {start_ts} must be before its end {end_ts}")
    rng = np.random.default_rng(seed)
    names = list(REGIMES)[:n_modes]
    weights = np.array([REGIMES[n][0] for n in names])
    params = np.array([REGIMES[n][1] for n in names], dtype=np.float64)  # (n_modes, 6, 2)
    means, stds = params[..., 0] + shift * params[..., 1], params[..., 1]

    regime = rng.choice(n_modes, size=n_rows, p=weights / weights.sum())
    noise = rng.standard_normal((n_rows, len(FEATURE_COLUMNS)))
    # within-regime correlations: CPU load heats the package; request rate drives latency
    noise[:, 5] = 0.6 * noise[:, 0] + 0.8 * noise[:, 5]
    noise[:, 2] = 0.5 * noise[:, 4] + np.sqrt(0.75) * noise[:, 2]
    values = means[regime] + stds[regime] * noise
    for j, name in enumerate(FEATURE_COLUMNS):
        values[:, j] = np.clip(values[:, j], *FEATURE_RANGES[name])

    span_us = (end_ts - start_ts) // pd.Timedelta(microseconds=1)
    offsets_us = np.sort(rng.integers(0, span_us, size=n_rows))
    frame = pd.DataFrame(values, columns=list(FEATURE_COLUMNS))
    frame.insert(0, "ts", start_ts + pd.to_timedelta(offsets_us, unit="us"))
    frame["ts"] = frame["ts"].astype("datetime64[us, UTC]")
    # ids unique within and across daily windows: window start (seconds) * 1e6 + row number
    frame.insert(
        0, "event_id", int(start_ts.timestamp()) * 1_000_000 + np.arange(n_rows, dtype=np.int64)
    )
    return frame


def write_window(
    df: pd.DataFrame,
    data_root: str | os.PathLike[str],
    day: str | dt.date,
    *,
    name: str = "telemetry",
) -> Path:
    """Write ``df`` to ``data_root/incoming/<YYYY-MM-DD>/<name>.parquet`` and return the path.

    The write is atomic (temporary file, then rename). An existing file is never overwritten:
    identical bytes are a no-op, different bytes raise :class:`FileExistsError`.
    """
    day_str = pd.Timestamp(day).strftime("%Y-%m-%d")
    folder = Path(data_root) / "incoming" / day_str
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.parquet"
    tmp = folder / f".{name}.parquet.{os.getpid()}.tmp"
    try:
        df.to_parquet(tmp, engine="pyarrow", index=False)
    except BaseException:  # a full disk: leave no partial temporary file behind
        tmp.unlink(missing_ok=True)
        raise
    if target.exists():
        from validation.moves import sha256_file

        same = sha256_file(target) == sha256_file(tmp)
        tmp.unlink()  # our own temporary copy, never delivered data
        if same:
            return target
        raise FileExistsError(
            f"{target} already holds a different window; move it away (or write another day) "
            "instead of overwriting delivered telemetry"
        )
    os.replace(tmp, target)
    return target


# ---------------------------------------------------------------------------------------------
# Bad batches, each with the expectation it must fail
# ---------------------------------------------------------------------------------------------
BAD_BATCH_EXPECTATIONS: dict[str, str] = {
    "missing_column": "expect_column_to_exist",
    "wrong_type": "expect_column_values_to_have_dtype",
    "nan": "expect_column_values_to_not_be_null",
    "inf": "expect_column_values_to_be_finite",
    "out_of_range": "expect_column_values_to_be_between",
    "duplicate_ids": "expect_column_values_to_be_unique",
    "outside_window": "expect_column_values_to_be_between",
    "extra_column": "expect_table_columns_to_match_set",
    "too_few_rows": "expect_table_row_count_to_be_between",
    "zero_rows": "expect_table_row_count_to_be_between",
    # file-level kinds: only write_bad_batch makes them
    "empty_file": "expect_batch_files_to_be_readable",
    "corrupt_parquet": "expect_batch_files_to_be_readable",
}
FILE_KINDS = ("empty_file", "corrupt_parquet")


def make_bad_batch(
    kind: str,
    n_rows: int = 500,
    start: Any = DEFAULT_WINDOW[0],
    end: Any = DEFAULT_WINDOW[1],
    *,
    seed: int = 0,
    column: str = "latency_ms",
    n_bad: int = 3,
) -> pd.DataFrame:
    """A telemetry DataFrame broken in one way; it fails ``BAD_BATCH_EXPECTATIONS[kind]``.

    Parameters
    ----------
    kind : str
        One of the non-file keys of :data:`BAD_BATCH_EXPECTATIONS`.
    n_rows, start, end, seed
        As for :func:`make_telemetry`.
    column : str
        Feature broken by ``missing_column``, ``wrong_type``, ``nan``, ``inf``, ``out_of_range``.
    n_bad : int
        Rows broken (for the row-level kinds).
    """
    if kind in FILE_KINDS:
        raise ValueError(f"{kind!r} is a file-level defect: use write_bad_batch(kind, path)")
    if kind not in BAD_BATCH_EXPECTATIONS:
        raise ValueError(
            f"unknown bad batch kind {kind!r}; choose from {list(BAD_BATCH_EXPECTATIONS)}"
        )
    rows = {"too_few_rows": 5, "zero_rows": 0}.get(kind, n_rows)
    df = make_telemetry(rows, start, end, seed=seed)
    rng = np.random.default_rng(seed + 1)
    bad: Any = rng.choice(len(df), size=min(n_bad, len(df)), replace=False) if len(df) else []
    if kind == "missing_column":
        df = df.drop(columns=[column])
    elif kind == "wrong_type":
        df[column] = df[column].map(lambda v: f"{v:.3f}").astype("str")
    elif kind == "nan":
        df.loc[bad, column] = np.nan
    elif kind == "inf":
        df.loc[bad, column] = np.inf
    elif kind == "out_of_range":
        df.loc[bad, column] = -1.0 - df.loc[bad, column]  # negative: below every feature's min
    elif kind == "duplicate_ids":
        df.loc[bad, "event_id"] = df["event_id"].iloc[0]
    elif kind == "outside_window":
        df.loc[bad, "ts"] = _utc(end) + pd.Timedelta(hours=1)
    elif kind == "extra_column":
        df["debug_note"] = "x"
    return df


def write_bad_batch(kind: str, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Write a bad batch of ``kind`` to ``path`` (Parquet, or CSV by suffix) and return the path.

    ``empty_file`` writes 0 bytes; ``corrupt_parquet`` writes a good Parquet file cut short (its
    footer is missing). Other kinds write :func:`make_bad_batch` (``kwargs`` go there).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty_file":
        target.write_bytes(b"")
        return target
    if kind == "corrupt_parquet":
        tmp = target.with_name(f".{target.name}.tmp")
        make_telemetry(kwargs.pop("n_rows", 500), *DEFAULT_WINDOW, **kwargs).to_parquet(
            tmp, index=False
        )
        blob = tmp.read_bytes()
        tmp.unlink()  # our own scratch file
        target.write_bytes(blob[: len(blob) * 2 // 3])
        return target
    frame = make_bad_batch(kind, **kwargs)
    if target.suffix.lower() == ".csv":
        frame.to_csv(target, index=False)
    else:
        frame.to_parquet(target, index=False)
    return target
