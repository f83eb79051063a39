"""The lifecycle against a real ``mlflow server`` on 127.0.0.1 (PostgreSQL backend store where
one is reachable, else SQLite), started and stopped by this module.

Shows: publish + serve through the REST API, and a server killed in the middle of a publish,
then started again: the publish keeps retrying, resumes its run, registers exactly one version,
and the model folder is untouched meanwhile.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from support.lifecycle import cycle, telemetry, train

from emflow.config import Settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

STARTUP_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_database() -> tuple[str, object] | None:
    """Create a scratch database on the local PostgreSQL; None when it is not reachable."""
    try:
        import psycopg2
    except ImportError:
        return None
    try:
        admin = psycopg2.connect(
            host="127.0.0.1", port=5432, user="root", dbname="postgres", connect_timeout=3
        )
    except Exception:  # not running here: fall back to SQLite
        return None
    admin.autocommit = True
    name = f"emflow_mlflow_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    return name, admin


class MlflowServer:
    """One ``mlflow server --workers 1`` process group, restartable on the same port."""

    def __init__(
        self,
        backend_uri: str,
        artifacts: Path,
        log_path: Path,
        *,
        extra_args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.backend_uri, self.artifacts, self.log_path = backend_uri, artifacts, log_path
        self.extra_args, self.extra_env = extra_args, extra_env or {}
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.database: str | None = None  # the PostgreSQL backend database, when used

    def start(self) -> None:
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(self.extra_env)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(mlflow_bin),
                    "server",
                    "--backend-store-uri",
                    self.backend_uri,
                    "--artifacts-destination",
                    str(self.artifacts),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    "1",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(
            f"mlflow server not healthy after {STARTUP_TIMEOUT_S} s: "
            f"{self.log_path.read_text()[-3000:]}"
        )

    def kill(self) -> None:
        """SIGKILL the server's process group at once (a crash, mid-request)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # its own session: only its processes
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the port must be closed before the next test step
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    scratch = _postgres_database()
    if scratch is not None:
        backend_uri = f"postgresql+psycopg2://root@127.0.0.1:5432/{scratch[0]}"
    else:
        backend_uri = f"sqlite:///{root / 'server.db'}"
    srv = MlflowServer(backend_uri, root / "artifacts", root / "server.log")
    srv.database = None if scratch is None else scratch[0]
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        _drop(scratch)


def _drop(scratch) -> None:
    """Drop the scratch database this module created (only that one)."""
    if scratch is not None:
        name, admin = scratch
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("server-models")
    data = telemetry(1500, seed=1)
    return {"good": train(data, root / "good", seed=0)[1], "root": root}


def test_publish_and_serve_through_the_server(server, models, tmp_path):
    import mlflow

    settings = Settings(home=tmp_path / "home", tracking_uri=server.url)
    model_dir = tmp_path / "good"
    shutil.copytree(models["root"] / "good", model_dir)
    holdout = telemetry(400, seed=2)
    evaluation, decision, result = cycle(settings, model_dir, holdout, "srv-run-1", models["good"])
    assert decision.promote and result.promoted and result.version == "1"
    assert result.champion_version == "1"  # str, as the REST API returns it

    served = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@champion")
    scored = served.predict(holdout)
    assert np.isclose(scored["log_likelihood"].mean(), evaluation.challenger_mean_loglik)
    if server.database is not None:  # the version really lives in PostgreSQL
        import psycopg2

        with psycopg2.connect(host="127.0.0.1", user="root", dbname=server.database) as conn:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT version FROM model_versions WHERE name = %s", (settings.model_name,)
                )
                assert [row[0] for row in cur.fetchall()] == [1]
    assert not any(p.suffix in (".pkl", ".pickle") for p in server.artifacts.rglob("*"))


def test_server_killed_during_publish_then_started_registers_once(
    server, models, tmp_path, monkeypatch
):
    import mlflow

    import gmm_core
    from emflow.registry import aliases as registry
    from emflow.registry.publish import publish
    from emflow.run.evaluate import evaluate
    from emflow.run.gate import gate

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # our own retries, fast
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    settings = Settings(
        home=tmp_path / "home", tracking_uri=server.url, mlflow_retries=20, mlflow_backoff_s=1.0
    )
    champion_version = registry.alias_version(
        mlflow.MlflowClient(server.url, registry_uri=server.url), settings.model_name, "champion"
    )
    assert champion_version is not None, "runs after test_publish_and_serve_through_the_server"
    champion = gmm_core.load_model(models["root"] / "good")
    permuted_dir = tmp_path / "permuted"
    gmm_core.save_model(
        gmm_core.reorder_components(champion, [3, 2, 1, 0]),
        permuted_dir,
        feature_names=list(champion.feature_names_),
    )
    holdout = telemetry(400, seed=3)
    evaluation = evaluate(permuted_dir, holdout, settings)
    decision = gate(evaluation, permuted_dir, settings)
    assert decision.promote
    aligned_dir = Path(decision.model_dir)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in aligned_dir.iterdir()}

    failures = threading.Event()

    class Seen(logging.Handler):
        def emit(self, record):
            if "unreachable" in record.getMessage():
                failures.set()

    handler = Seen()
    logging.getLogger("emflow.registry.tracking").addHandler(handler)
    outcome: dict = {}

    def publish_in_thread():
        try:
            outcome["result"] = publish(
                decision,
                permuted_dir,
                run_key="srv-run-2",
                data_window="w",
                train_info=models["good"],
                settings=settings,
            )
        except Exception as error:  # surfaced below
            outcome["error"] = error

    worker = threading.Thread(target=publish_in_thread, daemon=True)
    watcher = mlflow.MlflowClient(server.url)
    try:
        worker.start()
        # Kill the server as soon as this publish has created its run: mid-publish.
        deadline = time.monotonic() + 120
        seen_run = []
        while not seen_run and time.monotonic() < deadline and worker.is_alive():
            experiment = watcher.get_experiment_by_name(settings.experiment_name)
            seen_run = watcher.search_runs(
                [experiment.experiment_id], "tags.`emflow.run_key` = 'srv-run-2'"
            )
            time.sleep(0.05)
        assert seen_run, "the publish never created its run"
        server.kill()
        assert failures.wait(60), "publish finished before the server went down; nothing tested"
        after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in aligned_dir.iterdir()}
        assert after == before  # the model waits on local disk
        server.start()
        worker.join(timeout=300)
    finally:
        logging.getLogger("emflow.registry.tracking").removeHandler(handler)
        if server.process.poll() is not None:
            server.start()
    assert not worker.is_alive()
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.promoted and not result.reused
    assert result.version == str(int(champion_version) + 1)
    assert result.run_id == seen_run[0].info.run_id  # the run begun before the crash, resumed

    client = mlflow.MlflowClient(server.url, registry_uri=server.url)
    found = client.search_model_versions(
        f"name='{settings.model_name}' and tags.`emflow.run_key` = 'srv-run-2'"
    )
    assert [str(v.version) for v in found] == [result.version]
    served = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@champion")
    np.testing.assert_array_equal(
        served.predict(holdout)["component"],
        champion.predict(holdout[list(champion.feature_names_)]),
    )
    again = publish(
        decision,
        permuted_dir,
        run_key="srv-run-2",
        data_window="w",
        train_info=models["good"],
        settings=settings,
    )
    assert again.reused and again.version == result.version


def test_compose_basic_auth_config_asks_for_a_login(tmp_path, monkeypatch):
    """docker/compose.yaml's MLflow server (--app-name basic-auth, docker/mlflow/basic_auth.ini,
    admin password from the environment): anonymous and wrong-password requests are refused,
    emflow publishes with MLFLOW_TRACKING_USERNAME/PASSWORD."""
    import urllib.error

    from mlflow import MlflowClient

    ini = (Path(__file__).parents[2] / "docker" / "mlflow" / "basic_auth.ini").read_text()
    assert "admin_password" not in ini.replace("# ", "")  # no secret committed
    ini = ini.replace("sqlite:////opt/mlflow-auth/basic_auth.db", f"sqlite:///{tmp_path}/auth.db")
    (tmp_path / "basic_auth.ini").write_text(ini)
    password = uuid.uuid4().hex
    srv = MlflowServer(
        f"sqlite:///{tmp_path / 'server.db'}",
        tmp_path / "artifacts",
        tmp_path / "server.log",
        extra_args=("--app-name", "basic-auth"),
        extra_env={
            "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
            "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
            "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
        },
    )
    try:
        srv.start()
        search = f"{srv.url}/api/2.0/mlflow/registered-models/search"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(search, timeout=10)
        assert refused.value.code == 401
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
        with pytest.raises(Exception, match="401|Unauthorized|credentials"):
            MlflowClient(srv.url, registry_uri=srv.url).search_registered_models()
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        client = MlflowClient(srv.url, registry_uri=srv.url)
        client.create_registered_model("auth-check")
        assert [m.name for m in client.search_registered_models()] == ["auth-check"]
    finally:
        srv.stop()
