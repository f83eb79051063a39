"""``emflow score FILE``: score telemetry with the champion (or a given registry version).

Writes one CSV row per input row, as ``models:/<name>@champion`` would serve them
(:mod:`emflow.model.pyfunc_model`): see :data:`COLUMNS`. The model comes from emflow's local
copy of the registry version, so scoring needs neither a GPU nor a model server.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from emflow.cli import output_file_problem

if TYPE_CHECKING:
    import numpy as np

#: What ``emflow score --help`` says about the output.
COLUMNS = """\
output: one CSV row per input row, with the columns
  event_id        the input's, when it has one
  component       most responsible component; -1 for a row far outside every component
  responsibility  that component's posterior probability (0 for those rows)
  log_likelihood  the anomaly score: lower is more anomalous (-inf for those rows)
  p_value         estimated probability that a normal row scores at least as anomalous
                  (a model with an anomaly calibration)
  is_anomaly      -log_likelihood above the calibrated threshold (the same models)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``emflow score``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = COLUMNS
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

    if args.out and (problem := output_file_problem("--out", args.out)):
        return fail(problem)  # before scoring every row, not after
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
    if args.out:
        try:
            scored.to_csv(args.out, index=False)
        except OSError as error:  # the folder changed while scoring
            return fail(f"could not write --out {args.out}: {error}")
    else:
        scored.to_csv(sys.stdout, index=False)
    loglik = scored["log_likelihood"].to_numpy(dtype=np.float64)
    print(
        f"scored {len(scored)} rows with {settings.model_name} v{version}: "
        + loglik_summary(loglik)
        + (f" -> {args.out}" if args.out else ""),
        file=sys.stderr,
    )
    return 0


def loglik_summary(loglik: np.ndarray) -> str:
    """Mean and lowest log-likelihood of the finite rows, and how many rows are -inf."""
    import numpy as np

    def nats(value: float) -> str:
        return f"{value:.4f}" if abs(value) < 1e9 else f"{value:.4e}"

    finite = loglik[np.isfinite(loglik)]
    parts = []
    if len(finite):
        parts.append(f"mean log-likelihood {nats(finite.mean())}, lowest {nats(finite.min())}")
    if n_far := len(loglik) - len(finite):
        parts.append(
            f"{n_far} row(s) far outside the model (log-likelihood -inf, component -1)"
            + (" not in the mean" if len(finite) else "")
        )
    return "; ".join(parts)
