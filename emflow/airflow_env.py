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
from typing import Any

from emflow.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DAGS_FOLDER = REPO_ROOT / "dags"

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
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(parallelism),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
            sql_alchemy_conn or f"sqlite:///{home / 'airflow.db'}"
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
                f"AIRFLOW_HOME={env['AIRFLOW_HOME']} (emflow.airflow_env.apply_environment) before "
                "the first `import airflow`, or run in a fresh process."
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
        subprocess.run([airflow, "db", "migrate"], env=run_env, check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(
            [airflow, "pools", "set", GPU_POOL, str(gpu_pool_slots),
             "GPU slots of the training workers (queue 'gpu')"],
            env=run_env, check=True, stdout=subprocess.DEVNULL,
        )
        return
    if env is not None:
        apply_environment(env)
    from airflow.models.pool import Pool
    from airflow.utils import db

    db.initdb()
    Pool.create_or_update_pool(
        GPU_POOL, gpu_pool_slots, "GPU slots of the training workers (queue 'gpu')",
        include_deferred=False,
    )


def load_dags(dag_ids: tuple[str, ...] = ("gmm_retrain", "gmm_rollback")) -> dict[str, Any]:
    """Parse the project's DAG folder and return the named DAGs (Airflow must be configured).

    Raises
    ------
    RuntimeError
        A DAG file failed to import (the message carries Airflow's import errors).
    """
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors in {DAGS_FOLDER}: {bag.import_errors}")
    missing = [d for d in dag_ids if d not in bag.dags]
    if missing:
        raise RuntimeError(f"DAGs {missing} not found in {DAGS_FOLDER} (found {sorted(bag.dags)})")
    return {dag_id: bag.dags[dag_id] for dag_id in dag_ids}


def run_outcome(dag_run: Any) -> dict[str, Any]:
    """What one finished DAG run did: its state, each task's state and pushed XComs.

    Returns
    -------
    dict
        ``dag_id``, ``run_id``, ``state``, ``tasks`` (task id -> state), ``xcom``
        (task id -> return value), ``xcom_extra`` (task id -> {key: value}) for other keys.
    """
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        tasks = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances(session=session)}
        rows = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id))
        xcom: dict[str, Any] = {}
        extra: dict[str, dict[str, Any]] = {}
        for row in rows:
            value = XComModel.deserialize_value(row)
            if row.key == "return_value":
                xcom[row.task_id] = value
            else:
                extra.setdefault(row.task_id, {})[row.key] = value
    return {"dag_id": dag_run.dag_id, "run_id": dag_run.run_id, "state": str(dag_run.state),
            "tasks": tasks, "xcom": xcom, "xcom_extra": extra}


def run_in_process(
    dag: Any, conf: Mapping[str, Any], logical_date: Any = None
) -> dict[str, Any]:
    """Run ``dag`` once in this process (``dag.test``) and return :func:`run_outcome`.

    Parameters
    ----------
    dag : airflow.sdk.DAG
        From :func:`load_dags`.
    conf : mapping
        The run's conf: Params exactly as the trigger form sends them.
    logical_date : datetime, optional
        The run's logical date (for ``gmm_retrain``: the day whose window it trains on);
        ``None`` lets ``dag.test`` use the current time.
    """
    kwargs = {} if logical_date is None else {"logical_date": logical_date}
    # Resolving a run's conf sets the value of the DAG's and tasks' own Param objects; in a
    # worker that process ends with the task, here it would make this run's conf the next
    # run's defaults. Put the values back afterwards.
    params = [dag.params, *(task.params for task in dag.tasks)]
    saved = [(p.get_param(key), p.get_param(key).value) for p in params for key in p]
    try:
        return run_outcome(dag.test(run_conf=dict(conf), **kwargs))
    finally:
        for param, value in saved:
            param.value = value


def worker_hostname() -> str:
    """Host name Airflow records on task instances run by this worker.

    ``<EMFLOW_WORKER_NAME>@<fqdn>`` when the worker's environment names it (e.g. ``gpu-worker``),
    else the fully qualified host name (Airflow's default). Set
    ``AIRFLOW__CORE__HOSTNAME_CALLABLE=emflow.airflow_env.worker_hostname`` in a Celery worker's
    environment so the UI shows which worker ran each task even when several share a host.
    """
    import socket

    name = os.environ.get("EMFLOW_WORKER_NAME")
    fqdn = socket.getfqdn()
    return f"{name}@{fqdn}" if name else fqdn


# --------------------------------------------------------------------------------------------
# emflow airflow-env: the shell environment for running Airflow by hand
# --------------------------------------------------------------------------------------------


def add_arguments(parser: Any) -> None:
    """Options of ``emflow airflow-env``."""
    parser.add_argument("--port", type=int, default=8080,
                        help="API server / UI port on 127.0.0.1 (default 8080)")
    parser.add_argument("--parallelism", type=int, default=4,
                        help="[core] parallelism: task processes at once (default 4)")
    parser.add_argument("--setup", action="store_true",
                        help="also create/migrate the metadata database and the gpu pool")


def run(args: Any) -> int:
    """Print ``export`` lines for ``eval "$(emflow airflow-env --setup)"``; 0 on success."""
    import shlex

    settings = Settings().ensure_dirs()
    env = airflow_environment(settings, api_port=args.port, parallelism=args.parallelism)
    if args.setup:
        print(f"# setting up {env['AIRFLOW__DATABASE__SQL_ALCHEMY_CONN']} and pool "
              f"'{GPU_POOL}'", file=sys.stderr)
        setup_airflow(env, in_process=False)
    # the standalone command starts its components as `airflow ...`: keep this venv first
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    for key, value in {**env, "PATH": path}.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0
