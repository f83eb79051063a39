"""``emflow airflow-env [--setup]``: the shell environment for running Airflow by hand."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from emflow.airflow.environment import GPU_POOL, airflow_environment, setup_airflow
from emflow.cli import int_in_range
from emflow.config import Settings


def add_arguments(parser: Any) -> None:
    """Options of ``emflow airflow-env``."""
    parser.add_argument(
        "--port",
        type=int_in_range(1, 65535),
        default=8080,
        help="API server / UI port on 127.0.0.1 (default 8080)",
    )
    parser.add_argument(
        "--parallelism",
        type=int_in_range(1),
        default=4,
        help="[core] parallelism: task processes at once (default 4)",
    )
    parser.add_argument(
        "--setup",
        action="store_true",
        help="also create/migrate the metadata database and the gpu pool",
    )


def run(args: Any) -> int:
    """Print ``export`` lines for ``eval "$(emflow airflow-env --setup)"``; 0 on success."""
    import shlex

    settings = Settings().ensure_dirs()
    env = airflow_environment(settings, api_port=args.port, parallelism=args.parallelism)
    if args.setup:
        print(
            f"# setting up {env['AIRFLOW__DATABASE__SQL_ALCHEMY_CONN']} and pool '{GPU_POOL}'",
            file=sys.stderr,
        )
        setup_airflow(env, in_process=False)
    # the standalone command starts its components as `airflow ...`: keep this venv first
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    for key, value in {**env, "PATH": path}.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0
