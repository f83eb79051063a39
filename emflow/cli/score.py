"""``emflow score FILE``: score telemetry with the champion (or a given registry version).

Writes one CSV row per input row: the input's ``event_id`` when it has one, then ``component``,
``responsibility`` and ``log_likelihood`` (the anomaly score: lower is more anomalous), as
``models:/<name>@champion`` would serve them. The model comes from emflow's local copy of the
registry version, so scoring needs neither a GPU nor a model server.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``emflow score``."""
    parser.add_argument("path", type=Path, help="Parquet/CSV file or folder of telemetry rows")
    parser.add_argument("--version", help="registry version to score with (default: champion)")
    parser.add_argument("--out", type=Path, help="write the CSV here (default: stdout)")


def run(args: argparse.Namespace) -> int:
    """Score; 0 on success, 2 for bad input or no model, 1 when the registry is unreachable."""
    import numpy as np

    from emflow.config import Settings
    from emflow.model.pyfunc_model import score_frame
    from emflow.model.telemetry import as_frame, load_model_dir
    from emflow.registry.champion import load_champion, version_model_dir
    from emflow.registry.tracking import (
        TrackingUnavailableError,
        connect,
        missing_sqlite_store,
    )

    def fail(message: str, status: int = 2) -> int:
        print(f"emflow score: {message}", file=sys.stderr)
        return status

    settings = Settings()
    try:  # the rows first: a bad file is refused without opening (or creating) a registry
        frame = as_frame(args.path)
    except (FileNotFoundError, ValueError) as error:
        return fail(str(error))
    if (missing := missing_sqlite_store(settings.tracking_uri)) is not None:
        return fail(
            f"no registry at {missing} (MLflow store {settings.tracking_uri}): nothing to score "
            "with; run a retrain, or check EMFLOW_HOME / MLFLOW_TRACKING_URI"
        )
    version: str | None
    model_dir: Path | None
    try:
        if args.version:
            from emflow.registry.aliases import get_version

            client = connect(settings)
            if get_version(client, settings.model_name, args.version) is None:
                return fail(
                    f"version {args.version!r} of {settings.model_name} does not exist "
                    "(`emflow status` lists them)"
                )
            version, model_dir = (
                str(args.version),
                version_model_dir(client, settings, str(args.version)),
            )
        else:
            version, model_dir = load_champion(settings)
            if model_dir is None:
                return fail(
                    f"{settings.model_name} has no champion yet at "
                    f"{settings.tracking_uri}; run a retrain, or pass --version N"
                )
    except TrackingUnavailableError as error:
        return fail(str(error), 1)
    try:
        scored = score_frame(load_model_dir(model_dir), frame)
    except (FileNotFoundError, ValueError) as error:
        return fail(str(error))
    if "event_id" in frame.columns:
        scored.insert(0, "event_id", frame["event_id"].to_numpy())
    scored.to_csv(args.out if args.out else sys.stdout, index=False)
    loglik = scored["log_likelihood"].to_numpy(dtype=np.float64)
    print(
        f"scored {len(scored)} rows with {settings.model_name} v{version}: mean "
        f"log-likelihood {loglik.mean():.4f}, lowest {loglik.min():.4f}"
        + (f" -> {args.out}" if args.out else ""),
        file=sys.stderr,
    )
    return 0
