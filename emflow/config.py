"""Where emflow keeps things, and the knobs an operator turns.

Every path hangs off one home folder (``EMFLOW_HOME``, default ``./.emflow``), so the embedded
default (SQLite for MLflow, local files) needs no set-up. Each value can be overridden by an
environment variable; a real MLflow server is used through the standard ``MLFLOW_TRACKING_URI``.
A value emflow cannot use raises :class:`SettingsError` naming the variable and the form it
takes; the numbers (the gate's and the MLflow retries') are parsed where they are first used, so
a bad one stops only the commands that need it (``emflow`` turns it into exit status 2).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, NamedTuple, TypeVar, overload

T = TypeVar("T")


#: characters a rollback's reason takes (the rollback DAG's form, ``emflow rollback --reason``,
#: :func:`emflow.registry.rollback.rollback`)
ROLLBACK_REASON_LENGTH = (3, 500)


class SettingsError(ValueError):
    """An environment variable holds a value emflow cannot use (the message names both)."""


def database_url(url: str) -> str:
    """``url`` with an explicit PostgreSQL driver where the bare scheme would fail.

    SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3; with only psycopg2 installed (as in
    this project's lock) such a URL fails with ``No module named 'psycopg'``. A bare
    ``postgresql://`` or ``postgres://`` URL gets ``+psycopg2`` then; any other URL passes.
    """
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None:
        return f"postgresql+psycopg2://{rest}"
    return url


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return Path(value).expanduser().resolve()
    except RuntimeError as error:  # "~user/..." naming no user
        raise SettingsError(
            f"{name}={value!r}: {error}; set it to a folder path or unset it"
        ) from None


def _env_text(name: str, default: str) -> str:
    """``name``'s value, or ``default`` where it is unset or blank."""
    return os.environ.get(name, "").strip() or default


def _number(minimum: float) -> Callable[[str], float]:
    """A parser of finite numbers >= ``minimum`` (ValueError otherwise)."""

    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or value < minimum:
            raise ValueError(text)
        return value

    return parse


def _integer(minimum: int) -> Callable[[str], int]:
    """A parser of integers >= ``minimum`` (ValueError otherwise)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise ValueError(text)
        return value

    return parse


class _EnvText(NamedTuple):
    """An environment variable's text as a :class:`Settings` was made, not yet parsed."""

    text: str | None


class _FromEnv(Generic[T]):
    """A :class:`Settings` field read from an environment variable when a caller uses it.

    The variable's text is taken when the settings are made and parsed on use, so a bad value
    fails the commands that need the setting (with a :class:`SettingsError` naming the variable
    and the form it takes), not every command: ``emflow status`` does not need the gate's
    margin. A value passed to ``Settings(...)`` is used as given.
    """

    def __init__(self, variable: str, default: T, parse: Callable[[str], T], expected: str) -> None:
        self.variable, self.default, self.parse, self.expected = variable, default, parse, expected
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _FromEnv[T]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> T | _FromEnv[T]:
        if obj is None:  # the dataclass default: "read the environment"
            return self
        value = obj.__dict__[self.name]
        if not isinstance(value, _EnvText):
            return value
        if value.text is None:
            return self.default
        try:
            return self.parse(value.text)
        except ValueError:
            raise SettingsError(
                f"{self.variable}={value.text!r} is not {self.expected}; set it to one "
                f"(default {self.default}) or unset it"
            ) from None

    def __set__(self, obj: object, value: T | _FromEnv[T]) -> None:
        stored: object = value
        if value is self:  # not passed to Settings(...): take the variable's text now
            stored = _EnvText(os.environ.get(self.variable, "").strip() or None)
        obj.__dict__[self.name] = stored


@dataclass(frozen=True)
class Settings:
    """Resolved settings for one process.

    Attributes
    ----------
    home : Path
        Root of everything emflow writes by default (``EMFLOW_HOME``).
    data_root : Path
        Telemetry root (``EMFLOW_DATA_ROOT``): ``incoming/<YYYY-MM-DD>/`` windows,
        ``quarantine/<run id>/``, ``validated/<run id>/``, ``models/<run id>/``.
    tracking_uri : str
        MLflow tracking and registry URI (``MLFLOW_TRACKING_URI``); SQLite under ``home`` by
        default.
    artifact_root : Path
        Artifact location for experiments created on the embedded store.
    model_name : str
        Registered model name of this model family (``EMFLOW_MODEL_NAME``).
    experiment_name : str
        MLflow experiment of the retrain runs (``EMFLOW_EXPERIMENT``).
    pushgateway_url : str or None
        Prometheus Pushgateway address (``EMFLOW_PUSHGATEWAY``); metrics go to ``metrics_textfile``
        when unset.
    metrics_textfile : Path
        Textfile-collector file written when no Pushgateway is configured.
    promotion_margin : float
        Largest drop in mean holdout log-likelihood (nats per sample) a challenger may show against
        the champion and still be promoted (``EMFLOW_PROMOTION_MARGIN``).
    alignment_threshold : float
        Largest mean per-component alignment cost (Bhattacharyya distance) accepted for promotion
        (``EMFLOW_ALIGNMENT_THRESHOLD``).
    mlflow_retries : int
        Attempts made at each MLflow step while the tracking server is unreachable
        (``EMFLOW_MLFLOW_RETRIES``); the trained model stays on local disk meanwhile.
    mlflow_backoff_s : float
        First wait between those attempts in seconds, doubled after each failure up to 60 s
        (``EMFLOW_MLFLOW_BACKOFF_S``).
    retry_delay_s : float
        First wait in seconds before Airflow retries a failed retrain task, doubled per retry
        (``EMFLOW_RETRY_DELAY_S``; read when the DAG file is parsed).
    dask_scheduler : str or None
        Dask scheduler address (``EMFLOW_DASK_SCHEDULER``, e.g. ``tcp://scheduler:8786``); when
        set, the retrain DAG's train step fits with ``backend="dask"`` on that cluster (gmm_core
        reads the same variable).
    """

    home: Path = field(default_factory=lambda: _env_path("EMFLOW_HOME", Path.cwd() / ".emflow"))
    data_root: Path = None  # type: ignore[assignment]
    tracking_uri: str = None  # type: ignore[assignment]
    artifact_root: Path = None  # type: ignore[assignment]
    model_name: str = field(default_factory=lambda: _env_text("EMFLOW_MODEL_NAME", "telemetry-gmm"))
    experiment_name: str = field(
        default_factory=lambda: _env_text("EMFLOW_EXPERIMENT", "emflow-retrain")
    )
    pushgateway_url: str | None = field(
        default_factory=lambda: os.environ.get("EMFLOW_PUSHGATEWAY", "").strip() or None
    )
    metrics_textfile: Path = None  # type: ignore[assignment]
    # read when used (see _FromEnv): a bad value fails only the commands that need it
    promotion_margin: _FromEnv[float] = _FromEnv(
        "EMFLOW_PROMOTION_MARGIN", 0.05, _number(0.0), "a number >= 0 (nats per sample)"
    )
    alignment_threshold: _FromEnv[float] = _FromEnv(
        "EMFLOW_ALIGNMENT_THRESHOLD", 0.5, _number(0.0), "a number >= 0 (Bhattacharyya distance)"
    )
    mlflow_retries: _FromEnv[int] = _FromEnv(
        "EMFLOW_MLFLOW_RETRIES", 6, _integer(1), "a whole number >= 1 (attempts)"
    )
    mlflow_backoff_s: _FromEnv[float] = _FromEnv(
        "EMFLOW_MLFLOW_BACKOFF_S", 2.0, _number(0.0), "a number >= 0 (seconds)"
    )
    retry_delay_s: _FromEnv[float] = _FromEnv(
        "EMFLOW_RETRY_DELAY_S", 60.0, _number(0.0), "a number >= 0 (seconds)"
    )
    dask_scheduler: str | None = field(
        default_factory=lambda: os.environ.get("EMFLOW_DASK_SCHEDULER", "").strip() or None
    )

    def __post_init__(self) -> None:
        home = Path(self.home).resolve()
        if home.exists() and not home.is_dir():
            raise SettingsError(
                f"EMFLOW_HOME {home} is a file; set it to a folder (made where missing) or unset it"
            )
        object.__setattr__(self, "home", home)
        if self.data_root is None:
            object.__setattr__(self, "data_root", _env_path("EMFLOW_DATA_ROOT", home / "data"))
        if self.tracking_uri is None:
            uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
            object.__setattr__(self, "tracking_uri", database_url(uri))
        if self.artifact_root is None:
            object.__setattr__(self, "artifact_root", home / "mlartifacts")
        if self.metrics_textfile is None:
            object.__setattr__(
                self,
                "metrics_textfile",
                _env_path("EMFLOW_METRICS_TEXTFILE", home / "metrics" / "emflow.prom"),
            )

    def with_(self, **changes: object) -> Settings:
        """Return a copy with ``changes`` applied; a new ``home`` re-derives the paths under it."""
        if "home" in changes:
            for derived in ("data_root", "tracking_uri", "artifact_root", "metrics_textfile"):
                changes.setdefault(derived, None)
        for name, attribute in vars(Settings).items():  # unparsed text stays unparsed
            if isinstance(attribute, _FromEnv):
                changes.setdefault(name, self.__dict__[name])
        return replace(self, **changes)  # type: ignore[arg-type]

    def checked(self) -> Settings:
        """``self`` once every setting read on use parses (else :class:`SettingsError`).

        For a command that will need them all, e.g. the demo, which would otherwise find a bad
        gate margin only when its first gate task runs.
        """
        for name, attribute in vars(Settings).items():
            if isinstance(attribute, _FromEnv):
                getattr(self, name)
        return self

    def ensure_dirs(self) -> Settings:
        """Create the folders this process writes to; return ``self``."""
        for path in (self.home, self.data_root, self.artifact_root, self.metrics_textfile.parent):
            path.mkdir(parents=True, exist_ok=True)
        return self
