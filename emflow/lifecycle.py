"""Model lifecycle: evaluate, gate, publish, roll back, and report, against an MLflow registry.

These are the functions the retrain pipeline calls, one per task; they take plain values (paths,
strings, dicts) plus :class:`emflow.config.Settings`, so that task results travel as JSON.

1. :func:`evaluate` scores the challenger and the current champion on the same holdout rows.
2. :func:`gate` aligns the challenger's components to the champion's (so component ids stay
   stable), writes the reordered model next to the challenger, and decides.
3. :func:`publish` records one MLflow run (params, per-iteration curves, plots, model card),
   registers the pyfunc model version with its decision, moves ``challenger`` and, on promotion,
   ``champion`` (compare-and-set). Retried with the same ``run_key`` it never adds a version.
4. :func:`rollback` points ``champion`` back at a prior version after checking it loads and scores.
5. :func:`status` lists versions, aliases and decisions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emflow import registry
from emflow.config import Settings
from emflow.gate import Decision, Evaluation, decide, mean_loglik
from emflow.tracking import connect, ensure_experiment, find_run_by_key, with_retries

log = logging.getLogger(__name__)

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
MODEL_ARTIFACT = "model"
PLOT_SAMPLE_ROWS = 5000
INPUT_EXAMPLE_ROWS = 5


class UnknownVersionError(ValueError):
    """A rollback named a registry version that does not exist."""


class RollbackCheckError(RuntimeError):
    """The rollback target failed to load or to score a sample; the champion was not moved."""


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish` left in the registry.

    Attributes
    ----------
    version : str
        Registered model version of this retrain.
    run_id : str
        MLflow run that logged it.
    model_uri : str
        ``models:/<name>/<version>``.
    decision : str
        ``"promote"`` or ``"reject"`` as recorded (a promotion pre-empted by a concurrent run is
        recorded as ``"reject"``).
    promoted : bool
        Whether this version is the champion now.
    champion_version : str or None
        The champion after publishing.
    reason : str
        The recorded reason.
    reused : bool
        True when an earlier attempt with the same ``run_key`` had already registered the version.
    """

    version: str
    run_id: str
    model_uri: str
    decision: str
    promoted: bool
    champion_version: str | None
    reason: str
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Reading models and rows


def _load_model_dir(model_dir: str | Path) -> Any:
    import gmm_core

    path = Path(model_dir)
    if not path.is_dir():
        raise FileNotFoundError(
            f"model directory {path} does not exist: pass the folder the train task wrote "
            "(with model.npz and model.json)"
        )
    return gmm_core.load_model(path)


def _read_rows(rows: Any) -> Any:
    """A DataFrame from a DataFrame, an array, or a Parquet/CSV/.npy file or Parquet folder."""
    import pandas as pd

    if isinstance(rows, pd.DataFrame):
        return rows
    if isinstance(rows, np.ndarray):
        return pd.DataFrame(np.atleast_2d(rows))
    path = Path(rows)
    if not path.exists():
        raise FileNotFoundError(f"rows file {path} does not exist: pass a Parquet/CSV/.npy path")
    if path.is_dir() or path.suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    if path.suffix == ".npy":
        return pd.DataFrame(np.atleast_2d(np.load(path, allow_pickle=False)))
    raise ValueError(f"cannot read rows from {path}: use Parquet, CSV or .npy")


def _feature_matrix(model: Any, frame: Any) -> np.ndarray:
    """The model's feature columns of ``frame`` as float64, shape (n_samples, n_features)."""
    from emflow.pyfunc_model import feature_matrix

    return np.asarray(feature_matrix(model, frame), dtype=np.float64)


def _feature_names(model: Any) -> list[str]:
    from emflow.pyfunc_model import model_feature_names

    names = model_feature_names(model)
    return names if names is not None else [f"x{i}" for i in range(int(model.n_features_in_))]


def version_model_dir(client: Any, settings: Settings, version: str) -> Path:
    """Local copy of registry version ``version``'s gmm_core files (downloaded once, cached)."""
    import mlflow

    # Keyed by the version's source too: a registry recreated under the same URI reuses numbers.
    source = with_retries(
        f"read model version {version}",
        lambda: client.get_model_version(settings.model_name, str(version)).source, settings)
    store = hashlib.sha256(settings.tracking_uri.encode()).hexdigest()[:12]
    key = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    cached = (settings.home / "cache" / "registry" / store / settings.model_name
              / f"v{version}-{key}")
    if (cached / "model.json").exists():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"v{version}-", dir=cached.parent) as staging:

        def download() -> str:
            return mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{settings.model_name}/{version}",
                dst_path=staging,
                tracking_uri=settings.tracking_uri,
            )

        gmm_dir = Path(with_retries(f"download model version {version}", download, settings))
        gmm_dir = gmm_dir / "artifacts" / "gmm"
        if not (gmm_dir / "model.json").exists():
            raise FileNotFoundError(
                f"registry version {version} of {settings.model_name} has no gmm_core files "
                "under artifacts/gmm: it was not logged by emflow.lifecycle.publish"
            )
        if not cached.exists():  # else a concurrent download finished first
            gmm_dir.rename(cached)
    return cached


# --------------------------------------------------------------------------------------------
# Evaluate and gate


def evaluate(challenger_dir: str | Path, holdout: Any, settings: Settings) -> Evaluation:
    """Score the challenger and the current champion on the same holdout rows.

    Parameters
    ----------
    challenger_dir : str or Path
        gmm_core model folder written by the train task.
    holdout : DataFrame, array of shape (n_samples, n_features), or path
        Holdout rows (Parquet/CSV/.npy path or Parquet folder); extra columns are ignored when the
        model knows its feature names.
    settings : Settings
        Registry to read the champion from.

    Returns
    -------
    Evaluation
        Mean holdout log-likelihoods (nats per row), AIC/BIC, weights, champion version or None.
    """
    challenger = _load_model_dir(challenger_dir)
    frame = _read_rows(holdout)
    X = _feature_matrix(challenger, frame)
    client = connect(settings)
    champion_version = with_retries(
        "read the champion alias",
        lambda: registry.alias_version(client, settings.model_name, registry.CHAMPION),
        settings,
    )
    champion_ll = champion_aic = champion_bic = None
    if champion_version is not None:
        champion = _load_model_dir(version_model_dir(client, settings, champion_version))
        try:
            X_champion = _feature_matrix(champion, frame)
        except ValueError as error:
            raise ValueError(
                f"champion v{champion_version} cannot score this holdout ({error}); if the "
                "model family's features changed on purpose, publish under a new "
                "EMFLOW_MODEL_NAME or promote by hand with `emflow rollback --version N`"
            ) from error
        champion_ll = mean_loglik(champion.score_samples(X_champion))
        champion_aic = float(champion.aic(X_champion))
        champion_bic = float(champion.bic(X_champion))
    evaluation = Evaluation(
        challenger_mean_loglik=mean_loglik(challenger.score_samples(X)),
        champion_mean_loglik=champion_ll,
        champion_version=champion_version,
        n_holdout=int(X.shape[0]),
        holdout_sha256=hashlib.sha256(np.ascontiguousarray(X).tobytes()).hexdigest(),
        challenger_aic=float(challenger.aic(X)),
        challenger_bic=float(challenger.bic(X)),
        champion_aic=champion_aic,
        champion_bic=champion_bic,
        weights=[float(w) for w in np.asarray(challenger.weights_)],
        feature_names=_feature_names(challenger),
    )
    log.info(
        "holdout (%d rows): challenger mean log-likelihood %.4f, champion %s %s",
        evaluation.n_holdout, evaluation.challenger_mean_loglik,
        f"v{champion_version}" if champion_version else "(none)",
        "" if champion_ll is None else f"{champion_ll:.4f}",
    )
    return evaluation


def aligned_dir_for(challenger_dir: str | Path) -> Path:
    """Where :func:`gate` writes the challenger reordered to the champion's component ids."""
    path = Path(challenger_dir)
    return path.with_name(path.name + "-aligned")


def gate(
    evaluation: Evaluation | Mapping[str, Any], challenger_dir: str | Path, settings: Settings
) -> Decision:
    """Align the challenger to the champion, write it reordered, and decide on promotion.

    The challenger is matched to the champion component by component (Hungarian assignment on
    the Bhattacharyya distance, ``gmm_core.align_components``) and saved reordered to
    :func:`aligned_dir_for` ``(challenger_dir)``; the trained folder is left as it was. Promote iff
    there is no champion, or the holdout mean log-likelihood is at most
    ``settings.promotion_margin`` below the champion's and the mean alignment cost is at most
    ``settings.alignment_threshold``.

    Parameters
    ----------
    evaluation : Evaluation or its ``to_dict()``
        From :func:`evaluate` on this challenger.
    challenger_dir : str or Path
        The challenger's gmm_core model folder.
    settings : Settings
        Margin, threshold, and the registry holding the champion.

    Returns
    -------
    Decision
        ``promote``, ``reason``, alignment evidence and ``model_dir`` (the folder to publish).
    """
    import gmm_core

    evaluation = Evaluation.from_dict(evaluation)
    challenger = _load_model_dir(challenger_dir)
    n_components = int(np.asarray(challenger.weights_).shape[0])
    champion_version = evaluation.champion_version
    model_dir = Path(challenger_dir)
    alignment = None
    if champion_version is not None:
        client = connect(settings)
        champion = _load_model_dir(version_model_dir(client, settings, champion_version))
        try:
            alignment = gmm_core.align_components(champion, challenger)
        except ValueError as error:  # e.g. a different number of features
            return Decision(
                promote=False,
                reason=f"rejected: cannot align to champion v{champion_version}: {error}",
                model_dir=str(model_dir), champion_version=champion_version,
                challenger_mean_loglik=evaluation.challenger_mean_loglik,
                champion_mean_loglik=evaluation.champion_mean_loglik,
                promotion_margin=float(settings.promotion_margin),
                alignment_threshold=float(settings.alignment_threshold),
                challenger_aic=evaluation.challenger_aic,
                challenger_bic=evaluation.challenger_bic, n_holdout=evaluation.n_holdout,
            )
        order = [int(i) for i in np.asarray(alignment.permutation)]  # unmatched ones last
        model_dir = aligned_dir_for(challenger_dir)
        _save_aligned(alignment.aligned, challenger, model_dir, champion_version, order)
    mean_cost = None if alignment is None else float(alignment.mean_cost)
    promote, reason = decide(
        evaluation,
        alignment_mean_cost=mean_cost,
        promotion_margin=settings.promotion_margin,
        alignment_threshold=settings.alignment_threshold,
    )
    champion_ll = evaluation.champion_mean_loglik
    decision = Decision(
        promote=promote,
        reason=reason,
        model_dir=str(model_dir),
        champion_version=champion_version,
        challenger_mean_loglik=evaluation.challenger_mean_loglik,
        champion_mean_loglik=champion_ll,
        loglik_delta=None if champion_ll is None
        else evaluation.challenger_mean_loglik - champion_ll,
        alignment_mean_cost=mean_cost,
        alignment_costs=[] if alignment is None else [float(c) for c in alignment.costs],
        permutation=list(range(n_components)) if alignment is None
        else [int(i) for i in np.asarray(alignment.permutation)],
        unmatched=[] if alignment is None else [int(i) for i in np.asarray(alignment.unmatched)],
        promotion_margin=float(settings.promotion_margin),
        alignment_threshold=float(settings.alignment_threshold),
        challenger_aic=evaluation.challenger_aic,
        challenger_bic=evaluation.challenger_bic,
        n_holdout=evaluation.n_holdout,
    )
    log.info("gate: %s (%s)", decision.label, decision.reason)
    return decision


def _save_aligned(
    aligned: Any, challenger: Any, target: Path, champion_version: str, order: list[int]
) -> None:
    """Save the reordered challenger to ``target`` (replacing an earlier attempt's copy)."""
    import gmm_core
    from emflow.pyfunc_model import model_feature_names

    for name in ("restart_lower_bounds_", "lower_bounds_", "fit_seconds_", "backend_"):
        if hasattr(challenger, name) and not hasattr(aligned, name):
            setattr(aligned, name, getattr(challenger, name))
    metadata = dict(getattr(challenger, "metadata_", None) or {})
    metadata["aligned_to"] = {"champion_version": str(champion_version), "order": order}
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        gmm_core.save_model(
            aligned, staging / "model", feature_names=model_feature_names(challenger),
            metadata=metadata,
        )
        if target.exists():  # derived from the challenger folder, rewritten identically
            shutil.rmtree(target)
        (staging / "model").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Publish


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


def _params(model: Any, train_info: Mapping[str, Any], data_window: str, run_key: str) -> dict:
    """Run params: the model's constructor settings, then the train task's info, as strings."""
    params: dict[str, Any] = {"data_window": data_window, "run_key": run_key}
    try:
        model_params = model.get_params()
    except AttributeError:
        model_params = {}
    for key in ("n_components", "covariance_type", "n_init", "random_state", "tol", "reg_covar",
                "max_iter", "init_params", "backend"):
        if key in model_params:
            params[key] = model_params[key]
    params["n_features"] = int(model.n_features_in_)
    params["backend_used"] = getattr(model, "backend_", None)
    for key, value in _flat_scalars(train_info).items():
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
    singles = {
        "holdout_mean_loglik": decision.challenger_mean_loglik,
        "champion_holdout_mean_loglik": decision.champion_mean_loglik,
        "holdout_loglik_delta": decision.loglik_delta,
        "alignment_mean_cost": decision.alignment_mean_cost,
        "holdout_aic": decision.challenger_aic,
        "holdout_bic": decision.challenger_bic,
        "n_holdout_scored": decision.n_holdout or None,
        "promote": float(decision.promote),
        "n_iter": getattr(model, "n_iter_", None),
        "converged": None if getattr(model, "converged_", None) is None
        else float(bool(model.converged_)),
        "final_lower_bound": getattr(model, "lower_bound_", None),
        "training_seconds": train_info.get("fit_seconds", getattr(model, "fit_seconds_", None)),
    }
    scalars = _flat_scalars(train_info)
    for key in ("n_train", "n_holdout", "n_train_rows", "n_holdout_rows",
                "gpu_memory_peak_bytes"):
        if isinstance(scalars.get(key), int | float) and not isinstance(scalars[key], bool):
            singles[key] = scalars[key]
    for key, value in singles.items():
        if value is not None and np.isfinite(float(value)):
            out.append((key, float(value), 0))
    return out


def _example_frame(model: Any, rows: Any | None) -> Any:
    """A few rows of the model's features as a DataFrame (the signature's input example)."""
    import pandas as pd

    names = _feature_names(model)
    if rows is not None:
        frame = _read_rows(rows)
        X = _feature_matrix(model, frame)
    else:
        X, _ = model.sample(INPUT_EXAMPLE_ROWS)
    X = np.asarray(X, dtype=np.float64)
    return pd.DataFrame(X[: max(INPUT_EXAMPLE_ROWS, 1)], columns=names)


def _sample_matrix(model: Any, rows: Any | None, seed: int = 0) -> np.ndarray | None:
    if rows is None:
        return None
    X = _feature_matrix(model, _read_rows(rows))
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
        f"{int(model.n_features_in_)} features: {', '.join(_feature_names(model))}.",
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


def _gmm_core_code_copy(folder: Path) -> Path:
    """A clean copy of the gmm_core package (sources and kernels only) for ``code_paths``."""
    import gmm_core

    source = Path(gmm_core.__file__).parent
    target = folder / "gmm_core"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(
        "__pycache__", "*.pyc", "*.pyo", "*.so", "*.pkl", "*.pickle"))
    return target


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the body, restoring the previous values after."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "numpy", "pandas", "scipy")]


def publish(
    decision: Decision | Mapping[str, Any],
    challenger_dir: str | Path,
    *,
    run_key: str,
    data_window: str | tuple[str, str],
    train_info: Mapping[str, Any],
    settings: Settings,
    validation_report: Any = None,
    train_sample: Any = None,
) -> PublishResult:
    """Log one MLflow run for this retrain, register the model version, and move the aliases.

    Parameters
    ----------
    decision : Decision or its ``to_dict()``
        From :func:`gate`; ``decision.model_dir`` (the aligned model) is what gets registered.
    challenger_dir : str or Path
        The trained folder; used when the decision names no ``model_dir``.
    run_key : str
        Identifies the pipeline run (e.g. Airflow's ``dag_id/run_id``). A retry with the same key
        finds the version registered before and only completes what is missing.
    data_window : str or (str, str)
        The telemetry window trained on (``"2026-11-01..2026-11-07"`` or the pair).
    train_info : mapping
        Facts from the train task logged as params/metrics (scalars), e.g. ``n_train_rows``,
        ``device``, ``seed``, ``fit_seconds``; lists/arrays are skipped except
        ``restart_lower_bounds`` (used when the model folder lacks them).
    settings : Settings
        Registry, experiment, retry knobs.
    validation_report : dict, str or Path, optional
        The validation result (JSON-ready dict or a file) logged as ``validation/`` artifact.
    train_sample : DataFrame, array or path, optional
        Rows drawn in the PCA components plot and used as the input example.

    Returns
    -------
    PublishResult

    Raises
    ------
    emflow.tracking.TrackingUnavailableError
        When the tracking server stays unreachable; the model stays in its folder and the task
        can be retried with the same ``run_key``.
    """
    decision = Decision.from_dict(decision)
    data_window = window_text(data_window)
    model_dir = Path(decision.model_dir or challenger_dir)
    model = _load_model_dir(model_dir)
    name = settings.model_name
    keep_note = (
        f"The model is kept at {model_dir}; retrying with run_key {run_key!r} registers it once."
    )

    def retry(step: str, call: Any) -> Any:
        return with_retries(step, call, settings, keep_note=keep_note)

    client = connect(settings)
    existing = retry("look up the run key",
                     lambda: registry.find_version_by_run_key(client, name, run_key))
    if existing is not None and existing.tags.get("emflow.published") == "complete":
        log.info("run key %s already published as version %s", run_key, existing.version)
        return _result_from_version(client, name, existing, reused=True, settings=settings)

    experiment_id = retry("create the experiment", lambda: ensure_experiment(client, settings))
    run = retry("find the run", lambda: find_run_by_key(client, experiment_id, run_key))
    if run is None:
        run = retry("start the run", lambda: client.create_run(
            experiment_id, run_name=f"retrain {data_window}",
            tags={registry.TAG_RUN_KEY: run_key, registry.TAG_DATA_WINDOW: data_window},
        ))
    run_id = run.info.run_id
    params = _params(model, train_info, data_window, run_key)

    if existing is None:
        _log_run_contents(client, run, model, train_info, decision, params, validation_report,
                          train_sample, retry)
        existing = retry("register the model version", lambda: _register(
            client, settings, run_id, model, model_dir, decision, run_key, data_window,
            train_sample, experiment_id))
    version = str(existing.version)

    card = model_card(settings=settings, version=version, run_id=run_id, run_key=run_key,
                      data_window=data_window, decision=decision, model=model, params=params)
    retry("log the model card", lambda: client.log_text(run_id, card, "model_card.md"))

    final_decision, reason = decision.label, decision.reason
    retry("set the challenger alias",
          lambda: client.set_registered_model_alias(name, registry.CHALLENGER, version))
    if decision.promote:
        move = retry("move the champion alias", lambda: registry.move_champion(
            client, name, version, expected_champion=decision.champion_version,
            holder=f"{run_key} ({registry.default_actor()})",
            version_tags={registry.TAG_PROMOTED_AT: registry.now_iso()},
        ))
        if not move.moved:
            final_decision = "reject"
            reason = (
                f"not promoted: the champion moved from "
                f"{'none' if move.previous is None else 'v' + move.previous} to v{move.current} "
                f"after this challenger was evaluated (a concurrent run promoted first); "
                f"gate said: {decision.reason}"
            )
            log.warning("%s", reason)

    def finish() -> None:
        client.set_model_version_tag(name, version, registry.TAG_DECISION, final_decision)
        client.set_model_version_tag(name, version, registry.TAG_REASON, reason[:5000])
        client.set_tag(run_id, registry.TAG_DECISION, final_decision)
        client.set_tag(run_id, registry.TAG_REASON, reason[:5000])
        client.set_tag(run_id, "emflow.model_version", version)
        client.set_model_version_tag(name, version, "emflow.published", "complete")
        if client.get_run(run_id).info.status != "FINISHED":
            client.set_terminated(run_id, "FINISHED")

    retry("record the decision", finish)
    result = _result_from_version(
        client, name, client.get_model_version(name, version), reused=False, settings=settings)
    log.info("published %s v%s: %s (%s)", name, version, result.decision, result.reason)
    return result


def _log_run_contents(
    client: Any, run: Any, model: Any, train_info: Mapping[str, Any], decision: Decision,
    params: Mapping[str, str], validation_report: Any, train_sample: Any, retry: Any,
) -> None:
    """Params, metrics (skipped when an earlier attempt logged them), plots, report, decision."""
    from mlflow.entities import Metric, Param

    from emflow import plots

    run_id = run.info.run_id
    if run.data.params:
        params = {k: v for k, v in params.items() if k not in run.data.params}
    if params:
        retry("log params", lambda: client.log_batch(
            run_id, params=[Param(k, v) for k, v in params.items()]))
    if "holdout_mean_loglik" not in run.data.metrics:
        curves = _restart_curves(model, train_info)
        now_ms = int(time.time() * 1000)
        metrics = [Metric(k, v, now_ms, s) for k, v, s in _metrics(model, train_info, decision,
                                                                   curves)]
        for start in range(0, len(metrics), 900):  # MLflow accepts 1000 entities per batch
            chunk = metrics[start:start + 900]
            retry("log metrics", lambda chunk=chunk: client.log_batch(run_id, metrics=chunk))
    with tempfile.TemporaryDirectory(prefix="emflow-run-") as tmp:
        folder = Path(tmp)
        plots.write_all(model, _sample_matrix(model, train_sample), folder / "plots",
                        restart_lower_bounds=_restart_curves(model, train_info))
        (folder / "gate").mkdir()
        (folder / "gate" / "decision.json").write_text(json.dumps(decision.to_dict(), indent=2))
        if validation_report is not None:
            (folder / "validation").mkdir()
            if isinstance(validation_report, str | Path) and Path(validation_report).is_file():
                shutil.copy(validation_report, folder / "validation" / Path(validation_report).name)
            else:
                (folder / "validation" / "validation_report.json").write_text(
                    json.dumps(validation_report, indent=2, default=str))
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            retry(f"log {sub.name} artifacts",
                  lambda sub=sub: client.log_artifacts(run_id, str(sub), sub.name))


def _register(
    client: Any, settings: Settings, run_id: str, model: Any, model_dir: Path, decision: Decision,
    run_key: str, data_window: str, train_sample: Any, experiment_id: str,
) -> Any:
    """Log the pyfunc model in ``run_id`` and register it tagged with ``run_key`` (once)."""
    import mlflow
    from mlflow.models import infer_signature

    from emflow.pyfunc_model import GMM_ARTIFACT, score_frame

    name = settings.model_name
    found = registry.find_version_by_run_key(client, name, run_key)
    if found is not None:  # the previous attempt registered before losing the connection
        return found
    example = _example_frame(model, train_sample)
    signature = infer_signature(example, score_frame(model, example))
    registry.ensure_registered_model(
        client, name, description="emflow Gaussian mixture over telemetry (gmm_core arrays)")
    with tempfile.TemporaryDirectory(prefix="emflow-code-") as tmp:
        code = _gmm_core_code_copy(Path(tmp))
        # MLflow names the artifact folder after the source folder: stage it as "gmm".
        gmm_files = Path(tmp) / GMM_ARTIFACT
        gmm_files.mkdir()
        for path in sorted(Path(model_dir).iterdir()):
            if path.is_file() and not path.name.startswith("."):
                shutil.copy2(path, gmm_files / path.name)
        with mlflow.start_run(run_id=run_id, experiment_id=experiment_id), \
                _env(MLFLOW_LOG_UV_FILES="false"):  # not the whole project's lock file
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=str(PYFUNC_CODE),
                artifacts={GMM_ARTIFACT: str(gmm_files)},
                code_paths=[str(code)],
                signature=signature,
                input_example=example,
                pip_requirements=_pip_requirements(),
                tags={registry.TAG_RUN_KEY: run_key},
            )
    tags = {
        registry.TAG_RUN_KEY: run_key,
        registry.TAG_DATA_WINDOW: data_window,
        registry.TAG_DECISION: decision.label,
        registry.TAG_REASON: decision.reason[:5000],
        registry.TAG_MLFLOW_RUN: run_id,
        "emflow.holdout_mean_loglik": str(decision.challenger_mean_loglik),
        "emflow.alignment_mean_cost": str(decision.alignment_mean_cost),
        "emflow.compared_with": str(decision.champion_version),
    }
    return client.create_model_version(name, info.model_uri, run_id=run_id, tags=tags,
                                       description=f"retrain {data_window} ({run_key})",
                                       model_id=info.model_id)


def _result_from_version(
    client: Any, name: str, version: Any, *, reused: bool, settings: Settings
) -> PublishResult:
    champion = with_retries("read the champion alias",
                            lambda: registry.alias_version(client, name, registry.CHAMPION),
                            settings)
    v = str(version.version)
    return PublishResult(
        version=v,
        run_id=str(version.run_id),
        model_uri=f"models:/{name}/{v}",
        decision=version.tags.get(registry.TAG_DECISION, ""),
        promoted=champion == v,
        champion_version=champion,
        reason=version.tags.get(registry.TAG_REASON, ""),
        reused=reused,
    )


# --------------------------------------------------------------------------------------------
# Rollback and status


def check_version_serves(settings: Settings, version: str) -> dict[str, Any]:
    """Load registry version ``version`` through pyfunc and score its input example.

    Returns
    -------
    dict
        ``rows`` scored and their ``mean_log_likelihood``.

    Raises
    ------
    RollbackCheckError
        When it does not load, has no input example, or scores non-finite values.
    """
    import mlflow

    from emflow.pyfunc_model import OUTPUT_COLUMNS

    uri = f"models:/{settings.model_name}/{version}"
    try:
        loaded = mlflow.pyfunc.load_model(uri)
        example = loaded.input_example
        if example is None:
            raise RollbackCheckError(f"{uri} has no input example to score")
        scored = loaded.predict(example)
    except RollbackCheckError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure means "do not serve this"
        raise RollbackCheckError(
            f"{uri} failed to load or score its input example ({type(error).__name__}: "
            f"{error}); champion left unchanged"
        ) from error
    missing = [c for c in OUTPUT_COLUMNS if c not in scored.columns]
    loglik = scored["log_likelihood"].to_numpy(dtype=np.float64) if not missing else None
    if missing or not np.isfinite(loglik).all():
        raise RollbackCheckError(
            f"{uri} scored its input example badly (missing {missing} or non-finite "
            "log-likelihood); champion left unchanged"
        )
    return {"rows": int(len(scored)), "mean_log_likelihood": float(loglik.mean())}


def rollback(
    version: str | int | None = None,
    *,
    reason: str,
    actor: str | None = None,
    settings: Settings,
) -> dict[str, Any]:
    """Point ``champion`` at a prior version after checking that it loads and scores.

    Parameters
    ----------
    version : str or int, optional
        Target version; default the ``previous-champion`` alias.
    reason : str
        Why (required; recorded on the version).
    actor : str, optional
        Who; default ``user@host`` of this process.
    settings : Settings

    Returns
    -------
    dict
        ``version`` (new champion), ``previous`` (old champion), ``actor``, ``at``, ``reason``,
        ``changed`` and the ``check`` result.

    Raises
    ------
    UnknownVersionError
        The version does not exist (or no previous champion is recorded); nothing changed.
    RollbackCheckError
        The target does not load or score; nothing changed.
    """
    if not reason or not reason.strip():
        raise ValueError("a rollback needs a reason: pass reason='...' (CLI: --reason TEXT)")
    actor = actor or registry.default_actor()
    name = settings.model_name
    client = connect(settings)

    def retry(step: str, call: Any) -> Any:
        return with_retries(step, call, settings)

    if not retry("look up the model", lambda: registry.registered_model_exists(client, name)):
        raise UnknownVersionError(
            f"no registered model {name!r} at {settings.tracking_uri}: nothing to roll back "
            "(check MLFLOW_TRACKING_URI / EMFLOW_HOME)"
        )
    current = retry("read the champion", lambda: registry.alias_version(client, name,
                                                                        registry.CHAMPION))
    if version is None:
        version = retry("read the previous champion", lambda: registry.alias_version(
            client, name, registry.PREVIOUS_CHAMPION))
        if version is None:
            raise UnknownVersionError(
                f"{name} has no previous champion recorded; pass an explicit version "
                "(--version N; `emflow status` lists them)"
            )
    target = str(version).strip()
    found = retry("read the version", lambda: registry.get_version(client, name, target))
    if found is None:
        known = [str(v.version) for v in retry("list versions",
                                               lambda: registry.list_versions(client, name))]
        raise UnknownVersionError(
            f"version {target!r} of {name} does not exist (known versions: "
            f"{', '.join(reversed(known)) or 'none'}); champion stays "
            f"{'v' + current if current else 'unset'}"
        )
    target = str(found.version)  # the registry's spelling: "02" is version 2
    at = registry.now_iso()
    if target == current:
        return {"version": target, "previous": current, "actor": actor, "at": at,
                "reason": reason, "changed": False, "check": None}
    check = check_version_serves(settings, target)
    move = retry("move the champion alias", lambda: registry.move_champion(
        client, name, target, expected_champion=current, holder=f"rollback by {actor}",
        version_tags={
            registry.TAG_ROLLBACK_BY: actor,
            registry.TAG_ROLLBACK_AT: at,
            registry.TAG_ROLLBACK_REASON: reason[:5000],
            registry.TAG_ROLLBACK_FROM: str(current),
        },
    ))
    if not move.moved:
        raise RuntimeError(
            f"the champion moved from v{current} to v{move.current} during the rollback; "
            "nothing changed: check `emflow status` and retry"
        )
    record = {"version": target, "previous": current, "actor": actor, "at": at,
              "reason": reason, "changed": True, "check": check}
    retry("record the rollback", lambda: client.set_registered_model_tag(
        name, "emflow.last_rollback", json.dumps(record, default=str)[:5000]))
    log.warning("rolled back %s champion v%s -> v%s by %s: %s", name, current, target, actor,
                reason)
    return record


def status(settings: Settings) -> dict[str, Any]:
    """Versions (newest first) with their decisions and aliases, for ``emflow status``.

    Returns
    -------
    dict
        ``model_name``, ``tracking_uri``, ``aliases`` (alias -> version), ``versions``: list of
        dicts with ``version``, ``aliases``, ``decision``, ``reason``, ``run_key``,
        ``data_window``, ``run_id``, ``created``, ``holdout_mean_loglik`` and rollback fields.
    """
    from datetime import UTC, datetime

    name = settings.model_name
    client = connect(settings)
    out: dict[str, Any] = {"model_name": name, "tracking_uri": settings.tracking_uri,
                           "aliases": {}, "versions": []}
    if not with_retries("look up the model",
                        lambda: registry.registered_model_exists(client, name), settings):
        return out
    model = with_retries("read the model", lambda: client.get_registered_model(name), settings)
    aliases = {str(k): str(v) for k, v in (model.aliases or {}).items()}
    out["aliases"] = aliases
    last_rollback = (model.tags or {}).get("emflow.last_rollback")
    out["last_rollback"] = json.loads(last_rollback) if last_rollback else None
    versions = with_retries("list versions", lambda: registry.list_versions(client, name),
                            settings)
    for v in versions:
        tags = v.tags or {}
        out["versions"].append({
            "version": str(v.version),
            "aliases": sorted(a for a, target in aliases.items() if target == str(v.version)),
            "decision": tags.get(registry.TAG_DECISION, ""),
            "reason": tags.get(registry.TAG_REASON, ""),
            "run_key": tags.get(registry.TAG_RUN_KEY, ""),
            "data_window": tags.get(registry.TAG_DATA_WINDOW, ""),
            "run_id": v.run_id,
            "created": datetime.fromtimestamp(v.creation_timestamp / 1000, UTC)
            .isoformat(timespec="seconds"),
            "holdout_mean_loglik": tags.get("emflow.holdout_mean_loglik"),
            "rollback_by": tags.get(registry.TAG_ROLLBACK_BY),
            "rollback_at": tags.get(registry.TAG_ROLLBACK_AT),
            "rollback_reason": tags.get(registry.TAG_ROLLBACK_REASON),
        })
    return out
