"""``emflow telemetry generate``: synthetic telemetry windows for a real Airflow set-up.

Writes ``<EMFLOW_DATA_ROOT>/incoming/<YYYY-MM-DD>/telemetry.parquet`` for each day asked for
(``--day`` and ``--days``; default: yesterday, the window of the run Airflow starts when the
DAG is unpaused), so a scheduled run, a backfill or a manual trigger finds data to train on.
A day that already holds the same bytes is left alone; different bytes are never overwritten.
"""

from __future__ import annotations

import argparse
import math
import sys
from datetime import UTC, date, datetime, timedelta

from emflow.cli import int_in_range


def _finite(text: str) -> float:
    """An argparse ``type``: a finite number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``emflow telemetry``."""
    sub = parser.add_subparsers(dest="telemetry_command", required=True, metavar="ACTION")
    gen = sub.add_parser("generate", help="write synthetic telemetry windows under incoming/")
    gen.add_argument(
        "--day",
        type=date.fromisoformat,
        default=None,
        help="first day YYYY-MM-DD (default: yesterday, UTC)",
    )
    gen.add_argument(
        "--days", type=int_in_range(1), default=1, help="number of consecutive days (default 1)"
    )
    gen.add_argument(
        "--rows",
        type=int_in_range(1),
        default=20_000,
        help="rows per day (default 20000; the data contract's min_rows/max_rows apply to a day)",
    )
    gen.add_argument("--seed", type=int, default=0, help="seed of the first day (default 0)")
    gen.add_argument(
        "--shift",
        type=_finite,
        default=0.0,
        help="shift every feature by this many standard deviations (drift)",
    )


def run(args: argparse.Namespace) -> int:
    """Write the windows; 0 on success, 2 when a day already holds other telemetry."""
    from emflow.config import Settings
    from validation.synthetic import make_telemetry, write_window

    # still written: a day the contract rejects is what a quarantine test needs
    if (problem := _contract_problem(args.rows)) is not None:
        print(f"emflow telemetry: warning: {problem}", file=sys.stderr)
    first = args.day or (datetime.now(UTC).date() - timedelta(days=1))
    data_root = Settings().data_root
    for i in range(args.days):
        day = first + timedelta(days=i)
        frame = make_telemetry(
            args.rows,
            day.isoformat(),
            (day + timedelta(days=1)).isoformat(),
            seed=args.seed + i,
            shift=args.shift,
        )
        try:
            path = write_window(frame, data_root, day)
        except FileExistsError as error:
            print(f"emflow telemetry: {error}", file=sys.stderr)
            return 2
        print(f"{day}: {len(frame)} rows -> {path}")
    return 0


def _contract_problem(rows: int) -> str | None:
    """Why the data contract will reject days of ``rows`` rows (None: it takes them)."""
    from validation.contract import ContractError, load_contract

    try:
        contract = load_contract()
    except ContractError as error:
        return f"cannot check --rows against the data contract: {error}"
    if rows < contract.min_rows:
        return (
            f"--rows {rows} is below the data contract's min_rows ({contract.min_rows}): "
            f"validation will reject these days; pass --rows {contract.min_rows} or more"
        )
    if contract.max_rows is not None and rows > contract.max_rows:
        return (
            f"--rows {rows} is above the data contract's max_rows ({contract.max_rows}): "
            f"validation will reject these days; pass --rows {contract.max_rows} or fewer"
        )
    return None
