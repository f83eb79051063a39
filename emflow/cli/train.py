"""``emflow train``: fit a GaussianMixture on a telemetry file or folder and save the model."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from emflow.config import Settings
from emflow.run.params import add_cli_options

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``emflow train``."""
    parser.add_argument("path", type=Path, help="Parquet/CSV file, or a folder of them")
    parser.add_argument("--out", type=Path, help="model directory (default: under EMFLOW_HOME)")
    parser.add_argument("--features", help="comma-separated feature columns (default: contract)")
    # the DAG's parameters (emflow.run.params); this command has always fitted K=8, 200 iterations
    add_cli_options(parser, n_components=8, max_iter=200)


def train_frame(
    frame,
    features,
    *,
    n_components,
    covariance_type,
    n_init,
    max_iter,
    seed,
    backend,
    progress=None,
):
    """Fit on ``frame[features]`` (float32) and return the fitted model."""
    import numpy as np

    from gmm_core import GaussianMixture, em_progress

    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise ValueError(
            f"feature columns {missing} are not in the data (columns: {list(frame.columns)}); "
            "pass --features with existing columns or fix the batch."
        )
    X = frame[list(features)].to_numpy(dtype=np.float32)
    model = GaussianMixture(
        n_components,
        covariance_type=covariance_type,
        n_init=n_init,
        max_iter=max_iter,
        random_state=seed,
        backend=backend,
    )
    if progress is None:
        return model.fit(X)
    with em_progress(progress):
        return model.fit(X)


def summary_lines(model, X_score, features) -> list[str]:
    """A short human summary: components, weights, log-likelihood, time, backend."""
    lines = [
        f"backend        {model.backend_}",
        f"components     {model.n_components} ({model.covariance_type} covariance), "
        f"{len(features)} features",
        f"restarts       {len(model.restart_lower_bounds_)}: final lower bounds "
        + ", ".join(f"{b[-1]:.4f}" for b in model.restart_lower_bounds_),
        f"converged      {model.converged_} after {model.n_iter_} iterations",
        f"log-likelihood {model.score(X_score):.4f} per sample (mean)",
        f"fit time       {model.fit_seconds_:.2f} s",
        "weights        " + " ".join(f"{w:.3f}" for w in model.weights_),
    ]
    peak = getattr(model, "device_peak_bytes_", None)
    if peak is not None:
        lines.append(f"device peak    {int(peak)} bytes ({int(peak) / 2**20:.1f} MiB)")
    return lines


def run(args: argparse.Namespace) -> int:
    """Run ``emflow train``."""
    from tqdm import tqdm

    from emflow.model.fit_report import log_fit, log_phase
    from gmm_core import save_model
    from validation.contract import load_contract
    from validation.reader import list_batch_files, read_batch

    def fail(message: str) -> int:
        print(f"emflow train: {message}", file=sys.stderr)
        return 2

    if not logging.getLogger().handlers:  # where the time went, one line per phase, on stderr
        logging.basicConfig(level=logging.INFO, format="emflow train: %(message)s")
    started = time.perf_counter()
    try:
        frame, _ = read_batch(list_batch_files(args.path))
    except (FileNotFoundError, ValueError) as exc:
        return fail(str(exc))
    log_phase(log, "read", time.perf_counter() - started)
    if frame is None or frame.empty:
        return fail(f"no readable rows under {args.path}; run `emflow validate` on it.")
    features = args.features.split(",") if args.features else list(load_contract().feature_columns)
    bar = tqdm(total=args.max_iter, desc="EM", unit="it")

    def progress(it: int, max_iter: int, n_active: int) -> None:
        bar.update(1)
        bar.set_postfix(active_restarts=n_active)

    try:
        model = train_frame(
            frame,
            features,
            n_components=args.n_components,
            covariance_type=args.covariance_type,
            n_init=args.n_init,
            max_iter=args.max_iter,
            seed=args.seed,
            backend=args.backend,
            progress=progress,
        )
    except (ValueError, RuntimeError) as exc:  # bad values, too few rows, no GPU for 'cupy'
        bar.close()
        return fail(f"{exc}\n(check the data with `emflow validate {args.path}`)")
    bar.close()
    log_fit(log, model)
    started = time.perf_counter()
    out = args.out or Settings().home / "models" / "manual"
    save_model(model, out, feature_names=features, metadata={"source": str(args.path)})
    log_phase(log, "save", time.perf_counter() - started)
    X = frame[features].to_numpy(dtype="float32")
    print("\n".join(summary_lines(model, X, features)))
    print(f"model          {out}")
    print(json.dumps({"model_dir": str(out)}))
    return 0
