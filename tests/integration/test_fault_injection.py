"""Fault injection: publish and rollback killed with SIGKILL right after each registry write, then
retried in a fresh process; every retry must leave the registry as an uninterrupted run does:
one version per run key, ``champion`` and ``previous-champion`` where they belong, no lock and no
half-done champion move left (issue 16).

A driver process imports MLflow and emflow once, then forks one child per kill point: the child
counts the registry writes of its ``MlflowClient`` and SIGKILLs itself right after write N, on
its own copy of the registry; a second child, unpatched, retries the same call on that copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from support.lifecycle import cycle, telemetry, train

from emflow.config import Settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

REGISTRY_WRITES = (
    "create_registered_model",
    "delete_registered_model",
    "create_model_version",
    "set_registered_model_alias",
    "delete_registered_model_alias",
    "set_model_version_tag",
    "set_registered_model_tag",
    "delete_registered_model_tag",
    # log_model's writes (MLflow 3 logged models): a retry reuses a finished one
    "_create_logged_model",
    "log_model_artifacts",
    "finalize_logged_model",
)

DRIVER = textwrap.dedent(
    """
    import json, os, shutil, signal, sys
    import mlflow
    from emflow.config import Settings
    from emflow.registry.publish import publish
    from emflow.registry.rollback import rollback

    job = json.loads(sys.argv[1])
    WRITES = job["writes"]

    def run_job():
        settings = Settings()
        if job["kind"] == "publish":
            publish(job["decision"], job["model_dir"], run_key=job["run_key"],
                    data_window="2026-11-01..2026-11-02", train_info=job["info"],
                    settings=settings)
        else:
            rollback(reason="fault injection", actor="ops", settings=settings,
                     request_id="gmm_rollback/manual__1")

    def child(home, kill_at):
        os.environ["EMFLOW_HOME"] = home
        if kill_at:
            count = [0]
            for method in WRITES:
                original = getattr(mlflow.MlflowClient, method)
                def wrapped(self, *a, _original=original, **k):
                    result = _original(self, *a, **k)
                    count[0] += 1
                    if count[0] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return result
                setattr(mlflow.MlflowClient, method, wrapped)
        try:
            run_job()
        except BaseException as error:  # noqa: BLE001 - reported to the test
            print(f"CHILD ERROR {type(error).__name__}: {error}", flush=True)
            os._exit(3)
        os._exit(0)

    def fork(home, kill_at):
        pid = os.fork()
        if pid == 0:
            child(home, kill_at)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            return -os.WTERMSIG(status)
        return os.WEXITSTATUS(status)

    results = []
    for kill_at in range(1, job["max_writes"] + 1):
        home = f"{job['root']}/kill-{kill_at}"
        shutil.copytree(job["before"], home)
        killed = fork(home, kill_at)
        retried = fork(home, 0) if killed == -signal.SIGKILL else None
        results.append({"kill_at": kill_at, "home": home, "first": killed, "retry": retried})
        print(json.dumps(results[-1]), flush=True)
        if killed != -signal.SIGKILL:  # the run made fewer writes: every point is covered
            break
    print("RESULTS" + json.dumps(results), flush=True)
    """
)


def registry_state(home: Path) -> dict:
    """What an operator (and the next run) sees of the registry under ``home``."""
    from mlflow import MlflowClient

    from emflow.registry.aliases import pending_move

    settings = Settings(home=home)
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    name = settings.model_name
    model = client.get_registered_model(name)
    versions = client.search_model_versions(f"name = '{name}'")
    last = json.loads((model.tags or {}).get("emflow.last_rollback") or "null")
    experiments = [e.experiment_id for e in client.search_experiments()]
    logged = client.search_logged_models(experiment_ids=experiments)
    return {
        # logged models (deleted ones aside) by status: one READY per run, as uninterrupted; a
        # retry must leave neither a second unregistered one nor its killed attempt's PENDING one
        "logged_models_per_run_key": dict(
            Counter(f"{m.tags.get('emflow.run_key')} {m.status.name}" for m in logged)
        ),
        "aliases": {k: str(v) for k, v in (model.aliases or {}).items()},
        "versions_per_run_key": dict(Counter(v.tags.get("emflow.run_key") for v in versions)),
        "versions": sorted(
            (int(v.version), v.tags.get("emflow.decision"), v.tags.get("emflow.published"))
            for v in versions
        ),
        "locks": sorted(
            m.name for m in client.search_registered_models() if m.name.endswith("-lock")
        ),
        "pending_move": pending_move(client, name),
        "last_rollback": None
        if last is None
        else {k: last.get(k) for k in ("version", "previous", "reason", "request_id")},
    }


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A registry with v1 (small model) champion; a better challenger ready to publish."""
    root = tmp_path_factory.mktemp("faults")
    data, holdout = telemetry(1500, seed=1), telemetry(400, seed=2)
    small = root / "small"
    good = root / "good"
    _, small_info = train(data.iloc[:120], small, seed=3, n_init=1)
    _, good_info = train(data, good, seed=0)
    before = root / "before-publish"
    settings = Settings(home=before)
    cycle(settings, small, holdout, "run-1", small_info)
    from emflow.run.evaluate import evaluate
    from emflow.run.gate import gate

    decision = gate(evaluate(good, holdout, settings), good, settings)
    assert decision.promote
    return {
        "root": root,
        "before": before,
        "decision": decision,
        "good": good,
        "good_info": good_info,
        "holdout": holdout,
    }


def drive(job: dict, root: Path) -> list[dict]:
    job = {**job, "writes": list(REGISTRY_WRITES), "root": str(root), "max_writes": 40}
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(job, default=str)],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(out for out in proc.stdout.splitlines() if out.startswith("RESULTS"))
    return json.loads(line[len("RESULTS") :])


def test_publish_killed_after_any_registry_write_is_finished_by_its_retry(registry):
    from emflow.registry.publish import publish

    expected_home = registry["root"] / "publish-uninterrupted"
    shutil.copytree(registry["before"], expected_home)
    publish(
        registry["decision"],
        registry["good"],
        run_key="run-2",
        data_window="2026-11-01..2026-11-02",
        train_info=registry["good_info"],
        settings=Settings(home=expected_home),
    )
    expected = registry_state(expected_home)
    assert expected["aliases"] == {"champion": "2", "challenger": "2", "previous-champion": "1"}
    assert expected["versions_per_run_key"] == {"run-1": 1, "run-2": 1}
    assert expected["logged_models_per_run_key"] == {"run-1 READY": 1, "run-2 READY": 1}

    job = {
        "kind": "publish",
        "before": str(registry["before"]),
        "decision": registry["decision"].to_json(),
        "model_dir": str(registry["good"]),
        "run_key": "run-2",
        "info": registry["good_info"],
    }
    results = drive(job, registry["root"] / "publish")
    killed = [r for r in results if r["first"] == -9]
    assert len(killed) >= 8, results  # every registry write of a publish was a kill point
    assert results[-1]["first"] == 0  # and the last run got through uninterrupted
    for result in results:
        if result["first"] == -9:
            assert result["retry"] == 0, result
        assert registry_state(Path(result["home"])) == expected, result["kill_at"]


def test_rollback_killed_after_any_registry_write_is_finished_by_its_retry(registry):
    from emflow.registry.publish import publish
    from emflow.registry.rollback import rollback

    before = registry["root"] / "before-rollback"
    shutil.copytree(registry["before"], before)
    publish(
        registry["decision"],
        registry["good"],
        run_key="run-2",
        data_window="2026-11-01..2026-11-02",
        train_info=registry["good_info"],
        settings=Settings(home=before),
    )  # champion v2, previous-champion v1
    expected_home = registry["root"] / "rollback-uninterrupted"
    shutil.copytree(before, expected_home)
    rollback(
        reason="fault injection",
        actor="ops",
        settings=Settings(home=expected_home),
        request_id="gmm_rollback/manual__1",
    )
    expected = registry_state(expected_home)
    assert expected["aliases"] == {"champion": "1", "challenger": "2", "previous-champion": "2"}
    assert expected["last_rollback"]["request_id"] == "gmm_rollback/manual__1"

    results = drive({"kind": "rollback", "before": str(before)}, registry["root"] / "rollback")
    assert len([r for r in results if r["first"] == -9]) >= 5, results
    assert results[-1]["first"] == 0
    for result in results:
        if result["first"] == -9:
            assert result["retry"] == 0, result
        assert registry_state(Path(result["home"])) == expected, result["kill_at"]
