"""Reading a real MLflow SQLite registry: ``emflow status`` (through MLflow or the SQLite file
directly), the CLI's status and rollback output, ``emflow score`` with the champion, and
loading the champion (the installed loader, a damaged cached copy)."""

from __future__ import annotations

import os

import pytest
from support.registry import champion as _champion
from support.registry import client as _client
from support.registry import copy_model as _copy
from support.registry import model_files as _model_files
from support.registry import two_champions as _two_champions

# every test here writes a real MLflow SQLite store (1-10 s each, 4 s to import mlflow)
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def test_status_of_an_empty_registry(settings, monkeypatch, capsys):
    from emflow import cli
    from emflow.registry.status import status

    assert status(settings)["versions"] == []
    monkeypatch.setenv("EMFLOW_HOME", str(settings.home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["status"]) == 0
    assert "no versions registered yet" in capsys.readouterr().out
    assert cli.main(["rollback", "--reason", "empty registry"]) == 2
    assert "no registered model" in capsys.readouterr().err


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
    # the metrics say so (QA probe: a rollback published nothing; dashboards showed v2's run)
    metrics = settings.metrics_textfile.read_text()
    assert 'emflow_rollback_champion_version{model="telemetry-gmm"} 1.0' in metrics
    assert cli.main(["status", "--json"]) == 0
    assert '"champion": "1"' in capsys.readouterr().out


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
