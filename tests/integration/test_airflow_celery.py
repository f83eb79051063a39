"""The GPU worker for real: CeleryExecutor with PostgreSQL as Airflow's metadata database and
Redis as broker (both on 127.0.0.1), one worker listening only on the ``gpu`` queue and one on
``default``. A ``gmm_retrain`` run must put ``train`` on the gpu worker and nothing else there.

Skipped, with the reason, when PostgreSQL or Redis cannot be reached. Slow (several minutes).
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid

import pytest
from support.airflow import (
    NO_SCHEDULED_RUNS,
    Api,
    Started,
    airflow_bin,
    free_port,
    postgres_reachable,
    private_tmp,
    redis_reachable,
)

from emflow.airflow.environment import airflow_environment, setup_airflow
from emflow.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATABASE = "emflow_airflow_test"
REDIS_DB = 9  # a database index of its own on the shared Redis
DAY = "2026-11-16"


def _fresh_database() -> str:
    """Drop and create ``emflow_airflow_test``; return its SQLAlchemy URL."""
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {DATABASE}")
    conn.close()
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{DATABASE}"


@pytest.fixture(scope="module")
def celery_cluster():
    for reason in (postgres_reachable(), redis_reachable()):
        if reason:
            pytest.skip(reason)
    home = private_tmp("emflow-celery-")
    settings = Settings(home=home).ensure_dirs()
    port = free_port()
    database_url = _fresh_database()
    prefix = f"emflow-test-{uuid.uuid4().hex[:12]}:"
    env = {
        **os.environ,
        **airflow_environment(
            settings,
            sql_alchemy_conn=database_url,
            executor="CeleryExecutor",
            api_port=port,
            parallelism=2,
            extra={
                "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
                # queues of this run's own: a worker another run left behind (same Redis
                # database, queues 'gpu'/'default') took this run's tasks and failed them
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": prefix,
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://postgres@127.0.0.1:5432/"
                f"{DATABASE}",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            },
        ),
        "EMFLOW_RETRAIN_SCHEDULE": NO_SCHEDULED_RUNS,
        "EMFLOW_RETRY_DELAY_S": "2",
        "EMFLOW_PUSHGATEWAY": "",
    }
    setup_airflow(env, in_process=False)
    from validation.synthetic import make_telemetry, write_window

    write_window(make_telemetry(3000, DAY, "2026-11-17", seed=9), settings.data_root, DAY)

    airflow = airflow_bin()
    named = {"AIRFLOW__CORE__HOSTNAME_CALLABLE": "emflow.airflow.environment.worker_hostname"}
    processes = [
        Started("api-server", [airflow, "api-server"], env, home),
        Started("scheduler", [airflow, "scheduler"], env, home),
        Started("dag-processor", [airflow, "dag-processor"], env, home),
        Started(
            "gpu-worker",
            [
                airflow,
                "celery",
                "worker",
                "--queues",
                "gpu",
                "--celery-hostname",
                "gpu-worker@%h",
                "--concurrency",
                "1",
                "--skip-serve-logs",
                "--without-gossip",
                "--without-mingle",
            ],
            {**env, **named, "EMFLOW_WORKER_NAME": "gpu-worker"},
            home,
        ),
        Started(
            "cpu-worker",
            [
                airflow,
                "celery",
                "worker",
                "--queues",
                "default",
                "--celery-hostname",
                "cpu-worker@%h",
                "--concurrency",
                "1",
                "--skip-serve-logs",
                "--without-gossip",
                "--without-mingle",
            ],
            {**env, **named, "EMFLOW_WORKER_NAME": "cpu-worker"},
            home,
        ),
    ]
    api = Api(f"http://127.0.0.1:{port}")
    try:
        api.wait_healthy(240, processes)
        api.login_all_admins()
        yield {"api": api, "processes": processes, "settings": settings}
    finally:
        for process in reversed(processes):
            process.stop(signal.SIGTERM, timeout=45)
        assert not any(p.alive() for p in processes)
    _drop_keys(prefix)
    shutil.rmtree(home, ignore_errors=True)


def _drop_keys(prefix: str) -> None:
    """Delete this run's broker keys (queues, bindings) from the shared Redis database."""
    import redis

    broker = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    keys = list(broker.scan_iter(match=f"{prefix}*"))
    if keys:
        broker.delete(*keys)


def test_train_runs_on_the_gpu_worker_and_nothing_else_does(celery_cluster):
    api: Api = celery_cluster["api"]
    processes = {p.name: p for p in celery_cluster["processes"]}
    api.wait_for_dag("gmm_retrain", 240)
    api.unpause("gmm_retrain")
    conf = {"n_init": 2, "max_iter": 50, "covariance_type": "diag"}
    run = api.trigger("gmm_retrain", conf, f"{DAY}T00:00:00Z")
    finished = api.wait_run("gmm_retrain", run["dag_run_id"], 900, list(processes.values()))
    tis = api.task_instances("gmm_retrain", run["dag_run_id"])
    states = {task: ti["state"] for task, ti in tis.items()}
    assert finished["state"] == "success", (
        states,
        processes["gpu-worker"].tail(),
        processes["cpu-worker"].tail(),
    )
    # where each task ran, as Airflow recorded it
    assert tis["train"]["queue"] == "gpu"
    assert tis["train"]["hostname"].startswith("gpu-worker@")
    others = {task: ti for task, ti in tis.items() if task != "train"}
    assert {ti["queue"] for ti in others.values()} == {"default"}
    assert all(ti["hostname"].startswith("cpu-worker@") for ti in others.values()), {
        task: ti["hostname"] for task, ti in others.items()
    }
    # and as the workers logged it
    gpu_log = processes["gpu-worker"].log_path.read_text(errors="replace")
    cpu_log = processes["cpu-worker"].log_path.read_text(errors="replace")
    assert "task_id='train'" in gpu_log
    assert "task_id='train'" not in cpu_log
    for task in others:
        assert f"task_id='{task}'" in cpu_log and f"task_id='{task}'" not in gpu_log
