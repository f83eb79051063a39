"""``emflow score`` and ``emflow status`` on a registry: rows far outside the model, --limit with
--json, a closed output pipe. One SQLite registry (two calibrated versions) for the module."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from support.lifecycle import FEATURES, cycle, telemetry, train

from emflow.cli import main
from emflow.config import Settings

pytestmark = pytest.mark.slow  # creates the MLflow SQLite store and publishes twice (~15 s)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """EMFLOW_HOME of a registry holding v1 and v2 (champion) of a calibrated model."""
    import gmm_core

    root = tmp_path_factory.mktemp("score")
    settings = Settings(home=root / "home")
    holdout = telemetry(400, seed=2)
    model, info = train(telemetry(1500, seed=1), root / "model", seed=0)
    model.calibrate_threshold(telemetry(600, seed=3)[FEATURES].to_numpy(), false_alarm_rate=0.01)
    gmm_core.save_model(model, root / "model", feature_names=FEATURES)
    for run in ("run-1", "run-2"):
        shutil.copytree(root / "model", root / run)
        cycle(settings, root / run, holdout, run, info)
    return settings.home


@pytest.fixture()
def home(registry, monkeypatch):
    monkeypatch.setenv("EMFLOW_HOME", str(registry))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return registry


def test_rows_far_outside_the_model_are_anomalies_of_no_component(home, tmp_path, capsys):
    """D11: a row with req_rate 1e300 leaked NumPy overflow warnings, got responsibility NaN and
    component 0, and made the summary "mean log-likelihood -inf, lowest -inf"."""
    frame = telemetry(20, seed=5)
    frame.loc[2, "req_rate"] = 1e300  # overflows: log-likelihood -inf
    frame.loc[3, "req_rate"] = 1e20  # finite, very low
    rows, out = tmp_path / "rows.parquet", tmp_path / "scores.csv"
    frame.to_parquet(rows, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a leaked NumPy warning fails here
        assert main(["score", str(rows), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    scored = pd.read_csv(out)
    assert list(scored.columns) == [
        "event_id",
        "component",
        "responsibility",
        "log_likelihood",
        "p_value",
        "is_anomaly",
    ]
    far = scored.iloc[2]
    assert (far["component"], far["responsibility"]) == (-1, 0.0)
    assert far["log_likelihood"] == -np.inf and far["is_anomaly"]
    assert far["p_value"] == scored["p_value"].min()
    rest = scored.drop(index=2)
    assert (rest["component"] >= 0).all() and np.isfinite(rest["log_likelihood"]).all()
    assert rest["responsibility"].between(0, 1).all() and rest.loc[3, "is_anomaly"]
    mean = rest["log_likelihood"].mean()
    assert f"scored 20 rows with telemetry-gmm v2: mean log-likelihood {mean:.4e}," in err
    assert "1 row(s) far outside the model (log-likelihood -inf, component -1)" in err
    assert "lowest -inf" not in err and "RuntimeWarning" not in err


def test_status_json_shows_at_most_limit_versions(home, capsys):
    """D9: `--json` ignored `--limit` although the help promised "at most this many"."""
    assert main(["status", "--json", "--limit", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in report["versions"]] == ["2"] and report["versions_total"] == 2
    assert main(["status", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["versions"]) == 2
    assert main(["status", "--limit", "1"]) == 0
    assert "... 1 older version(s) (use --limit)" in capsys.readouterr().out


def test_scoring_into_a_closed_pipe_ends_quietly(home, tmp_path):
    """D6: `emflow score FILE | head` ended in a BrokenPipeError traceback."""
    rows = tmp_path / "rows.parquet"
    telemetry(5000, seed=6).to_parquet(rows, index=False)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line
    try:
        done = subprocess.run(
            [sys.executable, "-m", "emflow.cli", "score", str(rows)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
            timeout=300,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr


def test_features_stored_as_text_are_refused_as_training_refuses_them(home, tmp_path, capsys):
    """QA probe: score parsed "1.5" silently where emflow train refuses text columns."""
    frame = telemetry(10, seed=5)
    frame["cpu_util"] = frame["cpu_util"].astype(str)
    rows = tmp_path / "text.parquet"
    frame.to_parquet(rows, index=False)
    assert main(["score", str(rows)]) == 2
    err = capsys.readouterr().err
    assert "feature columns hold text" in err and "cpu_util" in err
