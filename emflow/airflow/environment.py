"""The Airflow environment emflow runs under: one ``AIRFLOW_HOME`` inside ``EMFLOW_HOME``.

Airflow reads its configuration when ``airflow`` is first imported, so everything here works
through environment variables: :func:`airflow_environment` returns them, :func:`apply_environment`
puts them into ``os.environ`` (it refuses once ``airflow`` is imported with another home), and
:func:`setup_airflow` creates the metadata database and the GPU pool. The embedded default is
SQLite under ``EMFLOW_HOME/airflow``, the project's ``dags/`` folder, no example DAGs, a small
``parallelism`` and an API server bound to 127.0.0.1; tests pass a PostgreSQL URL and the
CeleryExecutor for the worker set-up of production.

Nothing here imports Airflow at module level.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from emflow.config import Settings, database_url

PACKAGED_DAGS = Path(__file__).resolve().parents[1] / "_dags"  # the wheel's copy of dags/
SOURCE_DAGS = Path(__file__).resolve().parents[2] / "dags"  # a source checkout's dags/


def dags_folder() -> Path:
    """The folder of emflow's DAG files.

    ``EMFLOW_DAGS_FOLDER`` when set; else the DAGs shipped in the installed package
    (``emflow/_dags``, package data of the wheel); else the ``dags/`` folder of a source
    checkout (an editable install).

    Raises
    ------
    FileNotFoundError
        None of them holds ``gmm_retrain.py``; the message names ``EMFLOW_DAGS_FOLDER``.
    """
    configured = os.environ.get("EMFLOW_DAGS_FOLDER")
    candidates = [Path(configured).expanduser()] if configured else [PACKAGED_DAGS, SOURCE_DAGS]
    for folder in candidates:
        if (folder / "gmm_retrain.py").is_file():
            return folder.resolve()
    raise FileNotFoundError(
        f"no emflow DAG files (gmm_retrain.py) in {', '.join(map(str, candidates))}: set "
        "EMFLOW_DAGS_FOLDER to the folder holding them"
    )


#: Celery queue and Airflow pool of the training task (one slot per GPU of the worker).
GPU_QUEUE = "gpu"
GPU_POOL = "gpu"
DEFAULT_GPU_POOL_SLOTS = 1


def airflow_home(settings: Settings) -> Path:
    """``AIRFLOW_HOME`` used by emflow: ``<EMFLOW_HOME>/airflow``."""
    return settings.home / "airflow"


def airflow_environment(
    settings: Settings | None = None,
    *,
    sql_alchemy_conn: str | None = None,
    executor: str = "LocalExecutor",
    api_port: int = 8080,
    parallelism: int = 4,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment variables that configure Airflow for emflow.

    Parameters
    ----------
    settings : Settings, optional
        emflow settings; ``Settings()`` (``EMFLOW_HOME`` or ``./.emflow``) by default.
    sql_alchemy_conn : str, optional
        Metadata database URL; SQLite at ``<AIRFLOW_HOME>/airflow.db`` by default.
    executor : str
        ``[core] executor`` (``LocalExecutor``; ``CeleryExecutor`` for the GPU worker set-up).
    api_port : int
        Port of the API server (UI, REST and execution API), bound to 127.0.0.1.
    parallelism : int
        ``[core] parallelism`` and the local executor's process count: Airflow's default (32)
        starts dozens of processes, far too many for a laptop or a 2-core CI box.
    extra : mapping of str to str, optional
        More variables, applied last (e.g. Celery broker settings).

    Returns
    -------
    dict of str to str
        ``AIRFLOW_HOME``, ``AIRFLOW__<SECTION>__<KEY>`` values and the emflow variables
        (``EMFLOW_HOME``, ``MLFLOW_TRACKING_URI``) that task processes must inherit.
    """
    settings = settings or Settings()
    home = airflow_home(settings)
    base_url = f"http://127.0.0.1:{api_port}"
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(parallelism),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
            database_url(sql_alchemy_conn)
            if sql_alchemy_conn
            else f"sqlite:///{home / 'airflow.db'}"
        ),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "EMFLOW_HOME": str(settings.home),
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "EMFLOW_DATA_ROOT": str(settings.data_root),
        "EMFLOW_METRICS_TEXTFILE": str(settings.metrics_textfile),
    }
    env.update(extra or {})
    return env


def apply_environment(env: Mapping[str, str]) -> None:
    """Put ``env`` into ``os.environ`` before Airflow is imported in this process.

    Raises
    ------
    RuntimeError
        If ``airflow`` is already imported with another ``AIRFLOW_HOME``: its configuration is
        fixed at import, so the caller must set the environment first (or use a subprocess).
    """
    if "airflow.configuration" in sys.modules:
        from airflow.configuration import AIRFLOW_HOME  # already imported: no cost

        if Path(AIRFLOW_HOME).resolve() != Path(env["AIRFLOW_HOME"]).resolve():
            raise RuntimeError(
                f"Airflow is already configured for AIRFLOW_HOME={AIRFLOW_HOME}; set "
                f"AIRFLOW_HOME={env['AIRFLOW_HOME']} (emflow.airflow.environment."
                "apply_environment) before the first `import airflow`, or run in a fresh process."
            )
    os.environ.update(env)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)


def setup_airflow(
    env: Mapping[str, str] | None = None,
    *,
    gpu_pool_slots: int = DEFAULT_GPU_POOL_SLOTS,
    in_process: bool = True,
) -> None:
    """Create (or migrate) Airflow's metadata database and the ``gpu`` pool.

    Parameters
    ----------
    env : mapping, optional
        Result of :func:`airflow_environment`; the current ``os.environ`` when omitted.
    gpu_pool_slots : int
        Slots of the ``gpu`` pool: how many training tasks may hold a GPU at once.
    in_process : bool
        Apply ``env`` to this process and migrate through Airflow's API (fast, used by the demo
        and ``dag.test``); else run the ``airflow`` CLI in a subprocess (leaves this process
        free of Airflow's configuration, used by tests that start servers).
    """
    if not in_process:
        run_env = {**os.environ, **(env or {})}
        airflow = str(Path(sys.executable).with_name("airflow"))
        Path(run_env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [airflow, "db", "migrate"], env=run_env, check=True, stdout=subprocess.DEVNULL
        )
        subprocess.run(
            [
                airflow,
                "pools",
                "set",
                GPU_POOL,
                str(gpu_pool_slots),
                "GPU slots of the training workers (queue 'gpu')",
            ],
            env=run_env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return
    if env is not None:
        apply_environment(env)
    from airflow.models.pool import Pool
    from airflow.utils import db

    db.initdb()
    Pool.create_or_update_pool(
        GPU_POOL,
        gpu_pool_slots,
        "GPU slots of the training workers (queue 'gpu')",
        include_deferred=False,
    )


def worker_hostname() -> str:
    """Host name Airflow records on task instances run by this worker.

    ``<EMFLOW_WORKER_NAME>@<fqdn>`` when the worker's environment names it (e.g. ``gpu-worker``),
    else the fully qualified host name (Airflow's default). Set
    ``AIRFLOW__CORE__HOSTNAME_CALLABLE=emflow.airflow.environment.worker_hostname`` in a Celery
    worker's environment so the UI shows which worker ran each task even when several share a
    host.
    """
    import socket

    name = os.environ.get("EMFLOW_WORKER_NAME")
    fqdn = socket.getfqdn()
    return f"{name}@{fqdn}" if name else fqdn
