"""``emflow rollback [--version N] --reason TEXT``: point ``champion`` back at a prior version."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``emflow rollback``."""
    parser.add_argument(
        "--version", default=None, help="registry version to serve (default: the previous champion)"
    )
    parser.add_argument(
        "--reason", required=True, type=_reason, help="why: recorded on the version (3-500 chars)"
    )
    parser.add_argument("--actor", default=None, help="who (default: user@host)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--force", action="store_true", help="serve the version even though the gate rejected it"
    )


def _reason(text: str) -> str:
    """An argparse ``type``: the reason, as long as the rollback DAG's form asks."""
    from emflow.config import ROLLBACK_REASON_LENGTH

    shortest, longest = ROLLBACK_REASON_LENGTH
    if not shortest <= len(text.strip()) <= longest:
        raise argparse.ArgumentTypeError(
            f"expected {shortest} to {longest} characters, got {len(text.strip())}"
        )
    return text


def run(args: argparse.Namespace) -> int:
    """Roll back; 0 on success, 2 when refused (unknown version, failed check), 1 otherwise."""
    from emflow.config import Settings
    from emflow.registry.rollback import RollbackCheckError, UnknownVersionError, rollback
    from emflow.registry.tracking import TrackingUnavailableError

    settings = Settings()
    try:
        result = rollback(
            args.version,
            reason=args.reason,
            actor=args.actor,
            settings=settings,
            force=args.force,
        )
    except (UnknownVersionError, RollbackCheckError, ValueError) as error:
        print(f"emflow rollback refused: {error}", file=sys.stderr)
        return 2
    except (TrackingUnavailableError, RuntimeError) as error:
        print(f"emflow rollback failed: {error}", file=sys.stderr)
        return 1
    from emflow.run.rollback import publish_rollback

    publish_rollback(result, settings)  # the dashboards show the serving version
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    elif not result["changed"]:
        print(f"v{result['version']} is already the champion; nothing changed")
    else:
        print(
            f"champion: v{result['previous']} -> v{result['version']} "
            f"(checked: scored {result['check']['rows']} rows; by {result['actor']} "
            f"at {result['at']}: {result['reason']})"
        )
    return 0
