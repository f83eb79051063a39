"""Telemetry rows as a model sees them: one reader for every file the pipeline handles.

Files are read by :mod:`validation.reader` (the validator's own reader: Parquet
``.parquet``/``.pq`` and CSV in any letter case, a folder file by file), so a batch that passed
validation is read the same way by split, evaluate and publish.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def read_telemetry(paths: Iterable[str | Path], columns: Sequence[str] | None = None) -> Any:
    """Concatenate telemetry files or folders into one DataFrame, in the given order.

    Parameters
    ----------
    paths : iterable of path
        Parquet/CSV files, or folders of them.
    columns : sequence of str, optional
        Keep only these columns (in this order).

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    ValueError
        A file cannot be read (the message names it), or there are no rows at all.
    """
    import pandas as pd

    from validation.reader import list_batch_files, printable, read_file

    frames = []
    for path in paths:
        for file in list_batch_files(path):
            try:
                frame = read_file(file)
            except ValueError as error:  # the parser quotes binary bytes: never echo them raw
                raise ValueError(
                    f"cannot read {file}: {printable(f'{type(error).__name__}: {error}')}"
                ) from None
            frames.append(frame if columns is None else frame[list(columns)])
    if not frames:
        raise ValueError(f"no telemetry files under {[str(p) for p in paths]}")
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def as_frame(rows: Any) -> Any:
    """A DataFrame from a DataFrame, an array, a ``.npy`` file, or telemetry files/folders."""
    import pandas as pd

    if isinstance(rows, pd.DataFrame):
        return rows
    if isinstance(rows, np.ndarray):
        return pd.DataFrame(np.atleast_2d(rows))
    path = Path(rows)
    if not path.exists():
        raise FileNotFoundError(f"rows file {path} does not exist: pass a Parquet/CSV/.npy path")
    if path.suffix == ".npy":
        return pd.DataFrame(np.atleast_2d(np.load(path, allow_pickle=False)))
    try:
        return read_telemetry([path])
    except ValueError as error:
        raise ValueError(
            f"cannot read rows from {path}: use Parquet, CSV or .npy ({error})"
        ) from error


def feature_matrix(model: Any, frame: Any) -> np.ndarray:
    """The model's feature columns of ``frame`` as float64, shape (n_samples, n_features)."""
    from emflow.model.pyfunc_model import feature_matrix as model_features

    return np.asarray(model_features(model, frame), dtype=np.float64)


def feature_names(model: Any) -> list[str]:
    """The model's feature names; ``x0, x1, ...`` when it was saved without them."""
    from emflow.model.pyfunc_model import model_feature_names

    names = model_feature_names(model)
    return names if names is not None else [f"x{i}" for i in range(int(model.n_features_in_))]


def load_model_dir(model_dir: str | Path) -> Any:
    """The gmm_core model saved in ``model_dir`` (checksums verified)."""
    import gmm_core

    path = Path(model_dir)
    if not path.is_dir():
        raise FileNotFoundError(
            f"model directory {path} does not exist: pass the folder the train task wrote "
            "(with model.npz and model.json)"
        )
    return gmm_core.load_model(path)
