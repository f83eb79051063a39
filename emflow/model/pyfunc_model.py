"""MLflow pyfunc for a gmm_core model, logged as code: nothing in the artifact is pickled.

MLflow copies this file into the model artifact (``python_model=<this file>``, "models from
code") and runs it at load time; ``set_model`` at the bottom tells MLflow which object serves. The
fitted mixture travels as gmm_core's own ``model.npz`` + ``model.json`` under ``artifacts["gmm"]``,
so loading needs neither the training process nor a GPU: only NumPy, pandas and ``gmm_core``.

``predict`` takes a DataFrame with the model's feature columns and returns one row per input row:

- ``component`` (int64): most responsible component id (stable across retrains after alignment),
- ``responsibility`` (float64): that component's posterior probability, in [0, 1],
- ``log_likelihood`` (float64): log density of the row under the mixture, the anomaly score
  (lower is more anomalous).

A model calibrated for anomalies (``GaussianMixture.calibrate_threshold``; the threshold travels
in ``model.json``) adds:

- ``p_value`` (float64): estimated probability that a normal row scores at least as anomalous,
- ``is_anomaly`` (bool): the row's negative log-likelihood is above the calibrated threshold.
"""

from __future__ import annotations

from typing import Any

import mlflow
import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd

GMM_ARTIFACT = "gmm"
OUTPUT_COLUMNS = ("component", "responsibility", "log_likelihood")
#: added by a model with an anomaly calibration
ANOMALY_COLUMNS = ("p_value", "is_anomaly")


def model_feature_names(model: Any) -> list[str] | None:
    """Feature column names a gmm_core model was saved or fitted with, in order, or None."""
    for attribute in ("feature_names_", "feature_names_in_"):
        names = getattr(model, attribute, None)
        if names is not None and len(names):
            return [str(n) for n in names]
    return None


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
        anomaly calibration ``p_value`` and ``is_anomaly``; index of ``frame``.
    """
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(frame)
    X = feature_matrix(model, frame)
    resp = np.asarray(model.predict_proba(X), dtype=np.float64)
    component = resp.argmax(axis=1).astype(np.int64)
    log_likelihood = np.asarray(model.score_samples(X), dtype=np.float64)
    columns: dict[str, Any] = {
        "component": component,
        "responsibility": resp[np.arange(len(resp)), component],
        "log_likelihood": log_likelihood,
    }
    calibration = getattr(model, "anomaly_calibration_", None)
    if calibration is not None:
        from gmm_core.anomaly import score

        anomaly = score(calibration, -log_likelihood)  # the same scores, not a second pass
        columns["p_value"] = anomaly.p_value
        columns["is_anomaly"] = anomaly.is_anomaly
    return pd.DataFrame(columns, index=frame.index)


class GaussianMixturePyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    """Serves a gmm_core model saved as ``.npz`` + ``.json`` (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        """Load the mixture from ``context.artifacts["gmm"]`` (a gmm_core model directory)."""
        import gmm_core

        self.model = gmm_core.load_model(context.artifacts[GMM_ARTIFACT])
        backend = getattr(self.model, "backend", None)
        if backend not in (None, "numpy"):
            # Serving scores small batches on whatever machine loads it: keep it on the CPU.
            try:
                self.model.set_params(backend="numpy")
            except (AttributeError, ValueError):
                pass

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        """Per-row component, responsibility, log-likelihood (and anomaly p-value and flag).

        See :func:`score_frame`.
        """
        return score_frame(self.model, model_input)


mlflow.models.set_model(GaussianMixturePyfunc())
