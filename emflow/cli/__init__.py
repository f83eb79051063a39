"""The ``emflow`` command line: what an operator does by hand.

Each subcommand is one module of this package exposing two functions, ``add_arguments(parser)``
and ``run(args) -> int``; this module only dispatches, so that ``emflow --help`` stays fast
(heavy imports happen inside ``run``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

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
        "score telemetry with the champion (CSV: component, responsibility, log-likelihood)",
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


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; return its exit status."""
    parser = argparse.ArgumentParser(prog="emflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"emflow {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    args_argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in args_argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # import only the module that runs
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    args = parser.parse_args(args_argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
