"""The served model: an MLflow pyfunc that carries data only and runs the installed package.

The logged model is MLflow's "loader module" form of the ``python_function`` flavor: its
``MLmodel`` names this module (``loader_module: emflow.model.pyfunc_model``) and its data folder
(``data/gmm``: gmm_core's own ``model.npz`` + ``model.json``, never a pickle). MLflow imports this
module from the installed ``emflow`` package and calls :func:`_load_pyfunc`; the artifact holds no
Python code, so whoever can write to the artifact store can change numbers, not what runs.
:func:`check_artifact` is the check emflow makes on a downloaded copy before loading it (rollback,
``emflow score``): it refuses an ``MLmodel`` that points anywhere else (another loader, a ``code``
folder, a pickled ``python_model``, a model-code file) and any file that is not data.

``predict`` takes a DataFrame with the model's feature columns and returns one row per input row:

- ``component`` (int64): most responsible component id (stable across retrains after alignment),
- ``responsibility`` (float64): that component's posterior probability, in [0, 1],
- ``log_likelihood`` (float64): log density of the row under the mixture, the anomaly score
  (lower is more anomalous).

A row so far from every component that its density underflows (e.g. a feature at 1e300) scores
``log_likelihood`` -inf, with ``component`` -1 and ``responsibility`` 0: no component explains it.

A model calibrated for anomalies (``GaussianMixture.calibrate_threshold``; the threshold travels
in ``model.json``) adds:

- ``p_value`` (float64): estimated probability that a normal row scores at least as anomalous,
- ``is_anomaly`` (bool): the row's negative log-likelihood is above the calibrated threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

GMM_ARTIFACT = "gmm"
OUTPUT_COLUMNS = ("component", "responsibility", "log_likelihood")
#: added by a model with an anomaly calibration
ANOMALY_COLUMNS = ("p_value", "is_anomaly")
#: The module MLflow imports to load a logged emflow model (this one).
LOADER_MODULE = "emflow.model.pyfunc_model"
#: Where the gmm_core files lie inside a logged model (MLflow copies ``data_path`` to ``data/``).
DATA_SUBPATH = f"data/{GMM_ARTIFACT}"


def model_feature_names(model: Any) -> list[str] | None:
    """Feature column names a gmm_core model was saved or fitted with, in order, or None."""
    for attribute in ("feature_names_", "feature_names_in_"):
        names = getattr(model, attribute, None)
        if names is not None and len(names):
            return [str(n) for n in names]
    return None


def _holds_text(column: pd.Series) -> bool:
    """Whether a column stores numbers as text (a string dtype, or strings in an object one)."""
    if pd.api.types.is_string_dtype(column.dtype) and column.dtype != object:
        return True
    return column.dtype == object and bool(column.map(lambda v: isinstance(v, str)).any())


def feature_matrix(model: Any, frame: pd.DataFrame) -> Any:
    """The model's features of ``frame``, shape (n_samples, n_features), checked finite.

    A DataFrame (model column order) when the model was fitted on one, else a float64 array.
    """
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(frame)
    names = model_feature_names(model)
    if names is not None:
        missing = [n for n in names if n not in frame.columns]
        if missing:
            raise ValueError(
                f"input lacks feature columns {missing}; the model was trained on {names}: "
                "pass a DataFrame with those columns"
            )
        texts = {n: str(frame[n].dtype) for n in names if _holds_text(frame[n])}
        if texts:  # "1.5" parsed silently where training refuses it (emflow train)
            raise ValueError(
                f"feature columns hold text: {texts}; store them as numbers (the model was "
                "trained on numeric columns)"
            )
        features = frame[names].astype(np.float64)
    else:
        features = frame.select_dtypes("number").astype(np.float64)
        if features.shape[1] != model.n_features_in_:
            raise ValueError(
                f"input has {features.shape[1]} numeric columns, the model expects "
                f"{model.n_features_in_}: pass exactly the training feature columns "
                "(or save the model with feature_names)"
            )
    if len(features) == 0:
        raise ValueError("no rows to score: the input is empty")
    values = features.to_numpy()
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).any(axis=1).sum())
        raise ValueError(f"{bad} input rows hold NaN or inf features: drop or impute them first")
    return features if hasattr(model, "feature_names_in_") else values


def score_frame(model: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """Score ``frame`` with a fitted gmm_core ``GaussianMixture``.

    Parameters
    ----------
    model : gmm_core.GaussianMixture
        Fitted model; its saved feature names (when present) select and order the columns.
    frame : pandas.DataFrame of shape (n_samples, >= n_features)
        Telemetry rows. Extra columns (ids, timestamps) are ignored when the model knows its
        feature names.

    Returns
    -------
    pandas.DataFrame of shape (n_samples, 3) or (n_samples, 5)
        Columns ``component``, ``responsibility``, ``log_likelihood``, and for a model with an
        anomaly calibration ``p_value`` and ``is_anomaly``; index of ``frame``. A row whose
        log-likelihood is -inf (far outside every component) has ``component`` -1 and
        ``responsibility`` 0.
    """
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(frame)
    X = feature_matrix(model, frame)
    # a row far outside every component overflows (log-likelihood -inf, responsibilities
    # 0/0): a result, scored below, not a NumPy warning
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        resp = np.asarray(model.predict_proba(X), dtype=np.float64)
        log_likelihood = np.asarray(model.score_samples(X), dtype=np.float64)
    far = ~np.isfinite(log_likelihood)
    log_likelihood[far] = -np.inf
    best = np.nan_to_num(resp).argmax(axis=1)
    columns: dict[str, Any] = {
        "component": np.where(far, -1, best).astype(np.int64),
        "responsibility": np.where(far, 0.0, resp[np.arange(len(resp)), best]),
        "log_likelihood": log_likelihood,
    }
    calibration = getattr(model, "anomaly_calibration_", None)
    if calibration is not None:
        from gmm_core.anomaly import score

        anomaly = score(calibration, -log_likelihood)  # the same scores, not a second pass
        columns["p_value"] = anomaly.p_value
        columns["is_anomaly"] = anomaly.is_anomaly
    return pd.DataFrame(columns, index=frame.index)


class UntrustedArtifactError(ValueError):
    """A logged model would run something other than the installed emflow loader on data."""


#: Files a logged emflow model may hold (MLflow's metadata and environment files, the data;
#: ``registered_model_meta`` is what MLflow adds to a copy downloaded from ``models:/``).
_DATA_SUFFIXES = (".json", ".npz", ".yaml", ".txt")
_DATA_NAMES = ("MLmodel", "registered_model_meta")
#: ``python_function`` flavor keys that make MLflow import or unpickle something from the artifact.
_CODE_KEYS = ("code", "model_code_path", "python_model", "cloudpickle_version", "artifacts")


def check_artifact(model_path: str | Path) -> None:
    """Refuse a downloaded MLflow model folder unless it is data for the installed loader.

    Checked before anything in it is imported or loaded: ``MLmodel`` has exactly the
    ``python_function`` flavor, its ``loader_module`` is :data:`LOADER_MODULE`, its data is
    :data:`DATA_SUBPATH`, it names no code folder, model-code file, pickled model or other
    predict function; every file is plain data (MLflow's ``MLmodel`` and
    ``registered_model_meta``, ``.json``, ``.npz``, ``.yaml``, ``.txt``), none a link.

    Raises
    ------
    UntrustedArtifactError
        Naming what was found; nothing was imported.
    """
    import yaml

    root = Path(model_path)
    try:
        meta = yaml.safe_load((root / "MLmodel").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UntrustedArtifactError(f"{root}/MLmodel is unreadable ({error})") from error
    flavors = meta.get("flavors") if isinstance(meta, dict) else None
    if not isinstance(flavors, dict) or set(flavors) != {"python_function"}:
        raise UntrustedArtifactError(
            f"{root}/MLmodel has flavors {sorted(flavors or {})}, not python_function alone"
        )
    conf = flavors["python_function"]
    problems = []
    if not isinstance(conf, dict):
        raise UntrustedArtifactError(f"{root}/MLmodel's python_function flavor is not a mapping")
    if conf.get("loader_module") != LOADER_MODULE:
        problems.append(f"loader_module {conf.get('loader_module')!r} (expected {LOADER_MODULE})")
    if conf.get("data") != DATA_SUBPATH:
        problems.append(f"data {conf.get('data')!r} (expected {DATA_SUBPATH})")
    problems += [f"{key}: {conf[key]!r}" for key in _CODE_KEYS if conf.get(key)]
    if conf.get("predict_fn", "predict") != "predict":
        problems.append(f"predict_fn {conf['predict_fn']!r}")
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not (path.is_dir() or path.is_file()):
            problems.append(f"{path.relative_to(root)} is a link or special file")
        elif path.is_file() and path.name not in _DATA_NAMES and path.suffix not in _DATA_SUFFIXES:
            problems.append(f"{path.relative_to(root)} is not a data file")
    if problems:
        raise UntrustedArtifactError(
            f"refusing the model at {root}: it would not be plain data for the installed "
            f"{LOADER_MODULE} ({'; '.join(problems)}). Someone with write access to the "
            "registry or artifact store changed it, or an older emflow logged it with its code "
            "(before 2026-12): publish a new version instead of serving this one"
        )


class GaussianMixtureServing:
    """A loaded gmm_core model behind MLflow's pyfunc ``predict`` (see the module docstring).

    Parameters
    ----------
    model_dir : str or Path
        A gmm_core model directory (``model.npz`` + ``model.json``, checksums verified on load).
    """

    def __init__(self, model_dir: str | Path) -> None:
        import gmm_core

        self.model = gmm_core.load_model(model_dir)
        backend = getattr(self.model, "backend", None)
        if backend not in (None, "numpy"):
            # Serving scores small batches on whatever machine loads it: keep it on the CPU.
            try:
                self.model.set_params(backend="numpy")
            except (AttributeError, ValueError):
                pass

    def predict(self, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        """Per-row component, responsibility, log-likelihood (and anomaly p-value and flag).

        See :func:`score_frame`.
        """
        return score_frame(self.model, model_input)


def _load_pyfunc(data_path: str) -> GaussianMixtureServing:
    """MLflow's entry point for ``loader_module``: the model in ``data_path`` (``data/gmm``)."""
    return GaussianMixtureServing(data_path)
