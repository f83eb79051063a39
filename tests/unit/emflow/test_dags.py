"""The DAG files: they import cleanly, stay light at parse time, and declare what the UI shows."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from emflow.airflow.environment import GPU_POOL, GPU_QUEUE, airflow_environment, dags_folder
from emflow.config import Settings

HEAVY_MODULES = (
    "mlflow",
    "great_expectations",
    "cupy",
    "sklearn",
    "pandas",
    "torch",
    "gmm_core",
    "validation",
    "emflow.model",
    "emflow.registry",
    "emflow.metrics",
    "emflow.run.split",
    "emflow.run.train",
    "emflow.run.evaluate",
    "emflow.run.gate",
    "emflow.run.publish",
    "emflow.run.validate",
)

# Parses the DAG folder the way the dag-processor does, after Airflow's own imports, and reports
# what the DAG files added: modules, database connections, Variable/Connection look-ups.
PARSE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    import airflow.sdk
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    touched = []
    event.listen(Engine, "connect", lambda *a: touched.append("db-connect"))
    for cls in (airflow.sdk.Variable, airflow.sdk.Connection, airflow.sdk.BaseHook):
        for name in ("get", "get_connection", "set"):
            if hasattr(cls, name):
                def spy(*a, _n=f"{cls.__name__}.{name}", **k):
                    touched.append(_n)
                    raise RuntimeError(_n + " called at parse time")
                setattr(cls, name, staticmethod(spy))
    before = set(sys.modules)
    bag = DagBag(dag_folder=sys.argv[1])
    added = sorted(set(sys.modules) - before)
    retrain = bag.dags.get("gmm_retrain")
    print("RESULT" + json.dumps({
        "import_errors": {str(k): v for k, v in bag.import_errors.items()},
        "dag_ids": sorted(bag.dags),
        "added_modules": added,
        "touched": touched,
        "timetable": repr(retrain.timetable) if retrain else None,
    }))
    """
)


@pytest.fixture(scope="module")
def parse_report(tmp_path_factory):
    """Parse dags/ in a fresh interpreter with an unusable metadata DB and a custom schedule."""
    home = tmp_path_factory.mktemp("parse")
    env = {
        **os.environ,
        **airflow_environment(Settings(home=home)),
        # any DB access at parse time would fail: the folder does not exist
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/missing/dir/airflow.db",
        "EMFLOW_RETRAIN_SCHEDULE": "30 6 * * *",
    }
    proc = subprocess.run(
        [sys.executable, "-c", PARSE_SCRIPT, str(dags_folder())],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(out for out in proc.stdout.splitlines() if out.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(dags_folder()))


def test_dag_folder_imports_without_errors(parse_report, dagbag):
    assert parse_report["import_errors"] == {}
    assert dagbag.import_errors == {}
    assert parse_report["dag_ids"] == sorted(dagbag.dags) == ["gmm_retrain", "gmm_rollback"]


def test_parsing_touches_no_database_connection_variable_or_heavy_library(parse_report):
    assert parse_report["touched"] == []
    heavy = [
        m
        for m in parse_report["added_modules"]
        if any(m == h or m.startswith(h + ".") for h in HEAVY_MODULES)
    ]
    assert heavy == []
    # the check itself sees imports: the DAG modules were added
    assert any(m.endswith("gmm_retrain") for m in parse_report["added_modules"])


def test_schedule_comes_from_the_environment(parse_report, dagbag):
    assert "30 6 * * *" in parse_report["timetable"]
    timetable = dagbag.dags["gmm_retrain"].timetable
    assert type(timetable).__name__ == "AssetOrTimeSchedule"
    assert timetable.timetable.expression == "0 0 * * *"  # @daily by default
    assert "emflow-telemetry" in repr(timetable.asset_condition)


@pytest.mark.parametrize("dag_id", ["gmm_retrain", "gmm_rollback"])
def test_dags_are_documented_tagged_and_retried(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert Path(dag.fileloc).stem == dag_id
    assert dag.doc_md and dag.doc_md.strip().split("\n")[0] in Path(dag.fileloc).read_text()
    assert {"emflow", "gmm"} <= set(dag.tags)
    assert dag.max_active_runs == 1
    assert dag.default_args["retries"] >= 1
    for task in dag.tasks:  # publish_metrics too: a Pushgateway blip must not lose a run
        assert task.retries >= 1, task.task_id


def test_train_runs_on_the_gpu_queue_and_pool_and_metrics_always_run(dagbag):
    dag = dagbag.dags["gmm_retrain"]
    tasks = {t.task_id: t for t in dag.tasks}
    assert list(tasks) == [
        "validate",
        "split",
        "train",
        "evaluate",
        "gate",
        "publish",
        "publish_metrics",
    ]
    assert (tasks["train"].queue, tasks["train"].pool) == (GPU_QUEUE, GPU_POOL)
    assert all(t.queue != GPU_QUEUE for name, t in tasks.items() if name != "train")
    assert tasks["publish_metrics"].trigger_rule == "all_done"
    assert tasks["publish_metrics"].upstream_task_ids == {"publish"}
    # each task takes the values it needs: the request (validate), the rows (split)
    assert tasks["train"].upstream_task_ids == {"validate", "split"}
    assert tasks["publish"].upstream_task_ids == {"validate", "split", "train", "gate"}


def test_retrain_params_are_typed_with_bounds(dagbag):
    from emflow.run.params import DEFAULT_PARAMS

    params = dagbag.dags["gmm_retrain"].params
    assert set(params.keys()) == set(DEFAULT_PARAMS)
    assert params.dump() == DEFAULT_PARAMS  # one set of defaults
    for name in params.keys():
        schema = params.get_param(name).schema
        assert "type" in schema and schema.get("title"), name
        types = {schema["type"]} if isinstance(schema["type"], str) else set(schema["type"])
        if types & {"integer", "number"}:
            assert "minimum" in schema and "maximum" in schema, name
        elif "string" in types and "format" not in schema:
            assert schema.get("enum"), name
    assert params.get_param("covariance_type").schema["enum"] == [
        "full",
        "tied",
        "diag",
        "spherical",
    ]
    assert params.get_param("backend").schema["enum"] == [
        "auto",
        "numpy",
        "cupy",
        "dask",
        "multigpu",
    ]
    # the Params come from emflow.run.params (light at parse time); gmm_core (heavy to import)
    # keeps its own list of backends, which must stay the same
    import gmm_core
    from emflow.run import params as run_params

    assert tuple(params.get_param("backend").schema["enum"]) == run_params.BACKENDS
    assert run_params.BACKENDS == gmm_core.BACKENDS
    assert tuple(params.get_param("covariance_type").schema["enum"]) == run_params.COVARIANCE_TYPES


def _with_conf(params, conf):
    """A copy of a DAG's ParamsDict with a trigger conf applied (as a DAG run does)."""
    merged = copy.deepcopy(params)
    for key, value in conf.items():
        merged[key] = value
    return merged


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"n_components": 0}, "n_components"),
        ({"n_init": 1000}, "n_init"),
        ({"covariance_type": "banana"}, "covariance_type"),
        ({"backend": "tpu"}, "backend"),
        ({"window_start": "not a date"}, "window_start"),
        ({"promotion_margin": -1}, "promotion_margin"),
        ({"false_alarm_rate": 0.9}, "false_alarm_rate"),
        ({"sample_weight_half_life_days": 0}, "sample_weight_half_life_days"),
        ({"mode": "rebuild"}, "mode"),
    ],
)
def test_out_of_bounds_params_are_refused(dagbag, conf, message):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match=message):
        _with_conf(dagbag.dags["gmm_retrain"].params, conf).validate()


def test_rollback_params_version_optional_reason_required(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    params = dagbag.dags["gmm_rollback"].params
    assert params.get_param("version").schema["type"] == ["null", "integer"]
    assert params.get_param("version").schema["minimum"] == 1
    with pytest.raises(ParamValidationError, match="reason"):
        _with_conf(params, {}).validate()
    assert _with_conf(params, {"reason": "bad data on Tuesday"}).validate() == {
        "version": None,
        "reason": "bad data on Tuesday",
        "force": False,  # a version the gate rejected is served only when forced (issue 16.12)
    }
    assert params.get_param("force").schema["type"] == "boolean"
    with pytest.raises(ParamValidationError, match="version"):
        _with_conf(params, {"version": 0, "reason": "bad data"}).validate()


def test_airflow_environment_is_local_small_and_under_emflow_home(tmp_path):
    settings = Settings(home=tmp_path)
    env = airflow_environment(settings, api_port=8123)
    assert env["AIRFLOW_HOME"] == str(tmp_path / "airflow")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path}/airflow/airflow.db"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(dags_folder())
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__PARALLELISM"] == "4"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8123/execution/"
    assert env["EMFLOW_HOME"] == str(tmp_path) and env["MLFLOW_TRACKING_URI"].startswith("sqlite")
    pg = airflow_environment(
        settings,
        sql_alchemy_conn="postgresql+psycopg2://x@h/db",
        executor="CeleryExecutor",
        extra={"AIRFLOW__CELERY__X": "1"},
    )
    assert pg["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor" and pg["AIRFLOW__CELERY__X"] == "1"


def test_emflow_airflow_env_prints_shell_exports(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "emflow.cli", "airflow-env", "--port", "8124"],
        env={**os.environ, "EMFLOW_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    exports = dict(line[len("export ") :].split("=", 1) for line in out.stdout.splitlines())
    assert exports["AIRFLOW_HOME"] == str(tmp_path / "airflow")
    assert exports["AIRFLOW__API__PORT"] == "8124"
    assert exports["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_a_bare_postgresql_url_gets_the_installed_driver(monkeypatch, tmp_path):
    """Issue 16.13: ``MLFLOW_TRACKING_URI=postgresql://...`` failed with a traceback (SQLAlchemy
    2.1 maps it to psycopg 3, which is not installed; psycopg2 is)."""
    import importlib.util

    from emflow.config import database_url

    if importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg 3 is installed: the bare URL works as it is")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://mlflow@127.0.0.1:5432/mlflow")
    assert (
        Settings(home=tmp_path).tracking_uri == "postgresql+psycopg2://mlflow@127.0.0.1:5432/mlflow"
    )
    assert database_url("postgres://a@h/db") == "postgresql+psycopg2://a@h/db"
    for kept in ("postgresql+psycopg2://a@h/db", "sqlite:///x.db", "http://127.0.0.1:5000"):
        assert database_url(kept) == kept
    env = airflow_environment(Settings(home=tmp_path), sql_alchemy_conn="postgresql://x@h/db")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql+psycopg2://x@h/db"
