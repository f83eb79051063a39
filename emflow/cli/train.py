"""``emflow train``: fit a GaussianMixture on a telemetry file or folder and save the model."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

from emflow.config import Settings
from emflow.run.params import PARAMS, ParamSpec, add_cli_options, check_params, is_auto

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``emflow train``."""
    parser.add_argument("path", type=Path, help="Parquet/CSV file, or a folder of them")
    parser.add_argument(
        "--out",
        type=Path,
        help="model directory (default: EMFLOW_HOME/models/manual-<UTC time>, a new one per run)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace the model an existing --out folder holds"
    )
    parser.add_argument("--features", help="comma-separated feature columns (default: contract)")
    # the DAG's parameters, with the DAG's defaults (emflow.run.params)
    add_cli_options(parser)


def parameter_problem(args: argparse.Namespace) -> str | None:
    """Why the retrain DAG would refuse these parameters (None: it takes them).

    The DAG's own rules, from its one table (:data:`emflow.run.params.PARAMS`: the bounds its
    trigger form enforces) and :func:`emflow.run.params.check_params` (the rules across
    parameters), worded with the options' names; checked before any data are read.
    """
    cli = [spec for spec in PARAMS if spec.cli]
    values = {spec.name: getattr(args, spec.name) for spec in cli}
    for spec in cli:
        value = values[spec.name]
        if spec.kind not in ("integer", "number") or (spec.auto and is_auto(value)):
            continue
        if (spec.minimum is not None and value < spec.minimum) or (
            spec.maximum is not None and value > spec.maximum
        ):
            return f"argument {_option(spec.name)}: expected {_valid_range(spec)}, got {value}"
    try:
        check_params(values)
    except ValueError as error:  # e.g. k_min above k_max: name the options, not the keys
        names = "|".join(re.escape(spec.name) for spec in cli)
        return re.sub(rf"\b({names})\b", lambda m: _option(m.group(1)), str(error))
    return None


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _valid_range(spec: ParamSpec) -> str:
    """``spec``'s valid values in words: "an integer from 1 to 10000", ..."""
    as_text = (lambda x: str(int(x))) if spec.kind == "integer" else (lambda x: f"{x:g}")
    words = "an integer" if spec.kind == "integer" else "a number"
    if spec.minimum is not None and spec.maximum is not None:
        words += f" from {as_text(spec.minimum)} to {as_text(spec.maximum)}"
    elif spec.minimum is not None:
        words += f" >= {as_text(spec.minimum)}"
    elif spec.maximum is not None:
        words += f" <= {as_text(spec.maximum)}"
    return words + (' or "auto"' if spec.auto else "")


def feature_problem(frame, features, reserved=()) -> str | None:
    """Why ``features`` of ``frame`` cannot be trained on (None: they can).

    Missing, not numeric (numbers stored as text would be parsed silently; the contract wants
    floats), or ``reserved`` (the contract's id and timestamp columns: not measurements).
    """
    import pandas as pd

    named = [c for c in features if c in reserved]
    if named:
        return (
            f"feature columns {named} are the data contract's id/timestamp columns, not "
            "measurements; pass --features with measurement columns."
        )
    missing = [c for c in features if c not in frame.columns]
    if missing:
        return (
            f"feature columns {missing} are not in the data (columns: {list(frame.columns)}); "
            "pass --features with existing columns or fix the batch."
        )
    not_numeric = {
        c: str(frame[c].dtype) for c in features if not pd.api.types.is_numeric_dtype(frame[c])
    }
    if not_numeric:
        return (
            f"feature columns are not numeric: {not_numeric}; store them as numbers "
            "or pass --features with numeric columns."
        )
    return None


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
    k_min=1,
    k_max=16,
    criterion="bic",
):
    """Fit on ``frame[features]`` and return the fitted model.

    ``n_components="auto"``: the model ``criterion`` chooses among K = ``k_min..k_max``
    (:func:`emflow.model.selection.select_model`; no per-iteration progress then).

    float32, or float64 where float32 squares would overflow (values near 1e19); a fit that
    still ends with non-finite parameters raises ValueError instead of returning them.
    """
    import numpy as np

    from emflow.model.sanity import check_fitted, fit_dtype
    from gmm_core import GaussianMixture, em_progress

    problem = feature_problem(frame, features)
    if problem is not None:
        raise ValueError(problem)
    X = frame[list(features)].to_numpy(dtype=np.float64)
    dtype = fit_dtype(X)
    if dtype is np.float64:
        log.info(
            "features reach %.3g: fitting in float64 (float32 squares would overflow)",
            float(np.max(np.abs(X))),
        )
    X = X.astype(dtype, copy=False)
    if is_auto(n_components):
        from emflow.model.selection import select_model

        model = select_model(
            X,
            k_min=k_min,
            k_max=k_max,
            covariance_type=covariance_type,
            criterion=criterion,
            n_init=n_init,
            max_iter=max_iter,
            seed=seed,
            backend=backend,
        ).best_estimator_
        check_fitted(model)
        return model
    model = GaussianMixture(
        n_components,
        covariance_type=covariance_type,
        n_init=n_init,
        max_iter=max_iter,
        random_state=seed,
        backend=backend,
    )
    if progress is None:
        model.fit(X)
    else:
        with em_progress(progress):
            model.fit(X)
    check_fitted(model)
    return model


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


def output_problem(out: Path, force: bool = False) -> str | None:
    """Why the model cannot be saved to ``out`` (None: it can); checked before the fit."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file; pass a folder for the model (model.npz + model.json)"
    if (out / "model.json").exists() and not force:
        return f"--out {out} holds a model already; pass another folder, or --force to replace it"
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write under {existing} (for --out {out}); pass a folder you can write"
    return None


def run(args: argparse.Namespace) -> int:
    """Run ``emflow train``."""
    from datetime import UTC, datetime

    from tqdm import tqdm

    from emflow.model.fit_report import log_fit, log_phase
    from gmm_core import save_model
    from validation.contract import ContractError, load_contract
    from validation.reader import list_batch_files, read_batch

    def fail(message: str) -> int:
        print(f"emflow train: {message}", file=sys.stderr)
        return 2

    problem = parameter_problem(args)
    if problem is not None:  # before reading data or writing anything, as argparse would
        return fail(f"error: {problem}")
    if not logging.getLogger().handlers:  # where the time went, one line per phase, on stderr
        logging.basicConfig(level=logging.INFO, format="emflow train: %(message)s")
    out = args.out or (Settings().home / "models" / f"manual-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}")
    problem = output_problem(out, args.force)
    if problem is not None:  # before the fit, not after it
        return fail(problem)
    try:
        contract = load_contract()
    except ContractError as exc:
        return fail(str(exc))
    started = time.perf_counter()
    try:
        frame, _ = read_batch(list_batch_files(args.path))
    except (FileNotFoundError, ValueError) as exc:
        return fail(str(exc))
    log_phase(log, "read", time.perf_counter() - started)
    if frame is None or frame.empty:
        return fail(f"no readable rows under {args.path}; run `emflow validate` on it.")
    features = args.features.split(",") if args.features else list(contract.feature_columns)
    reserved = (contract.id_column, contract.timestamp_column)
    if (problem := feature_problem(frame, features, reserved)) is not None:
        # a data error, before the progress bar starts
        return fail(f"{problem}\n(check the data with `emflow validate {args.path}`)")
    if len(frame) < contract.min_rows:
        print(
            f"emflow train: warning: {len(frame)} rows, fewer than the data contract's min_rows "
            f"({contract.min_rows}): the retrain DAG would reject this batch",
            file=sys.stderr,
        )
    # on a terminal only (disable=None); a selection (n_components auto) reports no iterations
    bar = tqdm(
        total=args.max_iter,
        desc="EM",
        unit="it",
        disable=True if is_auto(args.n_components) else None,
    )

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
            k_min=args.k_min,
            k_max=args.k_max,
            criterion=args.criterion,
        )
    except ValueError as exc:  # bad values, too few rows: the data are the problem
        bar.close()
        return fail(f"{exc}\n(check the data with `emflow validate {args.path}`)")
    except RuntimeError as exc:  # no GPU for 'cupy', a device failure: its message names the fix
        bar.close()
        return fail(str(exc))
    bar.close()
    log_fit(log, model)
    started = time.perf_counter()
    try:
        save_model(model, out, feature_names=features, metadata={"source": str(args.path)})
    except OSError as exc:  # the folder changed during the fit
        return fail(f"could not save the model to {out}: {exc}")
    log_phase(log, "save", time.perf_counter() - started)
    X = frame[features].to_numpy(dtype=model.means_.dtype)
    print("\n".join(summary_lines(model, X, features)))
    print(f"model          {out}")
    print(json.dumps({"model_dir": str(out)}))
    return 0
