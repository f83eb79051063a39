"""MLflow connection for one process: tracking URI, experiment, retries while the server is away.

Every MLflow call emflow makes goes through :func:`with_retries`, so that a tracking server that is
restarting (or a SQLite file briefly locked by another writer) costs a wait, not a lost model: the
trained model stays in its local directory until the registry holds it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from emflow.config import Settings, SettingsError

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

T = TypeVar("T")

# Substrings of the errors MLflow raises when the server cannot be reached or is not ready yet
# (mlflow.utils.rest_utils wraps requests' exceptions in MlflowException with these texts), or
# when another writer holds the SQLite file.
_UNREACHABLE_MARKERS = (
    "failed with exception",
    "failed with timeout exception",
    "connection refused",
    "max retries exceeded",
    "failed to establish a new connection",
    "remote end closed connection",
    "connection aborted",
    "failed with error code 502",
    "failed with error code 503",
    "failed with error code 504",
    "database is locked",
)

_MAX_BACKOFF_S = 60.0

#: MLflow client settings :func:`connect` applies unless the environment sets them.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class TrackingUnavailableError(RuntimeError):
    """The tracking server stayed unreachable through every retry of one step."""


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it wraps) means "server away, try again later"."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError | TimeoutError):
            return True
        try:
            import requests

            if isinstance(current, requests.exceptions.ConnectionError | requests.Timeout):
                return True
        except ImportError:  # pragma: no cover - requests comes with mlflow
            pass
        text = str(current).lower()
        if any(marker in text for marker in _UNREACHABLE_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


def with_retries(
    step: str,
    call: Callable[[], T],
    settings: Settings,
    *,
    keep_note: str = "",
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> T:
    """Run ``call``; while it fails because the tracking server is unreachable, wait and retry.

    Waits ``settings.mlflow_backoff_s`` seconds after the first failure, doubling up to 60 s, for
    at most ``settings.mlflow_retries`` attempts. Any other error is raised at once.

    Parameters
    ----------
    step : str
        What the call does, for logs and the final error ("register model version").
    call : callable
        The MLflow work; must be safe to repeat (emflow's steps look up before they create).
    settings : Settings
        Retry knobs and the tracking URI named in the error.
    keep_note : str
        Appended to the final error, e.g. where the model is kept on disk.
    on_retry : callable, optional
        Called as ``on_retry(attempt, error)`` after each failed attempt (progress reporting).

    Returns
    -------
    The value of ``call()``.

    Raises
    ------
    TrackingUnavailableError
        After the last attempt failed with an unreachable server.
    """
    attempts = max(1, int(settings.mlflow_retries))
    wait_s = max(0.0, float(settings.mlflow_backoff_s))
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as error:  # noqa: BLE001 - classified just below
            if not is_unreachable(error):
                raise
            if on_retry is not None:
                on_retry(attempt, error)
            if attempt == attempts:
                elapsed = time.monotonic() - started
                raise TrackingUnavailableError(
                    f"MLflow at {settings.tracking_uri} stayed unreachable while trying to "
                    f"{step} ({attempts} attempts over {elapsed:.0f} s; last error: "
                    f"{str(error)[:300]}). Start the tracking server (or fix MLFLOW_TRACKING_URI) "
                    f"and retry the same task; raise EMFLOW_MLFLOW_RETRIES to wait longer."
                    + (f" {keep_note}" if keep_note else "")
                ) from error
            log.warning(
                "MLflow unreachable while trying to %s (attempt %d/%d): %s; retrying in %.1f s",
                step,
                attempt,
                attempts,
                str(error)[:200],
                wait_s,
            )
            time.sleep(wait_s)
            wait_s = min(_MAX_BACKOFF_S, max(wait_s * 2, 0.1))
    raise AssertionError("unreachable")  # pragma: no cover


def missing_sqlite_store(tracking_uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store that does not exist yet (None otherwise).

    Reading commands check this first: connecting would create an empty database (and its
    folder) wherever the command happens to run.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = Path(tracking_uri.removeprefix("sqlite:///").split("?")[0])
    if not path.is_absolute():
        path = Path.cwd() / path
    return None if path.exists() else path


def is_local_store(tracking_uri: str) -> bool:
    """Whether ``tracking_uri`` is an embedded store (SQLite file or plain folder)."""
    return tracking_uri.startswith(("sqlite:", "file:", "/")) or "://" not in tracking_uri


def connect(settings: Settings) -> MlflowClient:
    """Point MLflow at ``settings.tracking_uri`` (tracking and registry) and return a client."""
    import mlflow

    if settings.tracking_uri.startswith("sqlite:"):
        settings.home.mkdir(parents=True, exist_ok=True)
    # One layer of retries: emflow's own (with_retries, EMFLOW_MLFLOW_RETRIES). MLflow's HTTP
    # client would otherwise retry every request 7 times with backoff (minutes per call against
    # a refused port) before emflow even sees the error. An operator's own values win.
    for http_key, default in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(http_key, default)
    # a progress bar per model download (rollback's check, the champion copy) is noise in a CLI
    # answer and in task logs
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow also exports these URIs to the environment, where every Settings() made later in
    # this process would pick them up instead of its own home: keep the environment as it was.
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    uri = settings.tracking_uri
    if not uri.startswith("sqlite:") or uri in _READY_STORES:
        return _client(uri)
    with _store_creation_lock(uri):
        client = _client(uri)  # creates/migrates the schema
        client.search_registered_models(max_results=1)  # and opens the registry's store
    _READY_STORES.add(uri)
    return client


def _client(uri: str) -> MlflowClient:
    """``MlflowClient`` of ``uri``; a URI MLflow has no store for is a SettingsError."""
    from mlflow import MlflowClient
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

    try:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except UnsupportedModelRegistryStoreURIException:
        raise SettingsError(
            f"MLFLOW_TRACKING_URI={uri!r} names no store MLflow can open; set it to "
            "sqlite:///<file>, http(s)://<server>:<port> or a database URL "
            "(postgresql://, mysql://, mssql://), or unset it for SQLite under EMFLOW_HOME"
        ) from None


#: SQLite stores this process has opened once (their schema exists and is current).
_READY_STORES: set[str] = set()


@contextlib.contextmanager
def _store_creation_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an exclusive file lock while this process opens a SQLite store the first time.

    MLflow creates (and migrates) the schema when a client first opens the store; two processes
    doing that at once on a fresh file fail inside alembic ("expected to match one row ... 0
    found", "duplicate column name"). The lock is ``flock`` on ``<db>.init-lock`` beside the
    database: the kernel drops it when its holder dies, so a killed process never blocks the next.
    """
    import fcntl

    database = Path(tracking_uri.removeprefix("sqlite:///").split("?")[0])
    if not database.is_absolute():
        database = Path.cwd() / database
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        lock = open(database.with_name(database.name + ".init-lock"), "a")  # noqa: SIM115
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not database.is_file():
            raise
        lock = None
    if lock is None:
        # a store this process may only read (a read-only copy, another user's): nobody can
        # create or migrate it from here, so there is nothing to serialise
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_experiment(client: MlflowClient, settings: Settings) -> str:
    """Return the id of ``settings.experiment_name``, creating it when missing.

    On an embedded store the experiment keeps its artifacts under ``settings.artifact_root``
    (``file://`` URI); a tracking server chooses its own artifact location.
    """
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(settings.experiment_name)
    if experiment is not None:
        return str(experiment.experiment_id)
    artifact_location = None
    if is_local_store(settings.tracking_uri):
        settings.artifact_root.mkdir(parents=True, exist_ok=True)
        artifact_location = settings.artifact_root.resolve().as_uri()
    try:
        return str(client.create_experiment(settings.experiment_name, artifact_location))
    except MlflowException as error:  # created meanwhile by a concurrent run
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        created = client.get_experiment_by_name(settings.experiment_name)
        assert created is not None  # it exists: creating it just failed on that
        return str(created.experiment_id)


def find_run_by_key(client: MlflowClient, experiment_id: str, run_key: str) -> object | None:
    """The MLflow run tagged ``emflow.run_key = run_key`` in the experiment, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`emflow.run_key` = '{_quote(run_key)}'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    return runs[0] if runs else None


def _quote(value: str) -> str:
    """Escape a value for an MLflow filter string literal."""
    return value.replace("\\", "\\\\").replace("'", "\\'")
