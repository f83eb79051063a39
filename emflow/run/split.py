"""Split step: a deterministic train/holdout split of the validated window."""

from __future__ import annotations

import logging

from emflow.config import Settings
from emflow.run.params import is_auto
from emflow.run.request import run_dir, settings_for
from emflow.run.state import RunRequest, Split, Validated

log = logging.getLogger(__name__)


def split_window(
    request: RunRequest, validated: Validated, settings: Settings | None = None
) -> Split:
    """Split the validated window into train and holdout rows, seeded by the ``seed`` param.

    Writes ``train.parquet`` and ``holdout.parquet`` (feature columns only, float64) under
    ``<data_root>/validated/<run key>/split/``; the same request gives the same files.

    Raises
    ------
    ValueError
        The window has too few rows for the holdout fraction and the number of components.
    """
    import numpy as np

    from emflow.model.telemetry import read_telemetry

    settings = settings_for(request, settings)
    features = list(validated.feature_columns)
    frame = read_telemetry(validated.files, columns=features).astype("float64")
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
    frame.iloc[np.sort(order[n_holdout:])].to_parquet(train_path, index=False)
    frame.iloc[np.sort(order[:n_holdout])].to_parquet(holdout_path, index=False)
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
    )
