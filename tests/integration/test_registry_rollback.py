"""Rollback on a real MLflow SQLite store: back to the previous champion, its refusals (unknown,
gate-rejected, unloadable or code-carrying versions), and a rollback killed between its
alias moves."""

from __future__ import annotations

import pickle

import pytest
from support.lifecycle import cycle
from support.registry import champion as _champion
from support.registry import client as _client
from support.registry import copy_model as _copy
from support.registry import model_files as _model_files
from support.registry import two_champions as _two_champions

# every test here writes a real MLflow SQLite store (1-10 s each, 4 s to import mlflow)
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


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

    # a second plain rollback would undo the first (QA probe: on-call unsure whether it worked
    # ran it twice and served v2 again); naming the version still undoes it on purpose
    from emflow.registry.rollback import RepeatedRollbackError

    with pytest.raises(
        RepeatedRollbackError, match=r"by a rollback from v2 \(alice at .*--version 2"
    ):
        rollback(reason="v2 pages on-call", actor="bob", settings=settings)
    assert _champion(settings) == "1"

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
