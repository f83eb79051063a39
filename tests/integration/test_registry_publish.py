"""Publishing to a real MLflow SQLite store: idempotent retries, compare-and-set promotion,
concurrent publishers, the promotion lock, a fresh store opened twice at once, and an
unreachable tracking server."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import threading

import pytest
from support.lifecycle import cycle
from support.registry import champion as _champion
from support.registry import client as _client
from support.registry import copy_model as _copy
from support.registry import two_champions as _two_champions

from emflow.config import Settings
from emflow.model.gate import Decision

# every test here writes a real MLflow SQLite store (1-10 s each, 4 s to import mlflow)
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def test_retried_publish_registers_one_version(settings, trained, holdout, tmp_path):
    from emflow.registry.publish import publish
    from emflow.run.evaluate import evaluate
    from emflow.run.gate import gate

    model_dir, info = _copy(trained, "good", tmp_path)
    evaluation = evaluate(model_dir, holdout, settings)
    decision = gate(evaluation, model_dir, settings)
    kwargs = dict(
        run_key="dag/run-7",
        data_window="2026-11-01..2026-11-02",
        train_info=info,
        settings=settings,
    )
    first = publish(decision, model_dir, **kwargs)
    again = publish(decision.to_dict(), model_dir, **kwargs)
    assert (first.version, first.reused) == ("1", False)
    assert (again.version, again.reused, again.run_id) == ("1", True, first.run_id)

    # a task killed after registering, before the aliases and the decision were recorded (so
    # before the champion move tagged the version promoted)
    client = _client(settings)
    name = settings.model_name
    client.delete_registered_model_alias(name, "champion")
    client.delete_registered_model_alias(name, "challenger")
    client.delete_model_version_tag(name, "1", "emflow.published")
    client.delete_model_version_tag(name, "1", "emflow.promoted_at")
    resumed = publish(decision, model_dir, **kwargs)
    assert resumed.version == "1" and resumed.promoted and resumed.run_id == first.run_id
    assert [str(v.version) for v in client.search_model_versions(f"name='{name}'")] == ["1"]
    experiment = client.get_experiment_by_name(settings.experiment_name)
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert _champion(settings) == "1"

    # killed after moving the champion alias, before recording that publishing completed
    client.delete_model_version_tag(name, "1", "emflow.published")
    resumed = publish(decision, model_dir, **kwargs)
    assert resumed.promoted and resumed.decision == "promote" and not resumed.reused
    assert [str(v.version) for v in client.search_model_versions(f"name='{name}'")] == ["1"]


def test_a_retry_registers_the_model_its_stopped_attempt_logged_unless_retrained(
    settings, trained, holdout, tmp_path
):
    """An attempt stopped after ``log_model``, before registering (here: its version deleted
    again), leaves a finished logged model in its run: the retry registers that one instead of
    logging a second; if the run key was trained again (other files), it logs the new files."""
    from emflow.registry.publish import publish
    from emflow.run.evaluate import evaluate
    from emflow.run.gate import gate

    client = _client(settings)
    name = settings.model_name

    def logged(run_key):
        experiments = [e.experiment_id for e in client.search_experiments()]
        return sorted(
            m.model_id
            for m in client.search_logged_models(experiment_ids=experiments)
            if m.tags.get("emflow.run_key") == run_key and m.status.name == "READY"
        )

    model_dir, info = _copy(trained, "good", tmp_path)
    decision = gate(evaluate(model_dir, holdout, settings), model_dir, settings)
    kwargs = dict(run_key="dag/run-9", data_window="w", train_info=info, settings=settings)
    first = publish(decision, model_dir, **kwargs)
    (model_id,) = logged("dag/run-9")
    client.delete_model_version(name, first.version)  # as if stopped before registering
    again = publish(decision, model_dir, **kwargs)
    assert logged("dag/run-9") == [model_id]
    assert model_id in client.get_model_version(name, again.version).source

    client.delete_model_version(name, again.version)
    other, _ = _copy(trained, "small", tmp_path)  # the run key trained again, other files
    retrained = publish(gate(evaluate(other, holdout, settings), other, settings), other, **kwargs)
    assert len(logged("dag/run-9")) == 2
    assert model_id not in client.get_model_version(name, retrained.version).source


def test_a_retry_deletes_an_unfinished_logged_model_only_once_its_upload_is_abandoned(
    settings, trained, holdout, tmp_path, monkeypatch
):
    """A PENDING logged model in the run (an attempt stopped mid-upload) is deleted by the retry
    when its writer's process is gone or its upload is older than the stale age; one of a live
    writer elsewhere (an attempt uploading now, on another host) is left alone."""
    from emflow.registry import aliases
    from emflow.registry.publish import WRITER_PREFIX, publish
    from emflow.run.evaluate import evaluate
    from emflow.run.gate import gate

    client = _client(settings)
    name = settings.model_name
    model_dir, info = _copy(trained, "good", tmp_path)
    decision = gate(evaluate(model_dir, holdout, settings), model_dir, settings)
    kwargs = dict(run_key="dag/run-5", data_window="w", train_info=info, settings=settings)
    first = publish(decision, model_dir, **kwargs)
    experiment = client.get_experiment_by_name(settings.experiment_name).experiment_id

    def pending(host, pid):
        return client.create_logged_model(
            experiment,
            name="model",
            source_run_id=first.run_id,
            tags={
                "emflow.run_key": "dag/run-5",
                f"{WRITER_PREFIX}host": host,
                f"{WRITER_PREFIX}pid": str(pid),
            },
        ).model_id

    def live_pending():
        return sorted(
            m.model_id
            for m in client.search_logged_models(experiment_ids=[experiment])
            if m.status.name == "PENDING"
        )

    exited = subprocess.Popen(["true"])
    exited.wait()  # its pid: a process of this host that is gone
    gone = pending(socket.gethostname(), exited.pid)
    elsewhere = pending("another-host", 1)
    assert live_pending() == sorted([gone, elsewhere])
    client.delete_model_version(name, first.version)  # as if stopped before registering
    again = publish(decision, model_dir, **kwargs)
    assert live_pending() == [elsewhere]

    client.delete_model_version(name, again.version)
    monkeypatch.setattr(aliases, "LOCK_STALE_AFTER_S", 0.0)  # the other upload is stale now
    publish(decision, model_dir, **kwargs)
    assert live_pending() == []


def _publish_promoting(settings, trained, tmp_path, key, over):
    """Publish ``trained[key]`` with a gate decision to promote it over champion ``over``."""
    from emflow.registry.publish import publish

    model_dir, info = _copy(trained, "good", tmp_path, key)
    decision = Decision(
        promote=True, reason=f"better than v{over}", model_dir=str(model_dir), champion_version=over
    )
    kwargs = dict(run_key=f"dag/{key}", data_window="w", train_info=info, settings=settings)
    return publish(decision, model_dir, **kwargs), (decision, model_dir, kwargs)


def _killed_after_its_move(settings, version):
    """What a publish killed after moving the champion, before recording its decision, leaves."""
    _client(settings).delete_model_version_tag(settings.model_name, version, "emflow.published")


def test_a_retried_publish_does_not_undo_a_rollback_made_after_its_move(
    settings, trained, holdout, tmp_path
):
    """QA probe: v2's publish killed after promoting it, on-call rolled back to v1, Airflow
    retried the publish: the retry moved the champion to v2 again (compare-and-set against v1
    passed), silently serving the model on-call had just taken out."""
    from emflow.registry.publish import publish
    from emflow.registry.rollback import rollback

    _publish_promoting(settings, trained, tmp_path, "r1", None)
    first, (decision, model_dir, kwargs) = _publish_promoting(
        settings, trained, tmp_path, "r2", "1"
    )
    assert first.version == "2" and _champion(settings) == "2"
    _killed_after_its_move(settings, "2")
    rollback(reason="v2 misbehaves", actor="on-call", settings=settings)
    assert _champion(settings) == "1"
    retried = publish(decision, model_dir, **kwargs)
    assert _champion(settings) == "1"  # the rollback stands
    assert retried.version == "2" and retried.decision == "promote" and not retried.promoted


def test_a_retried_publish_of_an_earlier_run_ends_as_the_runs_in_order_would(
    settings, trained, holdout, tmp_path
):
    """QA probe: v2's publish killed after promoting it, v3 promoted over v2, then v2's retry
    recorded v2 "reject" (the champion had moved), moved `challenger` back to v2, and a plain
    rollback to v2 (the previous champion, once in service) was refused as a rejected model."""
    from emflow.registry.publish import publish
    from emflow.registry.rollback import rollback

    _publish_promoting(settings, trained, tmp_path, "r1", None)
    _, (decision, model_dir, kwargs) = _publish_promoting(settings, trained, tmp_path, "r2", "1")
    _killed_after_its_move(settings, "2")
    _publish_promoting(settings, trained, tmp_path, "r3", "2")
    retried = publish(decision, model_dir, **kwargs)
    assert retried.decision == "promote" and _champion(settings) == "3"
    client = _client(settings)
    aliases = client.get_registered_model(settings.model_name).aliases
    assert {k: str(v) for k, v in aliases.items()} == {
        "champion": "3",
        "previous-champion": "2",
        "challenger": "3",
    }
    record = rollback(reason="v3 misbehaves", actor="on-call", settings=settings)
    assert str(record["version"]) == "2" and _champion(settings) == "2"


def test_killed_before_registration_reuses_its_run(settings, trained, holdout, tmp_path):
    from emflow.registry import tracking

    model_dir, info = _copy(trained, "good", tmp_path)
    client = tracking.connect(settings)
    experiment_id = tracking.ensure_experiment(client, settings)
    orphan = client.create_run(experiment_id, tags={"emflow.run_key": "run-k"})  # then killed
    *_, result = cycle(settings, model_dir, holdout, "run-k", info)
    assert result.run_id == orphan.info.run_id
    assert len(client.search_runs([experiment_id])) == 1
    assert client.get_run(orphan.info.run_id).info.status == "FINISHED"


def test_promotion_is_refused_when_the_champion_moved_meanwhile(
    settings, trained, holdout, tmp_path
):
    from emflow.registry.publish import publish

    _two_champions(settings, trained, holdout, tmp_path)
    stale_dir, info = _copy(trained, "good", tmp_path, "stale")
    stale = Decision(
        promote=True,
        reason="gate said promote against v1",
        model_dir=str(stale_dir),
        champion_version="1",
    )  # evaluated while v1 was champion
    result = publish(
        stale, stale_dir, run_key="run-stale", data_window="w", train_info=info, settings=settings
    )
    assert result.version == "3" and not result.promoted and result.decision == "reject"
    assert "champion moved from v1 to v2" in result.reason
    assert "(a concurrent run promoted first)" in result.reason
    assert _champion(settings) == "2"

    # moved by an operator's rollback instead: the reason says so (it said "a concurrent run")
    from emflow.registry.rollback import rollback

    rollback(reason="v2 pages on-call", actor="on-call", settings=settings)
    gated_dir, _ = _copy(trained, "good", tmp_path, "gated")
    gated = Decision(
        promote=True, reason="better than v2", model_dir=str(gated_dir), champion_version="2"
    )
    result = publish(
        gated, gated_dir, run_key="run-gated", data_window="w", train_info=info, settings=settings
    )
    assert result.decision == "reject" and _champion(settings) == "1"
    assert "moved from v2 to v1 after this challenger was evaluated (a rollback by on-call" in (
        result.reason
    )


def test_two_runs_finishing_at_once_never_both_promote(settings, trained, holdout, tmp_path):
    from emflow.registry.publish import publish

    # Both gated against "no champion": each would promote on its own.
    dirs = [_copy(trained, "good", tmp_path, f"m{i}") for i in range(2)]
    publish(  # create experiment and registered model first, so the race is on aliases
        Decision(promote=False, reason="warm-up", model_dir=str(dirs[0][0]), champion_version=None),
        dirs[0][0],
        run_key="warm-up",
        data_window="w",
        train_info={},
        settings=settings,
    )
    results, errors = {}, []
    barrier = threading.Barrier(2)

    def publish_one(i):
        try:
            decision = Decision(
                promote=True, reason="first model", model_dir=str(dirs[i][0]), champion_version=None
            )
            barrier.wait()
            results[i] = publish(
                decision,
                dirs[i][0],
                run_key=f"race-{i}",
                data_window="w",
                train_info=dirs[i][1],
                settings=settings,
            )
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=publish_one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    promoted = [r for r in results.values() if r.promoted]
    assert len(promoted) == 1
    loser = next(r for r in results.values() if not r.promoted)
    assert "concurrent run promoted first" in loser.reason
    assert _champion(settings) == promoted[0].version


def test_one_run_key_published_twice_at_once_registers_one_version(
    settings, trained, holdout, tmp_path
):
    """Issue 16.4: the same run id executed twice at once (a zombie task and its retry)
    registered two versions with one run key."""
    import threading

    from emflow.registry.publish import publish
    from emflow.run.evaluate import evaluate
    from emflow.run.gate import gate

    model_dir, info = _copy(trained, "good", tmp_path)
    decision = gate(evaluate(model_dir, holdout, settings), model_dir, settings)
    results, errors = [], []
    barrier = threading.Barrier(2)

    def attempt():
        try:
            barrier.wait()
            results.append(
                publish(
                    decision,
                    model_dir,
                    run_key="zombie-and-retry",
                    data_window="w",
                    train_info=info,
                    settings=settings,
                )
            )
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    versions = _client(settings).search_model_versions(
        f"name = '{settings.model_name}' and tags.`emflow.run_key` = 'zombie-and-retry'"
    )
    assert len(versions) == 1
    assert {r.version for r in results} == {str(versions[0].version)}
    assert _champion(settings) == str(versions[0].version)


def test_a_lock_whose_holder_died_is_broken_at_once(settings):
    """Issue 16.5: a crashed lock holder blocked every publish and rollback for ~5 minutes,
    logged as "MLflow unreachable"."""
    import os
    import subprocess
    import sys
    import time

    from emflow.registry import aliases
    from emflow.registry.tracking import connect, is_unreachable

    client = connect(settings)
    lock = aliases.lock_name(settings.model_name)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    client.create_registered_model(
        lock,
        tags={"holder": "killed publish", "pid": dead.stdout.strip(), "host": socket.gethostname()},
    )
    started = time.monotonic()
    with aliases.promotion_lock(client, settings.model_name, holder="retry", timeout_s=20):
        held = client.get_registered_model(lock)
        assert held.tags["pid"] == str(os.getpid()) and held.tags["holder"] == "retry"
    assert time.monotonic() - started < 15
    assert not aliases.registered_model_exists(client, lock)

    # a live holder is waited for, and the wait is not taken for an unreachable server
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as alive:
        try:
            client.create_registered_model(
                lock,
                tags={
                    "holder": "running publish",
                    "pid": str(alive.pid),
                    "host": socket.gethostname(),
                },
            )
            with pytest.raises(aliases.LockTimeoutError, match="stayed taken") as waited:
                with aliases.promotion_lock(client, settings.model_name, holder="x", timeout_s=2):
                    pass
            assert not is_unreachable(waited.value)
        finally:
            alive.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_retried_then_fails_clearly_keeping_the_model(
    trained, tmp_path, monkeypatch
):
    from emflow.registry.publish import publish
    from emflow.registry.tracking import TrackingUnavailableError

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    settings = Settings(
        home=tmp_path / "home",
        tracking_uri=f"http://127.0.0.1:{_free_port()}",
        mlflow_retries=3,
        mlflow_backoff_s=0.05,
    )
    model_dir, info = _copy(trained, "good", tmp_path)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in model_dir.iterdir()}
    decision = Decision(
        promote=True, reason="first", model_dir=str(model_dir), champion_version=None
    )
    with pytest.raises(TrackingUnavailableError) as caught:
        publish(
            decision,
            model_dir,
            run_key="run-x",
            data_window="w",
            train_info=info,
            settings=settings,
        )
    message = str(caught.value)
    assert "3 attempts" in message and str(model_dir) in message and "run-x" in message
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in model_dir.iterdir()}
    assert after == before and set(before) == {"model.npz", "model.json"}


_FIRST_RUN = """
import sys, time
from pathlib import Path
from emflow.config import Settings
from emflow.registry.tracking import connect, ensure_experiment
import mlflow  # imported before the barrier: both then open the store at the same moment

home, me, other = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
me.touch()
while not other.exists():
    time.sleep(0.001)
settings = Settings(home=home)
client = connect(settings)
print("experiment", ensure_experiment(client, settings))
"""


def test_two_first_ever_runs_on_a_fresh_sqlite_store_both_succeed(tmp_path):
    """Issue 16.9: two processes opening a fresh SQLite store at once raced in MLflow's schema
    creation (alembic: "expected to match one row ... 0 found" or "duplicate column name")."""
    import subprocess
    import sys

    home = tmp_path / "home"
    ready = [tmp_path / "ready-a", tmp_path / "ready-b"]
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _FIRST_RUN, str(home), str(me), str(other)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me, other in (ready, ready[::-1])
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err[-2000:]
        assert out.strip() == "experiment 1"
