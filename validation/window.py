"""Time windows of telemetry batches: ``[start, end)`` in UTC, one per ``incoming/<day>/``."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

Window = tuple[pd.Timestamp, pd.Timestamp]


def _utc(value: Any) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def as_window(window: Sequence[Any] | None) -> Window | None:
    """Normalise ``(start, end)`` (str, datetime or Timestamp; naive = UTC) to UTC Timestamps."""
    if window is None:
        return None
    start, end = (_utc(w) for w in window)
    if not start < end:
        raise ValueError(f"window start {start} must be before its end {end}")
    return start, end


def window_for_day(day: str | dt.date) -> Window:
    """The window ``[day 00:00 UTC, next day 00:00 UTC)`` of ``incoming/<YYYY-MM-DD>/``."""
    start = _utc(pd.Timestamp(day).normalize())
    return start, start + pd.Timedelta(days=1)


def window_from_path(path: str | os.PathLike[str]) -> Window | None:
    """The day window named by the nearest ``YYYY-MM-DD`` folder (or the path itself), if any."""
    candidate = Path(path)
    for part in (candidate, *candidate.parents):
        try:
            return window_for_day(dt.date.fromisoformat(part.name))
        except ValueError:
            continue
    return None
