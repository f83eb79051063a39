"""Model files: arrays in ``model.npz``, everything else in ``model.json``. Never pickle.

The JSON holds a format version, the estimator's parameters, dtype, covariance type, feature
names, fitted scalars, the anomaly calibration when there is one (threshold and score quantiles,
:mod:`gmm_core.anomaly`), free-form metadata, and SHA-256 checksums of the ``.npz`` file and of
every array in it; :func:`load_model` refuses a file whose bytes or arrays do not match.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .mixture import GaussianMixture

FORMAT = "gmm_core.gaussian_mixture"
FORMAT_VERSION = 2  # 2: the JSON document carries its own checksum
NPZ_NAME = "model.npz"
JSON_NAME = "model.json"
_ARRAYS = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_")


class ModelFileError(ValueError):
    """A model file is missing, truncated, tampered with, or of an unknown format."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _array_digest(array: np.ndarray) -> str:
    return _sha256(np.ascontiguousarray(array).tobytes())


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_model(
    model: GaussianMixture,
    directory: str | os.PathLike[str],
    *,
    feature_names: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a fitted model to ``directory/model.npz`` and ``directory/model.json``.

    Parameters
    ----------
    model : GaussianMixture
        A fitted model.
    directory : path
        Created if missing. Each of the two files is replaced atomically (a reader between the
        two replacements gets :class:`ModelFileError`, the checksums disagreeing, and can read
        again).
    feature_names : sequence of str, optional
        Column names of the features, in order (a list, a NumPy array or a pandas ``Index``).
        Defaults to ``model.feature_names_in_``; a model fitted on a DataFrame keeps its
        column names (other names would make the loaded model refuse those frames).
    metadata : dict, optional
        JSON-serialisable extras (data window, run id, ...); NumPy scalars and arrays are
        stored as numbers and lists.

    Returns
    -------
    Path
        The directory.

    Raises
    ------
    TypeError
        When ``model`` is not a :class:`GaussianMixture` (a ``GaussianMixtureSelect``: save
        its ``best_estimator_``) or ``metadata`` holds a value JSON cannot store.
    ValueError
        When ``feature_names`` are not one string per feature, or rename a DataFrame's columns.
    """
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(model, GaussianMixture):
        hint = (
            "save its best_estimator_ (save_model(selector.best_estimator_, ...))"
            if hasattr(model, "best_estimator_")
            else "fit a gmm_core.GaussianMixture and save that"
        )
        raise TypeError(
            f"save_model takes a fitted gmm_core.GaussianMixture, got {type(model).__name__}; "
            f"{hint}."
        )
    check_is_fitted(model)
    names = _feature_names(model, feature_names)
    extras = _json_metadata(metadata or {})
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {name.rstrip("_"): np.asarray(getattr(model, name)) for name in _ARRAYS}
    import io as _io

    buffer = _io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    npz_bytes = buffer.getvalue()
    params = {key: _json_param(key, value) for key, value in model.get_params().items()}
    document: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dtype": str(arrays["weights"].dtype),
        "covariance_type": model.covariance_type,
        "n_components": int(model.n_components),
        "n_features": int(model.n_features_in_),
        "feature_names": names,
        "fitted_with_feature_names": hasattr(model, "feature_names_in_"),
        "params": params,
        "fitted": {
            "converged": bool(model.converged_),
            "n_iter": int(model.n_iter_),
            "lower_bound": float(model.lower_bound_),
            "lower_bounds": [float(v) for v in getattr(model, "lower_bounds_", [])],
            "backend": getattr(model, "backend_", None),
            "n_steps": int(getattr(model, "n_steps_", 0)),
        },
        "metadata": extras,
        "checksums": {
            "algorithm": "sha256",
            NPZ_NAME: _sha256(npz_bytes),
            "arrays": {name: _array_digest(a) for name, a in arrays.items()},
        },
    }
    calibration = getattr(model, "anomaly_calibration_", None)
    if calibration is not None:
        document["anomaly"] = calibration.to_json()
    document["checksums"][JSON_NAME] = _document_digest(document)
    _write_atomic(directory / NPZ_NAME, npz_bytes)
    _write_atomic(directory / JSON_NAME, json.dumps(document, indent=2, allow_nan=True).encode())
    return directory


def _feature_names(model: GaussianMixture, feature_names: Any) -> list[str] | None:
    """The names to store: one string per feature, the fitted frame's own where it had them."""
    fitted = getattr(model, "feature_names_in_", None)
    if feature_names is None:
        return None if fitted is None else [str(n) for n in fitted]
    given = list(np.asarray(feature_names, dtype=object).ravel())
    if len(given) != model.n_features_in_:
        raise ValueError(
            f"feature_names has {len(given)} names but the model has "
            f"{model.n_features_in_} features; pass one name per feature column."
        )
    bad = [n for n in given if not isinstance(n, str)]
    if bad:
        raise ValueError(
            f"feature_names must be strings, got {bad[0]!r} ({type(bad[0]).__name__}); pass "
            "the column names as text (e.g. [str(c) for c in columns])."
        )
    names = [str(n) for n in given]
    if fitted is not None and names != [str(n) for n in fitted]:
        raise ValueError(
            f"the model was fitted on a DataFrame with columns {list(map(str, fitted))}; "
            f"feature_names={names} would rename them and the loaded model would refuse "
            "those frames. Leave feature_names out, or fit on a frame with these columns."
        )
    return names


def _json_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` as JSON values (NumPy scalars as numbers, arrays as lists), or TypeError."""

    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        raise TypeError(type(value).__name__)

    try:
        return dict(json.loads(json.dumps(metadata, default=plain, allow_nan=True)))
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"metadata must be JSON-serialisable (numbers, strings, lists, dicts); it holds a "
            f"{error}: convert it first (e.g. str(value) or value.isoformat())."
        ) from None


def _json_param(key: str, value: Any) -> Any:
    """A constructor parameter as JSON: NumPy scalars as numbers, arrays as lists.

    A ``RandomState``/``Generator`` ``random_state`` cannot be stored and becomes None.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if key == "random_state":
        return None
    return np.asarray(value).tolist()


def _document_digest(document: dict[str, Any]) -> str:
    """sha256 of the JSON document without its own checksum entry (canonical key order)."""
    body = dict(document)
    body["checksums"] = {k: v for k, v in document.get("checksums", {}).items() if k != JSON_NAME}
    return _sha256(json.dumps(body, sort_keys=True, allow_nan=True).encode())


def load_model(directory: str | os.PathLike[str]) -> GaussianMixture:
    """Read a model written by :func:`save_model`, verifying every checksum.

    The model carries ``feature_names_`` (the saved names, or None) and ``metadata_``;
    ``feature_names_in_`` is set as well when the model was fitted on a DataFrame.

    Raises
    ------
    ModelFileError
        When a file is missing, unreadable, truncated or altered, naming which and what to do.
    """
    directory = Path(directory)
    json_path, npz_path = directory / JSON_NAME, directory / NPZ_NAME
    for path in (json_path, npz_path):
        if not path.is_file():
            raise ModelFileError(
                f"{path} is missing; a model directory needs {JSON_NAME} and {NPZ_NAME} "
                "(written by gmm_core.save_model)."
            )
    try:
        document = json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(
            f"{json_path} is not valid JSON ({exc}); the file is truncated or corrupted. "
            "Restore it from the registry or re-save the model."
        ) from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ModelFileError(f"{json_path} is not a gmm_core model file (format field missing).")
    if document.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{json_path} has format_version {document.get('format_version')!r}; this gmm_core "
            f"reads version {FORMAT_VERSION}. Upgrade emflow or re-save the model."
        )
    checksums = document.get("checksums")
    if not isinstance(checksums, dict) or checksums.get(JSON_NAME) != _document_digest(document):
        raise ModelFileError(
            f"{json_path} does not match its recorded checksum: the file was edited or "
            "corrupted. Restore both files from the same save (or from the registry)."
        )
    npz_bytes = npz_path.read_bytes()
    if _sha256(npz_bytes) != checksums.get(NPZ_NAME):
        raise ModelFileError(
            f"{npz_path} does not match the checksum recorded in {json_path}: the file was "
            "truncated or modified. Restore both files from the same save."
        )
    import io as _io

    try:
        with np.load(_io.BytesIO(npz_bytes), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError, ...
        raise ModelFileError(f"{npz_path} cannot be read as .npz ({exc}).") from exc
    expected = checksums.get("arrays", {})
    if set(arrays) != set(expected) or any(
        _array_digest(arrays[name]) != digest for name, digest in expected.items()
    ):
        raise ModelFileError(f"The arrays in {npz_path} do not match their recorded checksums.")
    try:
        return _model_from(document, arrays)
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(
            f"{json_path} does not describe a valid model ({type(exc).__name__}: {exc}). "
            "Restore both files from the same save (or from the registry)."
        ) from exc


def _model_from(document: dict[str, Any], arrays: dict[str, np.ndarray]) -> GaussianMixture:
    """Build the estimator from a checksum-verified document and its arrays, checking shapes."""
    dtype = np.dtype(document["dtype"])
    if dtype not in (np.float32, np.float64):
        raise ModelFileError(f"model dtype must be float32 or float64, got {dtype}")
    model = GaussianMixture(**document["params"])
    model._validate_params()  # same messages as fit() for an invalid parameter
    k, d = document["n_components"], document["n_features"]
    cov = document["covariance_type"]
    if (k, cov) != (model.n_components, model.covariance_type):
        raise ModelFileError("n_components/covariance_type disagree with the parameters")
    cov_shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[cov]
    shapes = {"weights": (k,), "means": (k, d), "covariances": cov_shape,
              "precisions": cov_shape, "precisions_cholesky": cov_shape}  # fmt: skip
    wrong = [name for name, shape in shapes.items() if arrays[name].shape != shape]
    if wrong:
        raise ModelFileError(
            f"arrays {wrong} have the wrong shape for {k} {cov} components and {d} features."
        )
    names = document.get("feature_names")
    if names is not None and len(names) != d:
        raise ModelFileError(f"{len(names)} feature names for {d} features")
    for name in _ARRAYS:
        setattr(model, name, arrays[name.rstrip("_")].astype(dtype, copy=False))
    fitted = document["fitted"]
    model.converged_ = fitted["converged"]
    model.n_iter_ = fitted["n_iter"]
    as_dtype = np.dtype(dtype).type  # as a fit sets them: scalars of the data's dtype
    model.lower_bound_ = as_dtype(fitted["lower_bound"])
    model.lower_bounds_ = [as_dtype(v) for v in fitted["lower_bounds"]]
    model.backend_ = fitted.get("backend")
    model.n_steps_ = int(fitted.get("n_steps", 0))
    if document.get("anomaly") is not None:
        from .anomaly import AnomalyCalibration

        model.anomaly_calibration_ = AnomalyCalibration.from_json(document["anomaly"])
        model.threshold_ = model.anomaly_calibration_.threshold
        model.false_alarm_rate_ = model.anomaly_calibration_.false_alarm_rate
    model.n_features_in_ = d
    model.feature_names_ = document.get("feature_names")
    if document.get("feature_names") and document.get("fitted_with_feature_names"):
        model.feature_names_in_ = np.asarray(document["feature_names"], dtype=object)
    model.metadata_ = document.get("metadata", {})
    return model
