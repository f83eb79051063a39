"""Split step: a deterministic train/holdout split of the validated window."""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path
from typing import Any

from emflow.config import Settings
from emflow.run.params import is_auto
from emflow.run.request import day_of, run_dir, settings_for
from emflow.run.state import RunRequest, Split, Validated

log = logging.getLogger(__name__)


def split_window(
    request: RunRequest, validated: Validated, settings: Settings | None = None
) -> Split:
    """Split the validated window into train and holdout rows, seeded by the ``seed`` param.

    Writes ``train.parquet`` and ``holdout.parquet`` (feature columns only, float64) under
    ``<data_root>/validated/<run key>/split/``, and ``train_age_days.npy`` beside them: the age
    of each train row's day (int32, 0 for the window's last day), kept out of the features for
    time-decayed weights and the ``update`` mode. The same request gives the same files.

    Raises
    ------
    ValueError
        The window has too few rows for the holdout fraction and the number of components.
    """
    import numpy as np
    import pandas as pd

    from emflow.model.telemetry import read_telemetry

    settings = settings_for(request, settings)
    features = list(validated.feature_columns)
    frames = [read_telemetry([file], columns=features) for file in validated.files]
    frame = pd.concat(frames, ignore_index=True).astype("float64")
    ages = _row_ages(request, validated.files, [len(f) for f in frames], settings)
    n_samples = len(frame)
    n_holdout = int(round(n_samples * float(request.holdout_fraction)))
    # with n_components="auto" the smallest K must fit; larger ones fail alone in the sweep
    auto = is_auto(request.n_components)
    needed = int(request.k_min if auto else request.n_components)
    if n_holdout < 1 or n_samples - n_holdout < needed:
        raise ValueError(
            f"window has {n_samples} rows: too few for a holdout fraction of "
            f"{request.holdout_fraction} and "
            f"{f'k_min={needed}' if auto else f'n_components={needed}'}; "
            "use a longer window or fewer components"
        )
    order = np.random.default_rng(int(request.seed)).permutation(n_samples)
    out = run_dir(settings, "validated", request.run_key) / "split"
    out.mkdir(exist_ok=True)
    train_path, holdout_path = out / "train.parquet", out / "holdout.parquet"
    train_rows = np.sort(order[n_holdout:])
    frame.iloc[train_rows].to_parquet(train_path, index=False)
    frame.iloc[np.sort(order[:n_holdout])].to_parquet(holdout_path, index=False)
    ages_path = out / "train_age_days.npy"
    np.save(ages_path, ages[train_rows], allow_pickle=False)
    log.info(
        "split %d rows: %d train, %d holdout (seed %d) -> %s",
        n_samples,
        n_samples - n_holdout,
        n_holdout,
        request.seed,
        out,
    )
    return Split(
        train_path=str(train_path),
        holdout_path=str(holdout_path),
        n_train=n_samples - n_holdout,
        n_holdout=n_holdout,
        feature_columns=features,
        train_age_days_path=str(ages_path),
    )


def _row_ages(request: RunRequest, files: list[str], n_rows: list[int], settings: Settings) -> Any:
    """Age in days of each row's day (its ``incoming/<day>/`` folder), shape (n_samples,), int32.

    Age 0 is the window's last day. A file outside a day folder gets age 0; a run that weighs
    rows by age or updates on the newest day refuses it instead (it cannot tell the row's day).
    """
    import numpy as np

    last = date.fromisoformat(request.days[-1]) if request.days else None
    needs_days = request.sample_weight_half_life_days is not None or request.mode == "update"
    ages = []
    for file, count in zip(files, n_rows, strict=True):
        day = day_of(Path(file), settings)
        try:
            age = 0 if last is None else (last - date.fromisoformat(day)).days
        except ValueError:
            if needs_days:
                raise ValueError(
                    f"cannot tell the day of {file} (its folder {day!r} is not YYYY-MM-DD): "
                    "sample_weight_half_life_days and mode=update need the rows of each day under "
                    "<data_root>/incoming/<YYYY-MM-DD>/"
                ) from None
            age = 0
        ages.append(np.full(count, age, dtype=np.int32))
    return np.concatenate(ages)
