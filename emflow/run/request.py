"""Which telemetry window a run trains on, and with which parameters.

The request is resolved from the run's parameters (:mod:`emflow.run.params`), the asset events
that triggered it, or its logical date (:func:`build_request`; :func:`request_from_context` reads
them from an Airflow task context). :func:`window_batches` lists the window's telemetry batches
(one per day).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from emflow.config import Settings
from emflow.run.params import check_params
from emflow.run.state import RunRequest

log = logging.getLogger(__name__)


class WindowError(ValueError):
    """The telemetry window of a run is missing, empty or malformed; the message names the fix."""


def run_key_for(run_id: str) -> str:
    """File-system-safe key of one pipeline run, derived from its Airflow run id.

    The same key names the run's quarantine folder (:func:`validation.quarantine.run_folder_name`).

    >>> run_key_for("scheduled__2026-11-20T00:00:00+00:00")
    'scheduled__2026-11-20T00-00-00-00-00-f16325f7'
    >>> run_key_for("manual__backfill-7")
    'manual__backfill-7'
    """
    from validation.quarantine import run_folder_name

    return run_folder_name(run_id)


def _as_day(value: object, name: str) -> date:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise WindowError(f"{name}={value!r} is not a date; give it as YYYY-MM-DD") from None


def _event_window(extra: dict[str, Any]) -> tuple[date, date]:
    """``[start, end)`` days of one asset event's extra (``day`` or ``window_start``/``_end``)."""
    start = _as_day(extra.get("window_start", extra.get("day")), "asset event day")
    end = extra.get("window_end")
    return start, (_as_day(end, "asset event window_end") if end else start + timedelta(days=1))


def build_request(
    params: Mapping[str, Any] | None = None,
    *,
    run_id: str,
    logical_date: datetime | date | str | None = None,
    data_interval_start: datetime | None = None,
    asset_event_extras: Iterable[Mapping[str, Any]] = (),
    dag_id: str = "gmm_retrain",
) -> RunRequest:
    """Resolve what one run trains on: its window and its parameters.

    The window ``[window_start, window_end)`` (days, end exclusive) is, in order of precedence:
    the ``window_start``/``window_end`` parameters; the days carried by the asset events that
    triggered the run (``day``, or ``window_start``/``window_end``), from the earliest to the
    latest of them (Airflow folds the events queued while a run was pending into one run: every
    window that landed is validated and trained on, none is left in ``incoming/``); the day of
    the logical date (on the daily schedule that is the run's data interval, and a backfill gives
    one logical date per day); the day the data interval starts.

    Parameters
    ----------
    params : mapping, optional
        Run parameters (keys of :data:`emflow.run.params.DEFAULT_PARAMS`); missing keys take
        their defaults.
    run_id : str
        Airflow run id (or any unique id); gives the run key.
    logical_date, data_interval_start : datetime, optional
        From the Airflow context.
    asset_event_extras : iterable of mapping
        ``extra`` dicts of the asset events that triggered the run, oldest first.
    dag_id : str
        Recorded in the request.

    Raises
    ------
    WindowError
        No window can be told, or it is empty.
    ValueError
        A parameter is out of range.
    """
    merged = check_params(params or {})
    event_windows = [
        _event_window(dict(e))
        for e in asset_event_extras
        if e and ("day" in e or "window_start" in e)
    ]
    if merged["window_start"]:
        start = _as_day(merged["window_start"], "window_start")
        end_value = merged["window_end"]
    elif event_windows:
        start = min(s for s, _ in event_windows)
        end_value = max(e for _, e in event_windows).isoformat()
    elif logical_date is not None or data_interval_start is not None:
        start = _as_day(
            logical_date if logical_date is not None else data_interval_start, "logical date"
        )
        end_value = merged["window_end"]
    else:
        raise WindowError(
            "cannot tell which telemetry window to train on: the run has no logical date; "
            "set the window_start parameter (YYYY-MM-DD)"
        )
    end = _as_day(end_value, "window_end") if end_value else start + timedelta(days=1)
    if end <= start:
        raise WindowError(f"window_end {end} must be after window_start {start}")
    return RunRequest(
        **{
            **merged,
            "window_start": start.isoformat(),
            "window_end": end.isoformat(),
            "run_key": run_key_for(run_id),
            "run_id": run_id,
            "dag_id": dag_id,
        }
    )


def request_from_context(context: Mapping[str, Any]) -> RunRequest:
    """:func:`build_request` from an Airflow task context (``get_current_context()``)."""
    dag_run = context["dag_run"]
    extras: list[Mapping[str, Any]] = []
    for events in (context.get("triggering_asset_events") or {}).values():
        extras.extend(getattr(event, "extra", None) or {} for event in events)
    return build_request(
        dict(context["params"]),
        run_id=dag_run.run_id,
        logical_date=context.get("logical_date"),
        data_interval_start=context.get("data_interval_start"),
        asset_event_extras=extras,
        dag_id=dag_run.dag_id,
    )


def metrics_request_from_context(context: Mapping[str, Any]) -> RunRequest:
    """The request for the metrics step, also for a run whose request is invalid.

    :func:`request_from_context`; when the run's parameters or window are invalid (the
    validate step failed on them), a minimal request with just the run key, so that the failed
    run is still published.
    """
    try:
        return request_from_context(context)
    except ValueError as exc:  # WindowError and parameter errors
        run_id = context["dag_run"].run_id
        log.warning("run %s has an invalid request (%s); publishing its failure only", run_id, exc)
        return RunRequest(run_key=run_key_for(run_id), run_id=run_id)


def settings_for(request: RunRequest, settings: Settings | None = None) -> Settings:
    """Settings of this process with the run's ``promotion_margin`` applied when it sets one."""
    settings = settings or Settings()
    if request.promotion_margin is not None:
        settings = settings.with_(promotion_margin=float(request.promotion_margin))
    return settings


def window_batches(request: RunRequest, settings: Settings) -> list[Path]:
    """The window's telemetry batches: one per day, the folder ``<data_root>/incoming/<day>/``.

    The contract applies to a day (its row counts, unique ids across the day's files), so a
    day's files are checked together, as ``emflow validate <day folder>`` checks them. A day
    counts when its folder holds data files as the validator lists them
    (:func:`validation.reader.list_batch_files`: ``.parquet``/``.pq``/``.csv`` in any letter
    case, sub-folders included; names starting with ``.`` or ``_``, files still being written,
    skipped) or when this run already moved it to quarantine: a retried run must meet its
    rejected day again, not train on the rest of the window.

    Raises
    ------
    WindowError
        The window holds no telemetry file (the message lists where it looked).
    """
    from validation.quarantine import MANIFEST, run_folder_name
    from validation.reader import list_batch_files

    root = Path(settings.data_root)
    incoming = root / "incoming"
    quarantine = root / "quarantine" / run_folder_name(request.run_key)
    batches = [
        incoming / day
        for day in request.days
        if ((incoming / day).is_dir() and list_batch_files(incoming / day))
        or (quarantine / f"{day}{MANIFEST}").is_file()
    ]
    if not batches:
        raise WindowError(
            f"no telemetry for the window {request.window_start}..{request.window_end} "
            f"(end exclusive): expected *.parquet or *.csv files under "
            f"{incoming}/<YYYY-MM-DD>/; write the window there (validation.synthetic.write_window) "
            "or pick another window with the window_start/window_end parameters"
        )
    return batches


def day_of(path: Path, settings: Settings) -> str:
    """The ``<day>`` folder under ``incoming/`` that holds ``path``."""
    incoming = (Path(settings.data_root) / "incoming").resolve()
    try:
        return path.resolve().relative_to(incoming).parts[0]
    except ValueError:
        return path.parent.name


def run_dir(settings: Settings, area: str, run_key: str) -> Path:
    """``<data_root>/<area>/<run key>``, created."""
    path = Path(settings.data_root) / area / run_key
    path.mkdir(parents=True, exist_ok=True)
    return path
