"""The ``emflow`` command line: what an operator does by hand.

Each subcommand is one module of this package exposing two functions, ``add_arguments(parser)``
and ``run(args) -> int``; this module only dispatches, so that ``emflow --help`` stays fast
(heavy imports happen inside ``run``).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "emflow.cli.demo",
        "generate telemetry, train, gate and publish on the embedded default",
    ),
    "train": ("emflow.cli.train", "fit a GaussianMixture on a telemetry file and save the model"),
    "validate": ("emflow.cli.validate", "validate telemetry against the data contract"),
    "status": ("emflow.cli.status", "registered versions, aliases and decisions"),
    "rollback": ("emflow.cli.rollback", "point the champion alias at a prior version"),
    "airflow-env": (
        "emflow.cli.airflow_env",
        "print (--setup: also prepare) the Airflow environment",
    ),
    "score": (
        "emflow.cli.score",
        "score telemetry with the champion (CSV: event_id, component, responsibility, "
        "log_likelihood, and p_value, is_anomaly for a calibrated model)",
    ),
    "telemetry": ("emflow.cli.telemetry", "write synthetic telemetry windows under incoming/"),
    "gpu": ("emflow.cli.gpu", "GPU housekeeping: `emflow gpu warmup` compiles the kernels"),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("emflow")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def int_in_range(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[minimum, maximum]`` (argparse says which option)."""
    expected = f"an integer >= {minimum}"
    if maximum is not None:
        expected = f"an integer from {minimum} to {maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


def output_file_problem(option: str, target: Path) -> str | None:
    """Why ``option``'s file ``target`` cannot be written (None: it can); checked up front."""
    if target.is_dir():
        return f"{option} {target} is a folder; pass a file name"
    folder = target.parent
    if not folder.is_dir():
        return f"{option} {target}: {folder} is not an existing folder"
    if not os.access(folder, os.W_OK | os.X_OK) or (
        target.exists() and not os.access(target, os.W_OK)
    ):
        return f"{option} {target}: cannot write there; pass a file you can write"
    return None


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; return its exit status.

    Exit status 2 for a usage error: a bad option (argparse), or an ``EMFLOW_*`` variable
    the command needs holding a value it cannot use. When the reader of the output goes away
    (``emflow status | head``) the command stops quietly with status 1, as Python's note on
    SIGPIPE recommends, whichever command it is.
    """
    try:
        try:
            return _dispatch(sys.argv[1:] if argv is None else argv)
        finally:  # what is still buffered meets a closed pipe here, not at exit (--help too)
            sys.stdout.flush()
    except BrokenPipeError:
        # https://docs.python.org/3/library/signal.html#note-on-sigpipe: point stdout at
        # devnull so that the interpreter's own flush at exit does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _dispatch(argv: list[str]) -> int:
    """Parse ``argv``, run the subcommand it names; its exit status."""
    from emflow.config import SettingsError

    parser = argparse.ArgumentParser(prog="emflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"emflow {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # import only the module that runs
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    args = parser.parse_args(argv)
    # MLflow logs a store's SQL error with its traceback before raising it; the command answers
    # the error itself (one line naming the fix below, or the traceback of an unexpected one)
    import logging

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    try:
        return int(args._run(args) or 0)
    except SettingsError as error:  # raised where the command first uses the setting
        print(f"emflow {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # Ctrl-C: one line, the shell's status for SIGINT
        said = str(interrupt) or "interrupted (Ctrl-C)"  # a bare Ctrl-C has no message
        print(f"\nemflow {args.command}: {said}", file=sys.stderr)
        return 130
    except Exception as error:
        if disk_full(error):
            print(
                f"emflow {args.command}: no space left on the device ({error_line(error)}); "
                "free space there, or set EMFLOW_HOME to a folder on a larger disk, and run the "
                "command again",
                file=sys.stderr,
            )
            return 1
        denied = not_writable(error)
        if denied is None:
            raise
        print(
            f"emflow {args.command}: cannot write there ({error_line(denied)}); make it "
            "writable for this user, or set EMFLOW_HOME (or EMFLOW_DATA_ROOT, "
            "MLFLOW_TRACKING_URI) to a place it can write, and run the command again",
            file=sys.stderr,
        )
        return 1


def _in_causes(
    error: BaseException | None, errnos: tuple[int, ...], text: str
) -> BaseException | None:
    """The first error of ``error``'s chain that is an OSError of ``errnos`` or says ``text``.

    The chain follows causes, and contexts unless ``from None``; None when no error matches.
    """
    seen = 0
    while error is not None and seen < 20:
        if (isinstance(error, OSError) and error.errno in errnos) or text in str(error):
            return error
        cause = error.__cause__
        error = cause if cause is not None or error.__suppress_context__ else error.__context__
        seen += 1
    return None


def disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` (or one it came from) is a full disk or quota.

    An OSError of ENOSPC or EDQUOT, or SQLite's "database or disk is full" (the MLflow and
    Airflow stores).
    """
    return _in_causes(error, (errno.ENOSPC, errno.EDQUOT), "database or disk is full") is not None


def not_writable(error: BaseException | None) -> BaseException | None:
    """The error (``error`` or one it came from) of a place this user cannot write, or None.

    An OSError of EACCES, EPERM or EROFS, or SQLite's "attempt to write a readonly database".
    """
    return _in_causes(error, (errno.EACCES, errno.EPERM, errno.EROFS), "readonly database")


def error_line(error: BaseException) -> str:
    """The file ``error`` names and its message's first line (SQLAlchemy appends a link)."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    filename = getattr(error, "filename", None)
    return f"{filename}: {line}" if filename and str(filename) not in line else line


if __name__ == "__main__":
    sys.exit(main())
