"""The retrain pipeline as plain functions: one per task of the ``gmm_retrain`` DAG.

Each step takes the run's *state*, a small JSON-able dict, and returns it with its own entry
added, so the DAG passes it through XCom and a test (or the CLI) can chain the same calls
without Airflow::

    state = validate_window(build_request(params, run_id="manual__1", logical_date=day))
    state = publish_challenger(gate_challenger(evaluate_challenger(
        train_challenger(split_window(state)))))

=================  ===========================================================================
state key          written by
=================  ===========================================================================
``request``        :func:`build_request`: run key, telemetry window, training parameters
``validation``     :func:`validate_window`: validated batch files, row counts, drift
``split``          :func:`split_window`: train/holdout Parquet files and their sizes
``train``          :func:`train_challenger`: model directory, backend, timings, lower bounds
``evaluation``     :func:`evaluate_challenger`: holdout log-likelihoods, alignment
``decision``       :func:`gate_challenger`: promote or not, and why
``publication``    :func:`publish_challenger`: MLflow run, registry version, aliases
=================  ===========================================================================

Large things (data, the model, per-iteration curves) stay in files under
``settings.data_root``; the state only holds their paths. Every step is idempotent for one run
key, so an Airflow retry of a killed task redoes the step without duplicating anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, is_dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from emflow.config import Settings

log = logging.getLogger(__name__)

#: The DAG's task ids, in pipeline order (publish_metrics excepted).
STEPS = ("validate", "split", "train", "evaluate", "gate", "publish")

#: Training parameters with their defaults (the DAG's Params carry the same defaults and bounds).
DEFAULT_PARAMS: dict[str, Any] = {
    "window_start": None,
    "window_end": None,
    "n_components": 4,
    "covariance_type": "full",
    "n_init": 3,
    "max_iter": 100,
    "seed": 0,
    "backend": "auto",
    "holdout_fraction": 0.2,
    "promotion_margin": None,
}
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
BACKENDS = ("auto", "numpy", "cupy", "dask", "multigpu")


class WindowError(ValueError):
    """The telemetry window of a run is missing, empty or malformed; the message names the fix."""


# --------------------------------------------------------------------------------------------
# request: which window, which parameters
# --------------------------------------------------------------------------------------------


def run_key_for(run_id: str) -> str:
    """File-system-safe key of one pipeline run, derived from its Airflow run id.

    Characters outside ``[A-Za-z0-9._-]`` become ``-``; where that changed the id, 8 hex digits
    of its SHA-256 follow, so run ids that differ only there (``a:b`` and ``a-b``) never share
    a key (and with it artifacts and idempotency tags).

    >>> run_key_for("scheduled__2026-11-20T00:00:00+00:00")
    'scheduled__2026-11-20T00-00-00-00-00-f16325f7'
    >>> run_key_for("manual__backfill-7")
    'manual__backfill-7'
    """
    key = re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-.")
    if not key:
        raise ValueError(f"run id {run_id!r} has no usable characters for a run key")
    if key != run_id:
        key = f"{key}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"
    return key


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


def _check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)}; known: {sorted(DEFAULT_PARAMS)}")
    merged = {**DEFAULT_PARAMS, **params}
    for name in ("n_components", "n_init", "max_iter"):
        if not isinstance(merged[name], int) or isinstance(merged[name], bool) or merged[name] < 1:
            raise ValueError(f"{name} must be a positive integer, got {merged[name]!r}")
    if not isinstance(merged["seed"], int) or merged["seed"] < 0:
        raise ValueError(f"seed must be a non-negative integer, got {merged['seed']!r}")
    if merged["covariance_type"] not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, "
                         f"got {merged['covariance_type']!r}")
    if merged["backend"] not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {merged['backend']!r}")
    if not 0.0 < float(merged["holdout_fraction"]) < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {merged['holdout_fraction']!r}")
    margin = merged["promotion_margin"]
    if margin is not None and (not isinstance(margin, int | float) or margin < 0):
        raise ValueError(f"promotion_margin must be a number >= 0 or empty, got {margin!r}")
    return merged


def build_request(
    params: Mapping[str, Any] | None = None,
    *,
    run_id: str,
    logical_date: datetime | date | str | None = None,
    data_interval_start: datetime | None = None,
    asset_event_extras: Iterable[Mapping[str, Any]] = (),
    dag_id: str = "gmm_retrain",
) -> dict[str, Any]:
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
        Run parameters (keys of :data:`DEFAULT_PARAMS`); missing keys take their defaults.
    run_id : str
        Airflow run id (or any unique id); gives the run key.
    logical_date, data_interval_start : datetime, optional
        From the Airflow context.
    asset_event_extras : iterable of mapping
        ``extra`` dicts of the asset events that triggered the run, oldest first.
    dag_id : str
        Recorded in the request.

    Returns
    -------
    dict
        ``{"request": {...}}``: the state the first step takes.

    Raises
    ------
    WindowError
        No window can be told, or it is empty.
    ValueError
        A parameter is out of range.
    """
    merged = _check_params(params or {})
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
        start = _as_day(logical_date if logical_date is not None else data_interval_start,
                        "logical date")
        end_value = merged["window_end"]
    else:
        raise WindowError(
            "cannot tell which telemetry window to train on: the run has no logical date; "
            "set the window_start parameter (YYYY-MM-DD)"
        )
    end = _as_day(end_value, "window_end") if end_value else start + timedelta(days=1)
    if end <= start:
        raise WindowError(f"window_end {end} must be after window_start {start}")
    request = {
        **merged,
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "run_key": run_key_for(run_id),
        "run_id": run_id,
        "dag_id": dag_id,
    }
    return {"request": request}


def _event_window(extra: dict[str, Any]) -> tuple[date, date]:
    """``[start, end)`` days of one asset event's extra (``day`` or ``window_start``/``_end``)."""
    start = _as_day(extra.get("window_start", extra.get("day")), "asset event day")
    end = extra.get("window_end")
    return start, (_as_day(end, "asset event window_end") if end else start + timedelta(days=1))


def request_from_context(context: Mapping[str, Any]) -> dict[str, Any]:
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


def metrics_request_from_context(context: Mapping[str, Any]) -> dict[str, Any]:
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
        return {"request": {"run_key": run_key_for(run_id), "promotion_margin": None}}


def settings_for(request: Mapping[str, Any], settings: Settings | None = None) -> Settings:
    """Settings of this process with the run's ``promotion_margin`` applied when it sets one."""
    settings = settings or Settings()
    if request.get("promotion_margin") is not None:
        settings = settings.with_(promotion_margin=float(request["promotion_margin"]))
    return settings


def window_days(request: Mapping[str, Any]) -> list[str]:
    """Days ``YYYY-MM-DD`` of the request's window, oldest first."""
    start = date.fromisoformat(request["window_start"])
    end = date.fromisoformat(request["window_end"])
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days)]


def window_files(request: Mapping[str, Any], settings: Settings) -> list[Path]:
    """Telemetry batches of the window, day by day.

    A day's batches are the data files under ``<data_root>/incoming/<day>/`` as the validator
    lists them (:func:`validation.batch.list_batch_files`: ``.parquet``/``.pq``/``.csv`` in any
    letter case, sub-folders included, names starting with ``.`` or ``_``, files still being
    written, skipped), plus the batches this run already moved to quarantine: a retried run
    must meet its rejected batch again, not train on the rest of the window.

    Raises
    ------
    WindowError
        The window holds no telemetry file (the message lists where it looked).
    """
    from validation.batch import list_batch_files
    from validation.quarantine import MANIFEST, run_folder_name

    root = Path(settings.data_root)
    incoming = root / "incoming"
    run_key = request.get("run_key")
    files: list[Path] = []
    for day in window_days(request):
        folder = incoming / day
        found = {p.resolve(): p for p in list_batch_files(folder)} if folder.is_dir() else {}
        quarantined = root / "quarantine" / run_folder_name(run_key) / day if run_key else None
        if quarantined is not None and quarantined.is_dir():
            for manifest in quarantined.rglob(f"*{MANIFEST}"):
                source = Path(json.loads(manifest.read_text())["source"])
                found.setdefault(source.resolve(), source)
        files += [found[key] for key in sorted(found)]
    if not files:
        raise WindowError(
            f"no telemetry for the window {request['window_start']}..{request['window_end']} "
            f"(end exclusive): expected *.parquet or *.csv files under "
            f"{incoming}/<YYYY-MM-DD>/; write the window there (validation.synthetic.write_window) "
            "or pick another window with the window_start/window_end parameters"
        )
    return files


def _day_of(path: Path, settings: Settings) -> str:
    """The ``<day>`` folder under ``incoming/`` that holds ``path``."""
    incoming = (Path(settings.data_root) / "incoming").resolve()
    try:
        return path.resolve().relative_to(incoming).parts[0]
    except ValueError:
        return path.parent.name


def _run_dir(settings: Settings, area: str, run_key: str) -> Path:
    path = Path(settings.data_root) / area / run_key
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(value: Any) -> Any:
    """Plain JSON types for XCom (dataclasses, numpy scalars/arrays, paths, dates)."""
    if hasattr(value, "to_json_dict"):
        return _jsonable(value.to_json_dict())
    if hasattr(value, "to_dict") and not isinstance(value, Mapping):
        return _jsonable(value.to_dict())
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    return value


def _write_json(path: Path, payload: Any) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=2, sort_keys=True))
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------------------------


def rejection_summary(rejected: Exception) -> dict[str, Any]:
    """JSON-able facts of the batches :func:`validate_window` rejected (for the metrics step)."""
    results = getattr(rejected, "results", None) or [getattr(rejected, "result", None)]
    results = [r for r in results if r is not None]
    rows_quarantined = sum(int(r.n_rows) for r in results)
    return {
        "message": str(rejected),
        "failed": sorted({name for r in results for name in r.failed_expectations}),
        # every row the contract checked, the passing batches' included (the quarantine rate)
        "rows_validated": getattr(rejected, "rows_checked", None) or rows_quarantined,
        "rows_quarantined": rows_quarantined,
        "quarantine_dirs": [str(r.quarantine_dir) for r in results if r.quarantine_dir],
    }


def validate_window(state: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Check every telemetry file of the window against the data contract.

    :func:`validation.check_batch` records a passing file's report under
    ``validated/<run key>/`` and moves a failing file, byte for byte, to
    ``quarantine/<run key>/`` with its JSON report. Every file is checked before this raises
    :class:`validation.BatchRejected`, whose message names the failed expectations (and fixes)
    of each rejected file. Re-running for the same run key gives the same outcome.

    Returns
    -------
    dict
        ``state`` plus ``validation``: ``files`` (telemetry files to train on), ``reports``
        (JSON report per file), ``rows_validated``, ``rows_quarantined`` (0),
        ``feature_columns``, ``contract`` (fingerprint).

    Raises
    ------
    WindowError
        The window has no telemetry file.
    validation.BatchRejected
        At least one file failed the contract (it is in quarantine now).
    """
    import validation

    request = state["request"]
    settings = settings_for(request, settings)
    contract = validation.load_contract()
    results = []
    for path in window_files(request, settings):
        log.info("validating %s against contract %s v%s", path, contract.name, contract.version)
        result = validation.check_batch(
            path, run_id=request["run_key"], data_root=settings.data_root, contract=contract,
            window=validation.window_for_day(_day_of(path, settings)),
        )
        log.info("%s: %s", path, result.summary)
        results.append((path, result))
    rejected = [result for _, result in results if not result.success]
    if rejected:
        raise validation.BatchRejected.from_results(
            rejected, rows_checked=sum(int(result.n_rows) for _, result in results))
    validated = {
        "files": [str(path) for path, _ in results],
        "reports": [str(result.report_path) for _, result in results if result.report_path],
        "rows_validated": sum(result.n_rows for _, result in results),
        "rows_quarantined": 0,
        "feature_columns": list(contract.feature_columns),
        "contract": contract.fingerprint,
    }
    return {**state, "validation": validated}


# --------------------------------------------------------------------------------------------
# split
# --------------------------------------------------------------------------------------------


def read_telemetry(paths: Iterable[str | Path], columns: Iterable[str] | None = None):
    """Concatenate telemetry files (Parquet or CSV) into one DataFrame, in file order."""
    import pandas as pd

    columns = list(columns) if columns is not None else None
    frames = [
        pd.read_parquet(p, columns=columns) if str(p).endswith(".parquet")
        else pd.read_csv(p, usecols=columns)
        for p in paths
    ]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def split_window(state: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Deterministic train/holdout split of the validated window (seeded by the ``seed`` param).

    Writes ``train.parquet`` and ``holdout.parquet`` (feature columns only, float64) under
    ``<data_root>/validated/<run key>/split/``.

    Returns
    -------
    dict
        ``state`` plus ``split``: ``train_path``, ``holdout_path``, ``n_train``, ``n_holdout``,
        ``feature_columns``.
    """
    import numpy as np

    request, validated = state["request"], state["validation"]
    settings = settings_for(request, settings)
    features = list(validated["feature_columns"])
    frame = read_telemetry(validated["files"], columns=features).astype("float64")
    n_samples = len(frame)
    n_holdout = int(round(n_samples * float(request["holdout_fraction"])))
    if n_holdout < 1 or n_samples - n_holdout < int(request["n_components"]):
        raise ValueError(
            f"window has {n_samples} rows: too few for a holdout fraction of "
            f"{request['holdout_fraction']} and n_components={request['n_components']}; "
            "use a longer window or fewer components"
        )
    order = np.random.default_rng(int(request["seed"])).permutation(n_samples)
    out = _run_dir(settings, "validated", request["run_key"]) / "split"
    out.mkdir(exist_ok=True)
    train_path, holdout_path = out / "train.parquet", out / "holdout.parquet"
    frame.iloc[np.sort(order[n_holdout:])].to_parquet(train_path, index=False)
    frame.iloc[np.sort(order[:n_holdout])].to_parquet(holdout_path, index=False)
    log.info("split %d rows: %d train, %d holdout (seed %d) -> %s",
             n_samples, n_samples - n_holdout, n_holdout, request["seed"], out)
    split = {
        "train_path": str(train_path),
        "holdout_path": str(holdout_path),
        "n_train": n_samples - n_holdout,
        "n_holdout": n_holdout,
        "feature_columns": features,
    }
    return {**state, "split": split}


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


def _gpu_unavailable_reason() -> str | None:
    """Why ``backend="auto"`` will not use the GPU here (None when it will)."""
    from gmm_core import cupy_unavailable_reason

    return cupy_unavailable_reason()


def _backend_for(requested: str, settings: Settings) -> str:
    """The gmm_core backend of a run: ``auto`` means the Dask cluster when one is configured."""
    if requested == "auto" and settings.dask_scheduler:
        log.info("backend=auto with EMFLOW_DASK_SCHEDULER=%s: training on the Dask cluster",
                 settings.dask_scheduler)
        return "dask"
    return requested


@contextlib.contextmanager
def _compute_context(backend: str, settings: Settings) -> Iterator[None]:
    """Make the configured Dask scheduler the active client while a ``dask`` fit runs."""
    if backend != "dask" or not settings.dask_scheduler:
        yield  # other backends; or gmm_core finds the active client / EMFLOW_DASK_SCHEDULER
        return
    from distributed import Client

    with Client(settings.dask_scheduler, set_as_default=False) as client, client.as_current():
        yield


def train_challenger(state: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Fit the challenger: ``n_init`` seeded restarts, the best lower bound wins.

    Progress goes to stdout (the task log) every iteration through ``GaussianMixture``'s
    ``verbose`` output; with ``backend="auto"`` on a machine without a usable GPU the log says
    that training falls back to the CPU (NumPy backend) and why. The model is saved with
    :func:`gmm_core.save_model` to ``<data_root>/models/<run key>/`` (arrays + JSON) together
    with ``training.json`` (every restart's per-iteration lower bounds, timings).

    Returns
    -------
    dict
        ``state`` plus ``train``: ``model_dir``, ``backend``, ``fit_seconds``, ``n_iter``,
        ``converged``, ``lower_bound``, ``restart_final_lower_bounds`` (one per restart),
        ``gpu_memory_peak_bytes`` (None on the CPU), ``training_json``.
    """
    import numpy as np
    import pandas as pd

    import gmm_core
    from validation.drift import summarize_reference, write_reference

    request, split = state["request"], state["split"]
    settings = settings_for(request, settings)
    X = pd.read_parquet(split["train_path"]).to_numpy(dtype=np.float64)
    model = gmm_core.GaussianMixture(
        n_components=int(request["n_components"]),
        covariance_type=request["covariance_type"],
        n_init=int(request["n_init"]),
        max_iter=int(request["max_iter"]),
        random_state=int(request["seed"]),
        backend=_backend_for(request["backend"], settings),
        verbose=2,
        verbose_interval=1,
    )
    if model.backend == "auto" and (reason := _gpu_unavailable_reason()):
        log.warning("backend=auto: %s; training on the CPU with the NumPy backend", reason)
    log.info("training K=%d %s n_init=%d max_iter=%d seed=%d on %d x %d rows (backend=%s)",
             model.n_components, model.covariance_type, model.n_init, model.max_iter,
             request["seed"], X.shape[0], X.shape[1], request["backend"])
    with _compute_context(model.backend, settings):
        model.fit(X)
    gpu_peak = _gpu_memory_peak_bytes(model.backend_)
    finals = [float(bounds[-1]) for bounds in model.restart_lower_bounds_ if len(bounds)]
    for r, bounds in enumerate(model.restart_lower_bounds_):
        log.info("restart %d: %d iterations, lower bound %.5f", r, len(bounds), float(bounds[-1]))
    log.info("winner: lower bound %.5f after %d iterations, converged=%s, %.2f s on %s",
             model.lower_bound_, model.n_iter_, model.converged_, model.fit_seconds_,
             model.backend_)
    model_dir = _run_dir(settings, "models", request["run_key"])
    metadata = {
        "run_key": request["run_key"],
        "window": [request["window_start"], request["window_end"]],
        "params": {k: request[k] for k in DEFAULT_PARAMS if k in request},
        "backend": model.backend_,
        "fit_seconds": model.fit_seconds_,
        "n_train": int(X.shape[0]),
    }
    gmm_core.save_model(model, model_dir, feature_names=split["feature_columns"],
                        metadata=metadata)
    # the window this model learned, summarised for drift checks once it is the champion
    write_reference(summarize_reference(X, split["feature_columns"], model=model), model_dir)
    training_json = _write_json(model_dir / "training.json", {
        "restart_lower_bounds": [b.tolist() for b in model.restart_lower_bounds_],
        "lower_bounds": model.lower_bounds_,
        "fit_seconds": model.fit_seconds_,
        "backend": model.backend_,
    })
    trained = {
        "model_dir": str(model_dir),
        "training_json": str(training_json),
        "backend": model.backend_,
        "fit_seconds": float(model.fit_seconds_),
        "n_iter": int(model.n_iter_),
        "converged": bool(model.converged_),
        "lower_bound": float(model.lower_bound_),
        "restart_final_lower_bounds": finals,
        "gpu_memory_peak_bytes": gpu_peak,
    }
    return {**state, "train": trained}


def _gpu_memory_peak_bytes(backend: str) -> int | None:
    """Bytes CuPy's default memory pool holds after the fit (its high-water mark); None on CPU."""
    if backend != "cupy":
        return None
    import cupy

    return int(cupy.get_default_memory_pool().total_bytes())


# --------------------------------------------------------------------------------------------
# evaluate, gate, publish (emflow.lifecycle does the work; these adapt the state dict)
# --------------------------------------------------------------------------------------------


def evaluate_challenger(
    state: Mapping[str, Any], settings: Settings | None = None
) -> dict[str, Any]:
    """Score challenger and champion on the run's holdout rows (:func:`emflow.lifecycle.evaluate`).

    Returns
    -------
    dict
        ``state`` plus ``evaluation`` (:class:`emflow.gate.Evaluation` as a dict).
    """
    from emflow import lifecycle

    request = state["request"]
    settings = settings_for(request, settings)
    evaluation = lifecycle.evaluate(
        state["train"]["model_dir"], state["split"]["holdout_path"], settings
    )
    evaluation = _jsonable(evaluation)
    log.info("holdout mean log-likelihood: challenger %s, champion %s (v%s)",
             evaluation.get("challenger_mean_loglik"), evaluation.get("champion_mean_loglik"),
             evaluation.get("champion_version"))
    drift = window_drift(state, evaluation.get("champion_version"), settings)
    return {**state, "evaluation": evaluation, "drift": drift}


def window_drift(
    state: Mapping[str, Any], champion_version: str | None, settings: Settings
) -> dict[str, Any] | None:
    """Drift of this run's holdout rows from the champion's training window.

    Uses the reference summary stored beside the champion's model files
    (:func:`validation.drift.write_reference`, written by :func:`train_challenger`) and the
    champion itself for the log-likelihood score distribution. None without a champion or
    without a stored reference (a champion registered before references were kept).

    Returns
    -------
    dict or None
        ``drifted``, ``summary`` (one line), ``psi`` (feature -> PSI), ``score_divergence``
        (Jensen-Shannon, nats) and ``reasons``.
    """
    if champion_version is None:
        return None
    import gmm_core
    from emflow import lifecycle, tracking
    from validation.drift import drift_report, read_reference

    champion_dir = lifecycle.version_model_dir(  # cached local copy of the registry version
        tracking.connect(settings), settings, str(champion_version))
    reference = read_reference(champion_dir)
    if reference is None:
        log.info("champion v%s has no reference summary: drift not measured", champion_version)
        return None
    report = drift_report(reference, read_telemetry([state["split"]["holdout_path"]]),
                          model=gmm_core.load_model(champion_dir))
    log.info("drift vs champion v%s: %s", champion_version, report.summary)
    return {
        "drifted": bool(report.drifted),
        "summary": report.summary,
        "psi": {name: float(f.psi) for name, f in report.features.items()},
        "score_divergence": None if report.score is None else float(report.score.js_divergence),
        "reasons": list(report.reasons),
    }


def gate_challenger(state: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Align the challenger to the champion and decide on promotion (:func:`emflow.lifecycle.gate`).

    Returns
    -------
    dict
        ``state`` plus ``decision`` (:class:`emflow.gate.Decision` as a dict).
    """
    from emflow import lifecycle
    from emflow.gate import Evaluation

    request = state["request"]
    settings = settings_for(request, settings)
    decision = lifecycle.gate(
        Evaluation.from_dict(state["evaluation"]), state["train"]["model_dir"], settings
    )
    decision = _jsonable(decision)
    _carry_side_files(Path(state["train"]["model_dir"]), Path(decision["model_dir"]))
    log.info("gate: %s", decision.get("reason"))
    return {**state, "decision": decision}


SIDE_FILES = ("reference_summary.json", "training.json")


def _carry_side_files(trained_dir: Path, publish_dir: Path) -> None:
    """Copy the files written beside the trained model into the folder that gets registered."""
    import shutil

    if trained_dir.resolve() == publish_dir.resolve():
        return
    for name in SIDE_FILES:
        if (trained_dir / name).is_file():
            shutil.copy2(trained_dir / name, publish_dir / name)


def train_info(state: Mapping[str, Any]) -> dict[str, Any]:
    """What :func:`emflow.lifecycle.publish` records about training (params, timings, curves)."""
    request, trained = state["request"], state["train"]
    curves = json.loads(Path(trained["training_json"]).read_text())
    return {
        "params": {k: request[k] for k in DEFAULT_PARAMS if k in request},
        "backend": trained["backend"],
        "fit_seconds": trained["fit_seconds"],
        "n_iter": trained["n_iter"],
        "converged": trained["converged"],
        "lower_bound": trained["lower_bound"],
        "restart_lower_bounds": curves["restart_lower_bounds"],
        "gpu_memory_peak_bytes": trained["gpu_memory_peak_bytes"],
        "n_train": state["split"]["n_train"],
        "n_holdout": state["split"]["n_holdout"],
        "run_id": request["run_id"],
        "dag_id": request["dag_id"],
    }


def publish_challenger(
    state: Mapping[str, Any], settings: Settings | None = None
) -> dict[str, Any]:
    """Log the run to MLflow, register the version, move the aliases as decided.

    Idempotent per run key (:func:`emflow.lifecycle.publish` finds the version a killed try
    already registered), so a retried task never duplicates a registry version.

    Returns
    -------
    dict
        ``state`` plus ``publication`` (what :func:`emflow.lifecycle.publish` returned).
    """
    from emflow import lifecycle
    from emflow.gate import Decision

    request = state["request"]
    settings = settings_for(request, settings)
    model_dir = state["train"]["model_dir"]
    sample = read_telemetry([state["split"]["train_path"]]).head(2_000)
    reports = [json.loads(Path(p).read_text()) for p in state["validation"]["reports"] if p]
    publication = lifecycle.publish(
        Decision.from_dict(state["decision"]),
        model_dir,
        run_key=request["run_key"],
        data_window=(request["window_start"], request["window_end"]),
        train_info=train_info(state),
        settings=settings,
        validation_report=reports[0] if len(reports) == 1 else {"batches": reports},
        train_sample=sample,
    )
    publication = _jsonable(publication)
    log.info("published: %s", publication)
    return {**state, "publication": publication}


# --------------------------------------------------------------------------------------------
# metrics: runs after every step, whatever happened
# --------------------------------------------------------------------------------------------


def run_summary(
    request: Mapping[str, Any],
    states: Mapping[str, Mapping[str, Any] | None],
    *,
    rejected: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """The metrics summary of one run (keys of :mod:`emflow.metrics`) from its step states.

    Parameters
    ----------
    request : mapping
        ``{"request": {...}}`` as from :func:`build_request`.
    states : mapping of str to dict or None
        The state each step of :data:`STEPS` returned (None: the step did not succeed).
    rejected : mapping, optional
        :func:`rejection_summary` of a batch the validate step rejected.
    """
    settings = settings_for(request["request"], settings)
    failed_step = next((step for step in STEPS if not states.get(step)), None)
    last = next((states[s] for s in reversed(STEPS) if states.get(s)), None) or request
    summary: dict[str, Any] = {
        "model_name": settings.model_name,
        "run_key": request["request"]["run_key"],
        "status": "success" if failed_step is None else "failed",
        "failed_step": failed_step,
    }
    validated = last.get("validation")
    if validated:
        summary["rows_validated"] = validated["rows_validated"]
        summary["rows_quarantined"] = validated["rows_quarantined"]
    drift = last.get("drift")
    if drift:
        summary["drift"] = {**drift["psi"], **(
            {"score_divergence": drift["score_divergence"]}
            if drift["score_divergence"] is not None else {})}
    elif rejected:
        summary["rows_validated"] = rejected.get("rows_validated", rejected["rows_quarantined"])
        summary["rows_quarantined"] = rejected["rows_quarantined"]
        summary["decision"] = "quarantined"
    trained = last.get("train")
    if trained:
        summary.update(
            train_seconds=trained["fit_seconds"],
            n_iter=trained["n_iter"],
            n_restarts=len(trained["restart_final_lower_bounds"]),
            restart_lower_bounds=trained["restart_final_lower_bounds"],
            winner_lower_bound=trained["lower_bound"],
            backend=trained["backend"],
        )
        if trained.get("gpu_memory_peak_bytes") is not None:
            summary["gpu_memory_peak_bytes"] = trained["gpu_memory_peak_bytes"]
    evaluation = last.get("evaluation")
    if evaluation:
        summary["holdout_loglik_challenger"] = evaluation.get("challenger_mean_loglik")
        summary["holdout_loglik_champion"] = evaluation.get("champion_mean_loglik")
        if evaluation.get("weights"):
            summary["component_weights"] = evaluation["weights"]
    decision = last.get("decision")
    if decision:
        summary["alignment_cost"] = decision.get("alignment_mean_cost")
        order = decision.get("permutation")
        weights = summary.get("component_weights")
        if order and weights and sorted(order) == list(range(len(weights))):
            # evaluation reports the trained order; component ids are the champion's
            summary["component_weights"] = [weights[i] for i in order]
        if states.get("publish"):
            summary["decision"] = "promoted" if _promoted(last) else "rejected"
    return {k: v for k, v in summary.items() if v is not None}


def _promoted(state: Mapping[str, Any]) -> bool:
    publication = state.get("publication") or {}
    if "promoted" in publication:
        return bool(publication["promoted"])
    return bool(state["decision"]["promote"])


def publish_run_metrics(
    request: Mapping[str, Any],
    states: Mapping[str, Mapping[str, Any] | None],
    *,
    rejected: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Build :func:`run_summary` and publish it (:func:`emflow.metrics.publish_run_metrics`).

    Returns
    -------
    dict
        The summary, plus ``metrics_target`` (Pushgateway URL or textfile path).
    """
    from emflow import metrics

    settings = settings_for(request["request"], settings)
    summary = run_summary(request, states, rejected=rejected, settings=settings)
    target = metrics.publish_run_metrics(summary, settings)
    log.info("metrics of run %s (%s) -> %s", summary["run_key"], summary["status"], target)
    return {**summary, "metrics_target": str(target)}


# --------------------------------------------------------------------------------------------
# rollback
# --------------------------------------------------------------------------------------------


def rollback_champion(
    version: int | str | None,
    reason: str,
    actor: str,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Point ``champion`` back at ``version`` (None: the previous champion), with a reason.

    A version that does not exist is refused by :func:`emflow.lifecycle.rollback` and the
    champion stays where it is.

    Returns
    -------
    dict
        What :func:`emflow.lifecycle.rollback` returned, as JSON types.
    """
    from emflow import lifecycle

    if not str(reason or "").strip():
        raise ValueError("a rollback needs a reason: say why the champion is being moved")
    result = lifecycle.rollback(
        version=None if version in (None, "") else str(version),
        reason=reason, actor=actor, settings=settings or Settings(),
    )
    result = _jsonable(result)
    log.info("rollback by %s: %s", actor, result)
    return result
