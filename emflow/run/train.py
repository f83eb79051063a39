"""Train step: ``n_init`` seeded restarts with gmm_core, the best lower bound wins.

With ``n_components="auto"`` the step fits every K of ``k_min..k_max`` in one model-selection
sweep (:mod:`emflow.model.selection`) and the chosen candidate is the challenger.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from emflow.config import Settings, SettingsError
from emflow.run.params import is_auto
from emflow.run.request import run_dir, settings_for
from emflow.run.state import RunRequest, Split, Trained

log = logging.getLogger(__name__)


def _gpu_unavailable_reason() -> str | None:
    """Why ``backend="auto"`` will not use the GPU here (None when it will)."""
    from gmm_core import cupy_unavailable_reason

    return cupy_unavailable_reason()


def _backend_for(requested: str, settings: Settings) -> str:
    """The gmm_core backend of a run: ``auto`` means the Dask cluster when one is configured."""
    if requested == "auto" and settings.dask_scheduler:
        log.info(
            "backend=auto with EMFLOW_DASK_SCHEDULER=%s: training on the Dask cluster",
            settings.dask_scheduler,
        )
        return "dask"
    return requested


def _require_device(backend: str) -> None:
    """Refuse a GPU backend on a worker without a usable GPU, naming the fix.

    A retry cannot give this worker a GPU, so the step fails at once (a ``SettingsError``: no
    Airflow retry) instead of after three retries and their back-off.
    """
    if backend in ("cupy", "multigpu") and (reason := _gpu_unavailable_reason()):
        raise SettingsError(
            f"backend={backend!r} needs a usable GPU on the worker that runs train, and this "
            f"one has none ({reason}). Run train on a GPU worker (the 'gpu' queue), or set the "
            "run's backend param to 'auto' (falls back to NumPy) or 'numpy'"
        )


@contextlib.contextmanager
def _compute_context(backend: str, settings: Settings) -> Iterator[None]:
    """Make the configured Dask scheduler the active client while a ``dask`` fit runs."""
    if backend != "dask" or not settings.dask_scheduler:
        yield  # other backends; or gmm_core finds the active client / EMFLOW_DASK_SCHEDULER
        return
    from distributed import Client

    from gmm_core._dask_engine import check_scheduler_address

    try:
        check_scheduler_address(settings.dask_scheduler)
    except (ValueError, TypeError) as error:  # no port, an unknown scheme
        raise SettingsError(
            f"EMFLOW_DASK_SCHEDULER={settings.dask_scheduler!r} is not a Dask scheduler address "
            f"({error}); set it to tcp://<host>:<port> (default port 8786)"
        ) from error
    with Client(settings.dask_scheduler, set_as_default=False) as client, client.as_current():
        yield


def _gpu_memory_peak_bytes(model: Any) -> int | None:
    """The fit's peak device memory as gmm_core measured it (``device_peak_bytes_``); None on CPU.

    Not the memory pool after the fit: ``fit`` gives the pool's blocks back when it ends (QA
    probe: the metric would have read about 0 on every GPU run).
    """
    from emflow.model.fit_report import device_peak_bytes

    return device_peak_bytes(model) if model.backend_ in ("cupy", "multigpu") else None


def _write_json(path: Path, payload: Any) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    tmp.replace(path)
    return path


def train_challenger(
    request: RunRequest, split: Split, settings: Settings | None = None
) -> Trained:
    """Fit the challenger on the split's train rows and save it.

    Progress goes to stdout (the task log) every iteration through ``GaussianMixture``'s
    ``verbose`` output; with ``backend="auto"`` on a machine without a usable GPU the log says
    that training falls back to the CPU (NumPy backend) and why. Where the time went (read, the
    fit's phases, iterations and ms per iteration, save) is logged one line per phase, and the
    peak device memory when the fit measured it. The model is saved with
    :func:`gmm_core.save_model` to ``<data_root>/models/<run key>/`` (arrays + JSON) together
    with ``training.json`` (every restart's per-iteration lower bounds, timings) and the
    window's reference summary for drift checks.
    """
    import numpy as np
    import pandas as pd

    import gmm_core
    from emflow.model.fit_report import device_peak_bytes, log_fit, log_phase
    from emflow.model.sanity import check_fitted
    from emflow.model.selection import write_selection
    from validation.drift import summarize_reference, write_reference

    settings = settings_for(request, settings)
    _require_device(_backend_for(request.backend, settings))
    started = time.perf_counter()
    X = pd.read_parquet(split.train_path).to_numpy(dtype=np.float64)
    ages = _train_ages(split, X.shape[0])
    timings = {"read": time.perf_counter() - started}
    log_phase(log, "read", timings["read"])
    champion = _champion_to_update(request, settings)
    selector = None
    if champion is not None:
        version, model = champion
        model, X, extra = _update_champion(model, version, X, ages, request, settings)
    elif is_auto(request.n_components):
        backend = _backend_for(request.backend, settings)
        if backend == "auto" and (reason := _gpu_unavailable_reason()):
            log.warning("backend=auto: %s; training on the CPU with the NumPy backend", reason)
        extra = {"mode": "retrain"}
        weights = _time_decay(ages, request, X.shape[0], extra)
        selector = _select(request, split, X, backend, settings, weights)
        model = selector.best_estimator_
    else:
        model, extra = _fit_window(X, ages, request, settings)
    check_fitted(model)  # never save (and publish) a model with non-finite parameters
    gpu_peak = _gpu_memory_peak_bytes(model)
    finals = [float(bounds[-1]) for bounds in model.restart_lower_bounds_ if len(bounds)]
    for r, bounds in enumerate(model.restart_lower_bounds_):
        log.info("restart %d: %d iterations, lower bound %.5f", r, len(bounds), float(bounds[-1]))
    log.info(
        "winner: lower bound %.5f after %d iterations, converged=%s, %.2f s on %s",
        model.lower_bound_,
        model.n_iter_,
        model.converged_,
        model.fit_seconds_,
        model.backend_,
    )
    timings.update(log_fit(log, model))

    started = time.perf_counter()
    model_dir = run_dir(settings, "models", request.run_key)
    metadata = {
        "run_key": request.run_key,
        "window": [request.window_start, request.window_end],
        "params": request.params,
        "backend": model.backend_,
        "fit_seconds": model.fit_seconds_,
        "n_train": int(X.shape[0]),
        **extra,
    }
    gmm_core.save_model(model, model_dir, feature_names=split.feature_columns, metadata=metadata)
    # the window this model learned, summarised for drift checks once it is the champion
    write_reference(summarize_reference(X, split.feature_columns, model=model), model_dir)
    selection_json = None if selector is None else str(write_selection(selector, model_dir))
    timings["save"] = time.perf_counter() - started
    log_phase(log, "save", timings["save"])
    training_json = _write_json(
        model_dir / "training.json",
        {
            "restart_lower_bounds": [np.asarray(b).tolist() for b in model.restart_lower_bounds_],
            "lower_bounds": np.asarray(model.lower_bounds_).tolist(),
            "fit_seconds": float(model.fit_seconds_),
            "backend": model.backend_,
            "timings": timings,
        },
    )
    return Trained(
        model_dir=str(model_dir),
        training_json=str(training_json),
        backend=model.backend_,
        fit_seconds=float(model.fit_seconds_),
        n_iter=int(model.n_iter_),
        converged=bool(model.converged_),
        lower_bound=float(model.lower_bound_),
        restart_final_lower_bounds=finals,
        gpu_memory_peak_bytes=gpu_peak,
        device_peak_bytes=device_peak_bytes(model),
        timings=timings,
        n_components=int(model.n_components),
        selection_json=selection_json,
        mode=extra["mode"],
    )


def _select(
    request: RunRequest,
    split: Split,
    X: Any,
    backend: str,
    settings: Settings,
    weights: Any = None,
) -> Any:
    """Model selection over ``k_min..k_max`` (:func:`emflow.model.selection.select_model`).

    ``weights``: the train rows' time decay, or None.
    """
    import numpy as np
    import pandas as pd

    from emflow.model.selection import select_model, selection_rows

    report = None
    if request.criterion != "holdout":  # scored for the table only, never to choose
        report = pd.read_parquet(split.holdout_path).to_numpy(dtype=np.float64)
    log.info(
        "selecting K in %d..%d by %s (%s, n_init=%d, max_iter=%d, seed=%d) on %d x %d rows "
        "(backend=%s)",
        request.k_min,
        request.k_max,
        request.criterion,
        request.covariance_type,
        request.n_init,
        request.max_iter,
        request.seed,
        X.shape[0],
        X.shape[1],
        request.backend,
    )
    with _compute_context(backend, settings):
        selector = select_model(
            X,
            k_min=request.k_min,
            k_max=request.k_max,
            covariance_type=request.covariance_type,
            criterion=request.criterion,
            n_init=request.n_init,
            max_iter=request.max_iter,
            seed=request.seed,
            backend=backend,
            X_report=report,
            sample_weight=weights,
        )
    for row in selection_rows(selector):
        log.info(
            "K=%-3d bic %s holdout %s iterations %d%s",
            row["n_components"],
            row["bic"],
            row["holdout_score"],
            row["n_iter"],
            f" FAILED: {row['reason']}"
            if row["failed"]
            else (" <- chosen" if row["chosen"] else ""),
        )
    return selector


def decay_weights(age_days: Any, half_life_days: float) -> Any:
    """Time-decay sample weights ``0.5 ** (age_days / half_life_days)``, shape of ``age_days``.

    >>> decay_weights([0, 1, 2], 1.0).tolist()
    [1.0, 0.5, 0.25]
    """
    import numpy as np

    return 0.5 ** (np.asarray(age_days, dtype=np.float64) / float(half_life_days))


def _train_ages(split: Split, n_train: int) -> Any:
    """Age in days of each train row (zeros for a split written without them)."""
    import numpy as np

    if split.train_age_days_path is None:
        return np.zeros(n_train, dtype=np.int32)
    ages = np.load(split.train_age_days_path, allow_pickle=False)
    if ages.shape != (n_train,):
        raise ValueError(
            f"{split.train_age_days_path} holds {ages.shape[0]} ages for {n_train} train rows: "
            "the split is inconsistent; run the split step again"
        )
    return ages


def _time_decay(ages: Any, request: RunRequest, n_train: int, extra: dict[str, Any]) -> Any:
    """The train rows' time-decay weights (None without a half-life); ``extra`` records them."""
    if request.sample_weight_half_life_days is None:
        return None
    weights = decay_weights(ages, request.sample_weight_half_life_days)
    # Kish's effective sample size: how many equally weighted rows the fit is worth
    effective = float(weights.sum() ** 2 / (weights**2).sum())
    extra.update(sample_weight_half_life_days=request.sample_weight_half_life_days)
    extra.update(effective_n_train=effective)
    log.info(
        "time-decayed weights, half-life %g days: oldest day (age %d) weighs %.3g, "
        "effective rows %.0f of %d",
        request.sample_weight_half_life_days,
        int(ages.max()),
        float(weights.min()),
        effective,
        n_train,
    )
    return weights


def _fit_window(
    X: Any, ages: Any, request: RunRequest, settings: Settings
) -> tuple[Any, dict[str, Any]]:
    """A fresh ``n_init``-restart fit of the window, time-decayed when the request says so."""
    import gmm_core

    model = gmm_core.GaussianMixture(
        n_components=int(request.n_components),
        covariance_type=request.covariance_type,
        n_init=int(request.n_init),
        max_iter=int(request.max_iter),
        random_state=int(request.seed),
        backend=_backend_for(request.backend, settings),
        verbose=2,
        verbose_interval=1,
    )
    if model.backend == "auto" and (reason := _gpu_unavailable_reason()):
        log.warning("backend=auto: %s; training on the CPU with the NumPy backend", reason)
    extra: dict[str, Any] = {"mode": "retrain"}
    weights = _time_decay(ages, request, X.shape[0], extra)
    log.info(
        "training K=%d %s n_init=%d max_iter=%d seed=%d on %d x %d rows (backend=%s)",
        model.n_components,
        model.covariance_type,
        model.n_init,
        model.max_iter,
        request.seed,
        X.shape[0],
        X.shape[1],
        request.backend,
    )
    with _compute_context(model.backend, settings):
        if weights is None:
            model.fit(X)
        else:
            model.fit(X, sample_weight=weights)
    return model, extra


def _champion_to_update(request: RunRequest, settings: Settings) -> tuple[str, Any] | None:
    """``(version, model)`` of the champion for ``mode="update"``; None: retrain the window."""
    if request.mode != "update":
        return None
    from emflow.model.telemetry import load_model_dir
    from emflow.registry.champion import load_champion

    version, champion_dir = load_champion(settings)
    if version is None or champion_dir is None:
        log.warning("mode=update without a champion: retraining the window instead")
        return None
    return str(version), load_model_dir(champion_dir)


def _update_champion(
    model: Any, version: str, X: Any, ages: Any, request: RunRequest, settings: Settings
) -> tuple[Any, Any, dict[str, Any]]:
    """One ``partial_fit`` step of the champion on the window's newest day; the rows it saw."""
    newest = ages == ages.min()
    X_new = X[newest]
    model.backend = _backend_for(request.backend, settings)
    if model.backend == "auto" and (reason := _gpu_unavailable_reason()):
        log.warning("backend=auto: %s; updating on the CPU with the NumPy backend", reason)
    log.info(
        "mode=update: one partial_fit step of champion v%s (K=%d %s, step %d) on the newest "
        "day's %d of %d train rows",
        version,
        model.n_components,
        model.covariance_type,
        int(getattr(model, "n_steps_", 0)),
        X_new.shape[0],
        X.shape[0],
    )
    with _compute_context(model.backend, settings):
        model.partial_fit(X_new)  # drops the champion's threshold: evaluate calibrates anew
    extra = {
        "mode": "update",
        "updated_from": version,
        "n_steps": int(model.n_steps_),
        "update_age_days": int(ages.min()),
    }
    return model, X_new, extra
