"""What one retrain's MLflow run records: params, metrics (curves as steps), plots, model card."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from emflow.config import Settings
from emflow.model.gate import Decision
from emflow.model.telemetry import as_frame, feature_matrix, feature_names

PLOT_SAMPLE_ROWS = 5000
INPUT_EXAMPLE_ROWS = 5


def _restart_curves(model: Any, train_info: Mapping[str, Any]) -> list[np.ndarray]:
    curves = getattr(model, "restart_lower_bounds_", None)
    if curves is None:
        curves = train_info.get("restart_lower_bounds") or []
    return [np.asarray(c, dtype=np.float64).ravel() for c in curves]


def _winner_curve(model: Any, curves: list[np.ndarray]) -> np.ndarray:
    curve = getattr(model, "lower_bounds_", None)
    if curve is not None and np.asarray(curve).size:
        return np.asarray(curve, dtype=np.float64).ravel()
    if curves:
        return max(curves, key=lambda c: c[-1] if c.size else -np.inf)
    return np.asarray([], dtype=np.float64)


def run_params(model: Any, train_info: Mapping[str, Any], data_window: str, run_key: str) -> dict:
    """Run params: the model's constructor settings, then the train task's info, as strings."""
    params: dict[str, Any] = {"data_window": data_window, "run_key": run_key}
    try:
        model_params = model.get_params()
    except AttributeError:
        model_params = {}
    for key in (
        "n_components",
        "covariance_type",
        "n_init",
        "random_state",
        "tol",
        "reg_covar",
        "max_iter",
        "init_params",
        "backend",
    ):
        if key in model_params:
            params[key] = model_params[key]
    params["n_features"] = int(model.n_features_in_)
    params["backend_used"] = getattr(model, "backend_", None)
    for key, value in _flat_scalars(train_info).items():
        if key != "selection_json":  # a local path; its table is an artifact
            params[key] = value
    return {k: str(v)[:6000] for k, v in params.items()}


def _flat_scalars(info: Mapping[str, Any]) -> dict[str, Any]:
    """Scalar entries of ``info``; a nested ``params`` mapping merges in, others get a prefix."""
    flat: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, Mapping):
            for sub, sub_value in _flat_scalars(value).items():
                flat[sub if key == "params" else f"{key}.{sub}"] = sub_value
        elif isinstance(value, str | int | float | bool | np.generic) or value is None:
            flat[key] = value.item() if isinstance(value, np.generic) else value
    return flat


def _selection(train_info: Mapping[str, Any]) -> dict[str, Any] | None:
    """The model-selection table of an ``n_components="auto"`` run (None otherwise)."""
    path = train_info.get("selection_json")
    if not path or not Path(path).is_file():
        return None
    from emflow.model.selection import read_selection

    return read_selection(path)


def _selection_metrics(selection: Mapping[str, Any] | None) -> list[tuple[str, float, int]]:
    """Per-K criteria of the selection table as metric steps (step = K)."""
    out: list[tuple[str, float, int]] = []
    for row in (selection or {}).get("rows", []):
        for key in ("bic", "aic", "holdout_score", "lower_bound"):
            if row.get(key) is not None:
                out.append((f"selection_{key}", float(row[key]), int(row["n_components"])))
    return out


def window_text(data_window: Any) -> str:
    """``"start..end"`` for a (start, end) pair; a string passes through."""
    if isinstance(data_window, list | tuple):
        return "..".join(str(part) for part in data_window)
    return str(data_window)


def _metrics(
    model: Any, train_info: Mapping[str, Any], decision: Decision, curves: list[np.ndarray]
) -> list[tuple[str, float, int]]:
    """``(key, value, step)`` triples: restarts, the winner's curve, holdout scores, timing."""
    out: list[tuple[str, float, int]] = []
    for r, curve in enumerate(curves):
        if curve.size:
            out.append(("restart_final_lower_bound", float(curve[-1]), r))
    for i, value in enumerate(_winner_curve(model, curves)):
        out.append(("lower_bound", float(value), i + 1))
    for k, weight in enumerate(np.asarray(model.weights_, dtype=np.float64)):
        out.append(("component_weight", float(weight), k))
    out.extend(_selection_metrics(_selection(train_info)))
    singles = {
        "holdout_mean_loglik": decision.challenger_mean_loglik,
        "champion_holdout_mean_loglik": decision.champion_mean_loglik,
        "holdout_loglik_delta": decision.loglik_delta,
        "alignment_mean_cost": decision.alignment_mean_cost,
        "holdout_aic": decision.challenger_aic,
        "holdout_bic": decision.challenger_bic,
        "n_holdout_scored": decision.n_holdout or None,
        "promote": float(decision.promote),
        "anomaly_alarm_rate": decision.alarm_rate,
        "n_iter": getattr(model, "n_iter_", None),
        "n_components": float(np.asarray(model.weights_).size),
        "converged": None
        if getattr(model, "converged_", None) is None
        else float(bool(model.converged_)),
        "final_lower_bound": None
        if getattr(model, "lower_bound_", None) is None
        else float(model.lower_bound_),
        "training_seconds": train_info.get("fit_seconds", getattr(model, "fit_seconds_", None)),
    }
    scalars = _flat_scalars(train_info)
    for key in ("n_train", "n_holdout", "n_train_rows", "n_holdout_rows", "gpu_memory_peak_bytes"):
        if isinstance(scalars.get(key), int | float) and not isinstance(scalars[key], bool):
            singles[key] = scalars[key]
    for key, value in singles.items():
        if value is not None and np.isfinite(float(value)):
            out.append((key, float(value), 0))
    return out


def example_frame(model: Any, rows: Any | None) -> Any:
    """A few rows of the model's features as a DataFrame (the signature's input example)."""
    import pandas as pd

    names = feature_names(model)
    if rows is not None:
        frame = as_frame(rows)
        X = feature_matrix(model, frame)
    else:
        X, _ = model.sample(INPUT_EXAMPLE_ROWS)
    X = np.asarray(X, dtype=np.float64)
    return pd.DataFrame(X[: max(INPUT_EXAMPLE_ROWS, 1)], columns=names)


def _sample_matrix(model: Any, rows: Any | None, seed: int = 0) -> np.ndarray | None:
    if rows is None:
        return None
    X = feature_matrix(model, as_frame(rows))
    if len(X) > PLOT_SAMPLE_ROWS:
        pick = np.random.default_rng(seed).choice(len(X), PLOT_SAMPLE_ROWS, replace=False)
        X = X[np.sort(pick)]
    return X


def model_card(
    *,
    settings: Settings,
    version: str | None,
    run_id: str,
    run_key: str,
    data_window: str,
    decision: Decision,
    model: Any,
    params: Mapping[str, str],
) -> str:
    """A short markdown card: what the model is, how it was judged, how to use it."""
    weights = np.asarray(model.weights_, dtype=np.float64)
    lines = [
        f"# {settings.model_name} v{version or '?'}",
        "",
        f"Gaussian mixture with {weights.size} components "
        f"({getattr(model, 'covariance_type', '?')} covariance) over "
        f"{int(model.n_features_in_)} features: {', '.join(feature_names(model))}.",
        "",
        "| field | value |",
        "| --- | --- |",
        f"| data window | {data_window} |",
        f"| pipeline run key | `{run_key}` |",
        f"| MLflow run | `{run_id}` |",
        f"| decision | **{decision.label}** |",
        f"| reason | {decision.reason} |",
        f"| holdout mean log-likelihood | {decision.challenger_mean_loglik} |",
        f"| champion it was compared with | {decision.champion_version or 'none'} |",
        f"| alignment mean cost | {decision.alignment_mean_cost} |",
        f"| restarts / seed | {params.get('n_init', '?')} / {params.get('random_state', '?')} |",
        f"| backend | {params.get('backend_used', '?')} |",
        "",
        "Component weights (ids aligned to the previous champion): "
        + ", ".join(f"{k}: {w:.3f}" for k, w in enumerate(weights)),
        "",
        "## Use",
        "",
        "```python",
        "import mlflow",
        f'model = mlflow.pyfunc.load_model("models:/{settings.model_name}@champion")',
        "scores = model.predict(frame)  # component, responsibility, log_likelihood per row",
        "```",
        "",
        "Low `log_likelihood` marks anomalous rows. The artifact is arrays + JSON (no pickle) and "
        "scores on a CPU.",
        "",
    ]
    return "\n".join(lines)


def log_run_contents(
    client: Any,
    run: Any,
    model: Any,
    train_info: Mapping[str, Any],
    decision: Decision,
    params: Mapping[str, str],
    validation_report: Any,
    train_sample: Any,
    retry: Any,
) -> None:
    """Params, metrics (skipped when an earlier attempt logged them), plots, report, decision."""
    from mlflow.entities import Metric, Param

    from emflow.model import plots

    run_id = run.info.run_id
    if run.data.params:
        params = {k: v for k, v in params.items() if k not in run.data.params}
    if params:
        retry(
            "log params",
            lambda: client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()]),
        )
    if "holdout_mean_loglik" not in run.data.metrics:
        curves = _restart_curves(model, train_info)
        now_ms = int(time.time() * 1000)
        metrics = [
            Metric(k, v, now_ms, s) for k, v, s in _metrics(model, train_info, decision, curves)
        ]
        for start in range(0, len(metrics), 900):  # MLflow accepts 1000 entities per batch
            chunk = metrics[start : start + 900]
            retry("log metrics", lambda chunk=chunk: client.log_batch(run_id, metrics=chunk))
    with tempfile.TemporaryDirectory(prefix="emflow-run-") as tmp:
        folder = Path(tmp)
        selection = _selection(train_info)
        plots.write_all(
            model,
            _sample_matrix(model, train_sample),
            folder / "plots",
            restart_lower_bounds=_restart_curves(model, train_info),
            selection=selection,
        )
        if selection is not None:  # the table as JSON and CSV (written beside it by train)
            (folder / "selection").mkdir()
            source = Path(train_info["selection_json"])
            for name in (source.name, source.with_suffix(".csv").name):
                if (source.parent / name).is_file():
                    shutil.copy(source.parent / name, folder / "selection" / name)
        (folder / "gate").mkdir()
        (folder / "gate" / "decision.json").write_text(json.dumps(decision.to_dict(), indent=2))
        if validation_report is not None:
            (folder / "validation").mkdir()
            if isinstance(validation_report, str | Path) and Path(validation_report).is_file():
                shutil.copy(validation_report, folder / "validation" / Path(validation_report).name)
            else:
                (folder / "validation" / "validation_report.json").write_text(
                    json.dumps(validation_report, indent=2, default=str)
                )
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            retry(
                f"log {sub.name} artifacts",
                lambda sub=sub: client.log_artifacts(run_id, str(sub), sub.name),
            )
