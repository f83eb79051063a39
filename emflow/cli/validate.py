"""``emflow validate PATH``: check telemetry against the data contract.

Prints the validation summary (which expectations failed and the fix) and exits 0 when the batch
passed, 1 when it was rejected, 2 on a usage error. With ``--run-id`` the batch goes through
:func:`validation.check_batch`: a rejected batch is moved to ``<data root>/quarantine/<run id>/``
with its JSON report beside it. A folder is read file by file under a progress bar.

Examples
--------
``emflow validate .emflow/data/incoming/2026-11-23`` (window taken from the folder name)
``emflow validate batch.parquet --window 2026-11-23T00:00Z/2026-11-24T00:00Z --json report.json``
``emflow validate incoming/2026-11-23 --run-id manual-1 --data-root .emflow/data``
``emflow validate --print-suite`` (the GX suite the contract builds, as JSON)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emflow.cli import output_file_problem

EXIT_PASSED, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``validate`` options to ``parser``."""
    parser.add_argument("path", nargs="?", help="Parquet/CSV file or folder of them")
    parser.add_argument("--contract", help="contract YAML (default: EMFLOW_CONTRACT or built-in)")
    parser.add_argument(
        "--features", help="comma-separated feature columns (default: the contract's)"
    )
    parser.add_argument(
        "--extra-columns",
        choices=("allow", "refuse"),
        help="override the contract's policy for columns it does not name",
    )
    window = parser.add_mutually_exclusive_group()
    window.add_argument(
        "--window",
        metavar="START/END",
        help="timestamps must lie in [START, END) (ISO 8601; naive = UTC); default: the "
        "day named by a YYYY-MM-DD folder in PATH, if any",
    )
    window.add_argument("--no-window", action="store_true", help="do not check timestamps")
    parser.add_argument("--run-id", help="quarantine a rejected batch under this run id")
    parser.add_argument(
        "--data-root", help="root of quarantine/ and validated/ (default: EMFLOW_DATA_ROOT)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the full report (GX JSON) here")
    parser.add_argument(
        "--print-suite", action="store_true", help="print the contract's GX suite as JSON and exit"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``emflow validate``; return the exit status."""
    from validation.batch import validate_batch
    from validation.contract import ContractError, load_contract
    from validation.quarantine import QuarantineConflict, QuarantineIntegrityError
    from validation.window import as_window, window_from_path

    overrides: dict[str, object] = {}
    if args.features:
        overrides["feature_columns"] = [c.strip() for c in args.features.split(",") if c.strip()]
    if args.extra_columns:
        overrides["extra_columns"] = args.extra_columns
    try:
        contract = load_contract(args.contract, **overrides)
    except ContractError as exc:
        print(f"emflow validate: {exc}", file=sys.stderr)
        return EXIT_USAGE

    if args.print_suite:
        from validation.expectations import build_content_suite

        suite = build_content_suite(contract, windowed=True)
        print(json.dumps(suite.to_json_dict(), indent=2, default=str))
        return EXIT_PASSED
    if not args.path:
        print("emflow validate: give a PATH to validate (or --print-suite)", file=sys.stderr)
        return EXIT_USAGE
    path = Path(args.path)
    if args.json and (problem := output_file_problem("--json", Path(args.json))):
        print(f"emflow validate: {problem}", file=sys.stderr)
        return EXIT_USAGE
    data_root: Path | None = None
    if args.run_id:
        from emflow.config import Settings

        data_root = Path(args.data_root) if args.data_root else Settings().data_root
        # quarantine/ and validated/ are made under it: a file there (or above) is a usage error
        existing = next(p for p in (data_root, *data_root.parents) if p.exists())
        if not existing.is_dir():
            source = "--data-root" if args.data_root else "EMFLOW_DATA_ROOT"
            print(
                f"emflow validate: {source} {data_root}: {existing} is a file; pass the folder "
                "that holds incoming/, quarantine/ and validated/",
                file=sys.stderr,
            )
            return EXIT_USAGE
    try:
        if args.no_window:
            window = None
        elif args.window:
            start, sep, end = args.window.partition("/")
            if not sep:
                raise ValueError(f"--window wants START/END, got {args.window!r}")
            window = as_window((start, end))
        else:
            window = window_from_path(path)
    except ValueError as exc:
        print(f"emflow validate: {exc}", file=sys.stderr)
        return EXIT_USAGE

    try:
        if data_root is not None:
            from validation.quarantine import check_batch

            result = check_batch(
                path,
                run_id=args.run_id,
                data_root=data_root,
                contract=contract,
                window=window,
                progress=path.is_dir(),
            )
        else:
            result = validate_batch(path, contract, window=window, progress=path.is_dir())
    except FileNotFoundError as exc:
        print(f"emflow validate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (QuarantineConflict, QuarantineIntegrityError) as exc:  # nothing was moved or lost
        print(f"emflow validate: {exc}", file=sys.stderr)
        return EXIT_USAGE

    print(result.summary)
    if result.quarantined_to:
        print(f"quarantined to {result.quarantined_to} (report: {result.report_path})")
    elif result.report_path:
        print(f"report: {result.report_path}")
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(result.to_json_dict(), indent=2) + "\n")
        except OSError as exc:
            print(f"emflow validate: could not write --json {args.json}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    return EXIT_PASSED if result.success else EXIT_REJECTED
