"""What the steps of one retrain run hand each other: small frozen records, JSON at the XCom edge.

=====================  ===========================  ===========================================
record                 written by                   holds
=====================  ===========================  ===========================================
:class:`RunRequest`    :mod:`emflow.run.request`    run key, telemetry window, parameters
:class:`Validated`     :mod:`emflow.run.validate`   batch files, their reports, row counts
:class:`Split`         :mod:`emflow.run.split`      train/holdout Parquet files and sizes
:class:`Trained`       :mod:`emflow.run.train`      model folder, backend, timings, bounds
:class:`Evaluated`     :mod:`emflow.run.evaluate`   holdout scores (``Evaluation``) and drift
``Decision``           :mod:`emflow.run.gate`       :class:`emflow.model.gate.Decision`
``PublishResult``      :mod:`emflow.run.publish`    :class:`emflow.registry.publish.PublishResult`
=====================  ===========================  ===========================================

Large things (data, the model, per-iteration curves) stay in files under the data root; records
hold their paths. Nothing heavy is imported here: the DAG file imports this module at parse time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from emflow.records import Record
from emflow.run.params import DEFAULT_PARAMS

if TYPE_CHECKING:
    from emflow.model.drift import Drift
    from emflow.model.evaluation import Evaluation


@dataclass(frozen=True)
class RunRequest(Record):
    """Which window one run trains on, with which parameters (:data:`~emflow.run.params.PARAMS`).

    ``window_start``/``window_end`` are days (``YYYY-MM-DD``, end exclusive); they are None only
    in the request of a run whose own request was invalid (kept to publish its failure).
    """

    run_key: str
    run_id: str = ""
    dag_id: str = "gmm_retrain"
    window_start: str | None = None
    window_end: str | None = None
    n_components: int | str = DEFAULT_PARAMS["n_components"]  # or "auto"
    covariance_type: str = DEFAULT_PARAMS["covariance_type"]
    n_init: int = DEFAULT_PARAMS["n_init"]
    max_iter: int = DEFAULT_PARAMS["max_iter"]
    seed: int = DEFAULT_PARAMS["seed"]
    backend: str = DEFAULT_PARAMS["backend"]
    k_min: int = DEFAULT_PARAMS["k_min"]
    k_max: int = DEFAULT_PARAMS["k_max"]
    criterion: str = DEFAULT_PARAMS["criterion"]
    holdout_fraction: float = DEFAULT_PARAMS["holdout_fraction"]
    promotion_margin: float | None = DEFAULT_PARAMS["promotion_margin"]
    sample_weight_half_life_days: float | None = DEFAULT_PARAMS["sample_weight_half_life_days"]
    false_alarm_rate: float | None = DEFAULT_PARAMS["false_alarm_rate"]
    mode: str = DEFAULT_PARAMS["mode"]

    @property
    def params(self) -> dict[str, Any]:
        """The run's parameters (keys of :data:`~emflow.run.params.DEFAULT_PARAMS`)."""
        return {name: getattr(self, name) for name in DEFAULT_PARAMS}

    @property
    def days(self) -> list[str]:
        """Days ``YYYY-MM-DD`` of the window, oldest first."""
        if self.window_start is None or self.window_end is None:
            return []
        start, end = date.fromisoformat(self.window_start), date.fromisoformat(self.window_end)
        return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days)]


@dataclass(frozen=True)
class Validated(Record):
    """The window's batches, all of them passed the data contract."""

    files: list[str]
    reports: list[str]
    rows_validated: int
    feature_columns: list[str]
    contract: str
    rows_quarantined: int = 0


@dataclass(frozen=True)
class Split(Record):
    """The deterministic train/holdout split (feature columns only, float64 Parquet).

    ``train_age_days_path``: ``.npy`` of the age in days of each train row's day (0: the
    window's last day), in ``train_path``'s row order.
    """

    train_path: str
    holdout_path: str
    n_train: int
    n_holdout: int
    feature_columns: list[str]
    train_age_days_path: str | None = None


@dataclass(frozen=True)
class Trained(Record):
    """The challenger as trained.

    Attributes
    ----------
    model_dir : str
        gmm_core model folder (arrays + JSON, ``training.json``, the reference summary).
    training_json : str
        Every restart's per-iteration lower bounds and the timings.
    backend : str
        The gmm_core backend that ran the fit.
    fit_seconds : float
        Wall time of ``fit`` (all restarts), seconds.
    n_iter, converged, lower_bound
        The winning restart's.
    restart_final_lower_bounds : list of float
        Final lower bound of every restart.
    gpu_memory_peak_bytes : int or None
        Bytes CuPy's memory pool held after the fit (None on the CPU).
    device_peak_bytes : int or None
        Peak device memory of the fit as gmm_core measured it (``device_peak_bytes_``).
    timings : dict of str to float
        Seconds per phase: ``read``, gmm_core's ``fit_timings_`` keys, ``save``.
    n_components : int or None
        K of the trained model (chosen by model selection when the run asked for ``"auto"``).
    selection_json : str or None
        The model-selection table (``selection.json`` beside the model); None for a fixed K.
    mode : str
        ``"retrain"`` (a fresh fit of the window) or ``"update"`` (one ``partial_fit`` step of
        the champion on the window's newest day).
    """

    model_dir: str
    training_json: str
    backend: str
    fit_seconds: float
    n_iter: int
    converged: bool
    lower_bound: float
    restart_final_lower_bounds: list[float]
    gpu_memory_peak_bytes: int | None = None
    device_peak_bytes: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    n_components: int | None = None
    selection_json: str | None = None
    mode: str = "retrain"


@dataclass(frozen=True)
class Evaluated(Record):
    """Evaluate's output: the holdout scores and, with a champion, the window's drift."""

    evaluation: Evaluation
    drift: Drift | None = None

    def to_json(self) -> dict[str, Any]:
        """``{"evaluation": {...}, "drift": {...} or None}``."""
        return {
            "evaluation": self.evaluation.to_json(),
            "drift": None if self.drift is None else self.drift.to_json(),
        }

    @classmethod
    def from_json(cls, values: Any) -> Evaluated:
        """Rebuild from :meth:`to_json` output."""
        from emflow.model.drift import Drift
        from emflow.model.evaluation import Evaluation

        if isinstance(values, cls):
            return values
        drift = values.get("drift")
        return cls(
            Evaluation.from_json(values["evaluation"]),
            None if drift is None else Drift.from_json(drift),
        )
