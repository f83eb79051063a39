"""Helpers for the tests that run real Airflow servers: processes, the REST API, waiting.

Everything talks to 127.0.0.1 only. Processes are started in their own session so that stopping
one stops exactly what the test started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# Schedule for tests that unpause gmm_retrain: with start_date 2026-01-01 and catchup off, a
# yearly cron has no complete interval yet, so the scheduler creates no run of its own next to
# the one the test triggers (max_active_runs=1 would queue the test's run behind it).
NO_SCHEDULED_RUNS = "0 0 1 1 *"


def private_tmp(prefix: str) -> Path:
    """A temporary folder of this test only.

    Not pytest's ``tmp_path``: concurrent pytest sessions on one machine prune each other's
    older base folders, which would pull the database from under a server running for minutes.
    """
    import tempfile

    return Path(tempfile.mkdtemp(prefix=prefix))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def airflow_bin() -> str:
    """The ``airflow`` script of this virtual environment."""
    import sys

    return str(Path(sys.executable).with_name("airflow"))


class Started:
    """One process a test started (own session), its log file, and how to stop it."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            args, env=dict(env), stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
        """Send ``sig`` to the process; after ``timeout`` end its whole session (ours)."""
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        for escalate in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, escalate)  # children the process left behind
            except ProcessLookupError:
                break
            time.sleep(2)
        self.proc.wait(10)
        self._log.close()

    def tail(self, n_chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n_chars:]


class Api:
    """Minimal client of Airflow's REST API v2 (urllib: no extra dependency)."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.token: str | None = None

    def request(
        self, method: str, path: str, body: Any = None, *, auth: bool = True, timeout: float = 30.0
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(
            self.base_url + path, data=data, headers=headers, method=method
        )
        for attempt in range(1, 6):
            try:
                with urllib.request.urlopen(req, timeout=timeout) as response:
                    text = response.read().decode()
                return json.loads(text) if text else None
            except urllib.error.HTTPError as error:
                # 503: the SQLite metadata DB was busy (scheduler and dag-processor write too);
                # the request's transaction was rolled back, so sending it again is safe
                if error.code != 503 or attempt == 5:
                    raise
                time.sleep(2 * attempt)
        raise AssertionError("unreachable")

    def wait_healthy(self, timeout: float, processes: list[Started]) -> None:
        """Wait until ``/api/v2/monitor/health`` answers; fail early when a process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [p for p in processes if not p.alive()]
            if dead:
                raise RuntimeError(f"{dead[0].name} exited early:\n{dead[0].tail()}")
            try:
                self.request("GET", "/api/v2/monitor/health", auth=False, timeout=5)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        raise TimeoutError(f"API server at {self.base_url} not healthy after {timeout} s")

    def login_all_admins(self) -> None:
        """Token of the simple auth manager in ``simple_auth_manager_all_admins`` mode."""
        self.token = self.request("GET", "/auth/token", auth=False)["access_token"]

    def wait_for_dag(self, dag_id: str, timeout: float) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id``; return its record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.request("GET", f"/api/v2/dags/{dag_id}")
            except urllib.error.HTTPError as error:
                if error.code != 404:
                    raise
                time.sleep(3)
        raise TimeoutError(f"DAG {dag_id} not parsed after {timeout} s")

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: Mapping[str, Any], logical_date: str) -> dict[str, Any]:
        """``POST /dagRuns`` with the body the UI's trigger form sends."""
        return self.request(
            "POST",
            f"/api/v2/dags/{dag_id}/dagRuns",
            {
                "logical_date": logical_date,
                "conf": dict(conf),
                "note": "triggered by the emflow end-to-end test",
            },
        )

    def wait_run(
        self, dag_id: str, run_id: str, timeout: float, processes: list[Started]
    ) -> dict[str, Any]:
        """Poll the run until it succeeds or fails; return its record."""
        from urllib.parse import quote

        deadline = time.monotonic() + timeout
        path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"
        run: dict[str, Any] = {}
        while time.monotonic() < deadline:
            run = self.request("GET", path)
            if run["state"] in ("success", "failed"):
                return run
            dead = [p for p in processes if not p.alive()]
            if dead:
                raise RuntimeError(f"{dead[0].name} exited during the run:\n{dead[0].tail()}")
            time.sleep(5)
        raise TimeoutError(f"run {run_id} still {run.get('state')} after {timeout} s")

    def backfill(
        self, dag_id: str, from_date: str, to_date: str, conf: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``POST /backfills``: one run per logical date in ``[from_date, to_date]``."""
        return self.request(
            "POST",
            "/api/v2/backfills",
            {
                "dag_id": dag_id,
                "from_date": from_date,
                "to_date": to_date,
                "dag_run_conf": dict(conf),
                "max_active_runs": 1,
                "reprocess_behavior": "none",
            },
        )

    def wait_runs(
        self,
        dag_id: str,
        count: int,
        timeout: float,
        processes: list[Started],
        check: Callable[[], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Wait until ``dag_id`` has ``count`` runs, all finished; return them.

        ``check`` runs at every poll (e.g. to replace a component that died inside a process
        that stays alive, as ``airflow standalone``'s scheduler can).
        """
        deadline = time.monotonic() + timeout
        runs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            if check is not None:
                check()
            runs = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]
            if len(runs) >= count and all(r["state"] in ("success", "failed") for r in runs):
                return runs
            dead = [p for p in processes if not p.alive()]
            if dead:
                raise RuntimeError(f"{dead[0].name} exited during the runs:\n{dead[0].tail()}")
            time.sleep(5)
        states = [(r["run_type"], r["logical_date"], r["state"]) for r in runs]
        raise TimeoutError(f"runs of {dag_id} not all finished after {timeout} s: {states}")

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        from urllib.parse import quote

        listing = self.request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances"
        )
        return {ti["task_id"]: ti for ti in listing["task_instances"]}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        from urllib.parse import quote

        body = self.request(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
            f"{task_id}/logs/{try_number}?full_content=true",
        )
        return json.dumps(body.get("content", body))


def postgres_reachable(dbname: str = "postgres") -> str | None:
    """None when PostgreSQL on 127.0.0.1:5432 accepts a connection, else why not."""
    try:
        import psycopg2

        psycopg2.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname=dbname, connect_timeout=3
        ).close()
    except Exception as exc:  # noqa: BLE001 - any failure means "skip, and say why"
        return f"PostgreSQL on 127.0.0.1:5432 unreachable ({type(exc).__name__}: {exc})"
    return None


def redis_reachable() -> str | None:
    """None when Redis on 127.0.0.1:6379 answers PING, else why not."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=3) as sock:
            sock.sendall(b"PING\r\n")
            if not sock.recv(64).startswith(b"+PONG"):
                return "Redis on 127.0.0.1:6379 did not answer PING"
    except OSError as exc:
        return f"Redis on 127.0.0.1:6379 unreachable ({exc})"
    return None
