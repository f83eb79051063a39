"""``emflow status``: registered versions of the model family, their aliases and decisions."""

from __future__ import annotations

import argparse
import json
import sys

from emflow.cli import int_in_range


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``emflow status``."""
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the status as JSON (versions_total: how many versions there are in all)",
    )
    parser.add_argument(
        "--limit",
        type=int_in_range(0),
        default=20,
        help="show at most this many versions, newest first, also with --json (default 20)",
    )


def limit_versions(report: dict, limit: int) -> dict:
    """``report`` with its newest ``limit`` versions and ``versions_total``, the count in all."""
    versions = report.get("versions") or []
    return {**report, "versions": versions[:limit], "versions_total": len(versions)}


def format_status(report: dict, limit: int = 20) -> str:
    """Human-readable table of :func:`emflow.registry.status.status` output."""
    lines = [f"model {report['model_name']} at {report['tracking_uri']}"]
    aliases = report.get("aliases") or {}
    if not report.get("versions"):
        lines.append("no versions registered yet (run a retrain: `emflow demo` or the DAG)")
        return "\n".join(lines)
    lines.append("aliases: " + ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items())))
    lines.append(f"{'version':>7}  {'aliases':<30} {'decision':<8} {'data window':<24} reason")
    for v in report["versions"][:limit]:
        reason = v["reason"] if len(v["reason"]) <= 90 else v["reason"][:87] + "..."
        lines.append(
            f"{'v' + v['version']:>7}  {','.join(v['aliases']) or '-':<30} "
            f"{v['decision'] or '-':<8} {v['data_window'] or '-':<24} {reason}"
        )
        if v.get("rollback_by"):
            lines.append(
                f"{'':>9}rolled back to by {v['rollback_by']} at {v['rollback_at']}: "
                f"{v['rollback_reason']}"
            )
    hidden = len(report["versions"]) - len(report["versions"][:limit])
    if hidden > 0:
        lines.append(f"... {hidden} older version(s) (use --limit)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the registry status; 0 on success, 1 when the tracking store is unreachable."""
    from emflow.config import Settings
    from emflow.registry.status import status
    from emflow.registry.tracking import TrackingUnavailableError

    try:
        report = status(Settings())
    except TrackingUnavailableError as error:
        print(f"emflow status: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(limit_versions(report, args.limit), indent=2))
    else:
        print(format_status(report, args.limit))
    return 0
