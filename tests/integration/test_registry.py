"""Registry behaviour on a real MLflow SQLite store: idempotent retries, compare-and-set
promotion, rollback (and its refusals), the CLI, and an unreachable tracking server."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import socket
import threading

import pytest
from support.lifecycle import cycle, telemetry, train

from emflow.config import Settings
from emflow.model.gate import Decision

# every test here writes a real MLflow SQLite store (1-10 s each, 4 s to import mlflow)
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def holdout():
    return telemetry(400, seed=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    data = telemetry(1500, seed=1)
    return {
        "good": (root / "good", train(data, root / "good", seed=0)[1]),
        "small": (root / "small", train(data.iloc[:120], root / "small", seed=3, n_init=1)[1]),
    }


def _copy(trained, key, tmp_path, name=None):
    source, info = trained[key]
    target = tmp_path / (name or key)
    shutil.copytree(source, target)
    return target, info


def _client(settings):
    from mlflow import MlflowClient

    return MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)


def _champion(settings):
    from emflow.registry import aliases as registry

    return registry.alias_version(_client(settings), settings.model_name, "champion")


def _two_champions(settings, trained, holdout, tmp_path):
    """v1 (fitted on 120 rows) promoted, then v2 (good) promoted over it."""
    small_dir, small_info = _copy(trained, "small", tmp_path)
    cycle(settings, small_dir, holdout, "run-1", small_info)
    good_dir, good_info = _copy(trained, "good", tmp_path)
    *_, second = cycle(settings, good_dir, holdout, "run-2", good_info)
    assert second.promoted and _champion(settings) == "2"


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

    # a task killed after registering, before the aliases and the decision were recorded
    client = _client(settings)
    name = settings.model_name
    client.delete_registered_model_alias(name, "champion")
    client.delete_registered_model_alias(name, "challenger")
    client.delete_model_version_tag(name, "1", "emflow.published")
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


def test_status_of_an_empty_registry(settings, monkeypatch, capsys):
    from emflow import cli
    from emflow.registry.status import status

    assert status(settings)["versions"] == []
    monkeypatch.setenv("EMFLOW_HOME", str(settings.home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["status"]) == 0
    assert "no versions registered yet" in capsys.readouterr().out
    assert cli.main(["rollback", "--reason", "x"]) == 2
    assert "no registered model" in capsys.readouterr().err


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
    assert _champion(settings) == "2"


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


def test_rollback_to_previous_champion_and_refusals(settings, trained, holdout, tmp_path):
    from emflow.registry.rollback import UnknownVersionError, rollback
    from emflow.registry.status import status

    _two_champions(settings, trained, holdout, tmp_path)
    record = rollback(reason="v2 pages on-call", actor="alice", settings=settings)
    assert (record["version"], record["previous"], record["changed"]) == ("1", "2", True)
    assert record["check"]["rows"] > 0
    client = _client(settings)
    name = settings.model_name
    assert _champion(settings) == "1"
    assert str(client.get_model_version_by_alias(name, "previous-champion").version) == "2"
    tags = client.get_model_version(name, "1").tags
    assert tags["emflow.rollback_by"] == "alice"
    assert tags["emflow.rollback_reason"] == "v2 pages on-call"
    assert tags["emflow.rollback_from"] == "2" and tags["emflow.rollback_at"]

    for unknown in (99, "banana"):
        with pytest.raises(UnknownVersionError, match="does not exist"):
            rollback(unknown, reason="typo", settings=settings)
        assert _champion(settings) == "1"
    with pytest.raises(ValueError, match="needs a reason"):
        rollback(2, reason="  ", settings=settings)
    assert _champion(settings) == "1"
    # "01" is version 1, the champion already: nothing moves, previous-champion stays v2
    again = rollback("01", reason="typed with a zero", settings=settings)
    assert (again["version"], again["changed"]) == ("1", False)

    report = status(settings)
    assert report["aliases"] == {"champion": "1", "challenger": "2", "previous-champion": "2"}
    assert [v["version"] for v in report["versions"]] == ["2", "1"]
    assert report["last_rollback"]["actor"] == "alice"


def test_rollback_to_a_version_the_gate_rejected_needs_force(
    settings, trained, holdout, tmp_path, monkeypatch, capsys
):
    """Issue 16.12: ``emflow rollback --version N`` promoted a rejected version silently."""
    from emflow import cli
    from emflow.registry.rollback import RejectedVersionError, rollback

    _two_champions(settings, trained, holdout, tmp_path)
    small_dir, small_info = _copy(trained, "small", tmp_path, name="small-again")
    *_, third = cycle(settings, small_dir, holdout, "run-3", small_info)
    assert third.decision == "reject" and _champion(settings) == "2"
    with pytest.raises(RejectedVersionError, match="rejected by the gate.*force"):
        rollback(3, reason="try v3", settings=settings)
    assert _champion(settings) == "2"
    monkeypatch.setenv("EMFLOW_HOME", str(settings.home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["rollback", "--version", "3", "--reason", "try v3"]) == 2
    assert "--force" in capsys.readouterr().err and _champion(settings) == "2"
    assert cli.main(["rollback", "--version", "3", "--reason", "on purpose", "--force"]) == 0
    assert _champion(settings) == "3"
    record = rollback(2, reason="back to v2", settings=settings)  # v2 was promoted: no force
    assert record["changed"] and record["forced"] is False and _champion(settings) == "2"


def test_rollback_refuses_a_version_that_does_not_load(settings, trained, holdout, tmp_path):
    from emflow.registry.rollback import RollbackCheckError, rollback

    _two_champions(settings, trained, holdout, tmp_path)
    client = _client(settings)
    source = client.get_model_version(settings.model_name, "1").source  # models:/m-<id>
    model_id = source.split("/")[-1]
    npz = next(settings.artifact_root.rglob(f"{model_id}/artifacts/data/gmm/model.npz"))
    npz.write_bytes(npz.read_bytes()[:100])  # damaged in the artifact store
    with pytest.raises(RollbackCheckError, match="champion left unchanged"):
        rollback(1, reason="try v1", settings=settings)
    assert _champion(settings) == "2"


def _model_files(settings, version):
    """The artifact-store folder of registry version ``version`` (where MLmodel lies)."""
    source = _client(settings).get_model_version(settings.model_name, version).source
    return next(settings.artifact_root.rglob(f"{source.split('/')[-1]}/artifacts/MLmodel")).parent


class _Exec:
    """Unpickles as exec(payload)."""

    def __init__(self, payload):
        self.payload = payload

    def __reduce__(self):
        return (exec, (self.payload,))


def _tamper(folder, marker, how):
    """Edit a logged model as a registry writer could, so that loading it would write marker."""
    import yaml

    payload = f"open({str(marker)!r}, 'w').write('ran')\n"
    meta = yaml.safe_load((folder / "MLmodel").read_text())
    conf = meta["flavors"]["python_function"]
    if how == "code folder":  # a code/ folder first on sys.path, shadowing the loader
        package = folder / "code" / "emflow" / "model"
        package.mkdir(parents=True)
        (folder / "code" / "emflow" / "__init__.py").write_text(payload)
        (package / "__init__.py").write_text("")
        (package / "pyfunc_model.py").write_text(payload + "def _load_pyfunc(p): pass\n")
        conf["code"] = "code"
    elif how == "other loader":  # a loader shipped in the artifact, as "models from code" did
        (folder / "data" / "evil.py").write_text(payload + "def _load_pyfunc(p): pass\n")
        conf["loader_module"] = "evil"
        conf["code"] = "data"
    else:  # MLflow's cloudpickle path: a pickled python_model runs code when unpickled
        conf["loader_module"] = "mlflow.pyfunc.model"
        conf["python_model"] = "python_model.pkl"
        (folder / "python_model.pkl").write_bytes(pickle.dumps(_Exec(payload)))
    (folder / "MLmodel").write_text(yaml.safe_dump(meta))


@pytest.mark.parametrize("how", ["code folder", "other loader", "pickled model"])
def test_rollback_runs_no_code_from_the_artifact_store(
    settings, trained, holdout, tmp_path, how, monkeypatch
):
    """Registry write access is not code execution (issue 16.8): a logged model is data for the
    installed loader; an artifact edited to carry code is refused before anything is imported."""
    from emflow.registry.rollback import RollbackCheckError, rollback

    _two_champions(settings, trained, holdout, tmp_path)
    marker = tmp_path / "foreign-code-ran"
    _tamper(_model_files(settings, "1"), marker, how)
    monkeypatch.syspath_prepend(str(tmp_path))  # where a shadowing package would be found
    with pytest.raises(RollbackCheckError, match="refusing the model.*champion left unchanged"):
        rollback(1, reason="try v1", settings=settings)
    assert not marker.exists() and _champion(settings) == "2"


def test_a_logged_model_serves_from_the_installed_package(settings, trained, holdout, tmp_path):
    """The artifact holds no Python file: MLflow's loader imports emflow.model.pyfunc_model."""
    import mlflow

    from emflow.model.pyfunc_model import check_artifact

    _two_champions(settings, trained, holdout, tmp_path)
    folder = _model_files(settings, "2")
    assert sorted(p.suffix for p in folder.rglob("*.py")) == []
    check_artifact(folder)
    loaded = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@champion")
    assert loaded.loader_module == "emflow.model.pyfunc_model"
    scored = loaded.predict(loaded.input_example)
    assert list(scored.columns) == ["component", "responsibility", "log_likelihood"]


def test_cli_status_and_rollback(settings, trained, holdout, tmp_path, monkeypatch, capsys):
    from emflow import cli

    _two_champions(settings, trained, holdout, tmp_path)
    monkeypatch.setenv("EMFLOW_HOME", str(settings.home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "champion -> v2" in out and "previous-champion -> v1" in out and "promote" in out

    assert cli.main(["rollback", "--version", "7", "--reason", "typo"]) == 2
    assert "version '7'" in capsys.readouterr().err
    assert _champion(settings) == "2"

    assert cli.main(["rollback", "--reason", "bad latency", "--actor", "bob"]) == 0
    assert "v2 -> v1" in capsys.readouterr().out
    assert _champion(settings) == "1"
    assert cli.main(["status", "--json"]) == 0
    assert '"champion": "1"' in capsys.readouterr().out


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


def test_emflow_score_uses_the_champion_or_a_given_version(
    settings, trained, holdout, tmp_path, monkeypatch, capsys
):
    """Issue 16.14: no emflow way to score a file with the champion."""
    import pandas as pd

    from emflow import cli

    monkeypatch.setenv("EMFLOW_HOME", str(settings.home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rows = tmp_path / "rows.parquet"
    holdout.to_parquet(rows, index=False)
    assert cli.main(["score", str(rows)]) == 2
    assert "no registry at" in capsys.readouterr().err
    assert not (settings.home / "mlflow.db").exists()  # scoring creates no registry
    _two_champions(settings, trained, holdout, tmp_path)
    capsys.readouterr()
    assert cli.main(["score", str(rows)]) == 0
    out, err = capsys.readouterr()
    assert "v2" in err and f"scored {len(holdout)} rows" in err
    import io

    scored = pd.read_csv(io.StringIO(out))
    assert list(scored.columns) == ["event_id", "component", "responsibility", "log_likelihood"]
    assert len(scored) == len(holdout) and scored["log_likelihood"].notna().all()
    assert (scored["event_id"] == holdout["event_id"].to_numpy()).all()
    target = tmp_path / "v1.csv"
    assert cli.main(["score", str(rows), "--version", "1", "--out", str(target)]) == 0
    by_v1 = pd.read_csv(target)
    assert not by_v1["log_likelihood"].equals(scored["log_likelihood"])  # another model
    assert cli.main(["score", str(rows), "--version", "9"]) == 2
    assert "does not exist" in capsys.readouterr().err


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


KILL_AT_FIRST_ALIAS_MOVE = """
import os, signal, sys
import mlflow
from emflow.config import Settings
from emflow.registry.rollback import rollback

original = mlflow.MlflowClient.set_registered_model_alias

def killed(self, name, alias, version):  # SIGKILL right after the first alias write
    original(self, name, alias, version)
    os.kill(os.getpid(), signal.SIGKILL)

mlflow.MlflowClient.set_registered_model_alias = killed
rollback(reason="v2 pages on-call", actor="alice", settings=Settings())
"""


def test_a_rollback_killed_between_its_alias_moves_is_finished_by_the_retry(
    settings, trained, holdout, tmp_path
):
    """Issue 16.1: a rollback killed between moving previous-champion and champion left both
    aliases on the bad version; the retry said "already the champion; nothing changed" and the
    lock stayed behind."""
    import os
    import signal
    import subprocess
    import sys

    from emflow.registry import aliases
    from emflow.registry.rollback import rollback
    from emflow.registry.status import status

    _two_champions(settings, trained, holdout, tmp_path)  # champion v2, previous-champion v1
    env = {**os.environ, "EMFLOW_HOME": str(settings.home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_FIRST_ALIAS_MOVE],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    client = _client(settings)
    assert aliases.registered_model_exists(client, aliases.lock_name(settings.model_name))

    record = rollback(reason="v2 pages on-call (retry)", actor="alice", settings=settings)
    assert (record["version"], record["previous"], record["changed"]) == ("1", "2", True)
    assert record["resumed"] is True and record["reason"] == "v2 pages on-call"  # the killed one
    report = status(settings)  # what the uninterrupted rollback leaves
    assert report["aliases"] == {"champion": "1", "challenger": "2", "previous-champion": "2"}
    assert report["last_rollback"]["reason"] == "v2 pages on-call"
    tags = client.get_model_version(settings.model_name, "1").tags
    assert tags["emflow.rollback_by"] == "alice" and tags["emflow.rollback_from"] == "2"
    assert not aliases.registered_model_exists(client, aliases.lock_name(settings.model_name))
    assert aliases.pending_move(client, settings.model_name) is None
    # a retry naming the version finds the move done and changes nothing more
    again = rollback(1, reason="v2 pages on-call (retry 2)", actor="alice", settings=settings)
    assert again["changed"] is False and again["version"] == "1"


def test_a_damaged_cached_champion_copy_is_fetched_again(settings, trained, holdout, tmp_path):
    """Issue 16.7: a corrupted cached champion copy was never refreshed from the store, so every
    later retrain failed until someone deleted the cache."""
    from emflow.registry.champion import load_champion
    from emflow.run.evaluate import evaluate

    _two_champions(settings, trained, holdout, tmp_path)
    version, cached = load_champion(settings)
    npz = cached / "model.npz"
    npz.write_bytes(npz.read_bytes()[:200])  # damaged on local disk
    model_dir, _ = _copy(trained, "good", tmp_path, name="next")
    evaluation = evaluate(model_dir, holdout, settings)  # would raise ModelFileError before
    assert evaluation.champion_version == version and evaluation.champion_mean_loglik is not None
    again_version, again = load_champion(settings)
    assert again == cached and (again / "model.npz").stat().st_size > 200
    assert list(cached.parent.glob(f"{cached.name}.damaged-*"))  # kept aside, not deleted


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


def test_status_reads_a_sqlite_store_without_mlflow_and_agrees_with_it(
    settings, trained, holdout, tmp_path
):
    """Issue 16.15: registry commands took 5-19 s, mostly importing MLflow and opening its
    store; `emflow status` on the embedded default now reads the SQLite file directly (no
    MLflow import) and reports what MLflow's client reports (a schema change shows up here)."""
    import subprocess
    import sys

    from emflow.registry.rollback import rollback
    from emflow.registry.status import _read_sqlite_store, _read_through_mlflow

    _two_champions(settings, trained, holdout, tmp_path)
    rollback(1, reason="compare readers", settings=settings)
    name = settings.model_name
    direct = _read_sqlite_store(settings.tracking_uri, name)
    assert direct is not None and direct == _read_through_mlflow(settings, name)
    assert direct[1] == {"champion": "1", "previous-champion": "2", "challenger": "2"}
    _client(settings).delete_model_version(name, "2")
    direct = _read_sqlite_store(settings.tracking_uri, name)
    assert direct == _read_through_mlflow(settings, name)
    assert [v["version"] for v in direct[2]] == ["1"]

    script = (
        "import sys; from emflow import cli; code = cli.main(['status']); "
        "print('MLFLOW' if 'mlflow' in sys.modules else 'no mlflow', code)"
    )
    env = {**os.environ, "EMFLOW_HOME": str(settings.home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip().splitlines()[-1] == "no mlflow 0", done.stdout + done.stderr
    assert "champion -> v1" in done.stdout
