"""``emflow demo`` (what ``make demo`` runs) on small data: every run does what the demo says."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from support.airflow import private_tmp

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_shows_quarantine_promotion_rejection_and_rollback():
    home = private_tmp("emflow-demo-")
    env = {**os.environ, "EMFLOW_PUSHGATEWAY": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "emflow.cli",
            "demo",
            "--home",
            str(home / "demo"),
            "--rows-per-day",
            "3000",
            "--n-init",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert re.search(r"2026-11-16 .*PROMOTED v1", out)
    assert re.search(r"2026-11-17 .*FAILED at validate, batch quarantined in .*quarantine", out)
    assert "expect_column_values_to_be_finite" in out
    assert re.search(r"2026-11-18 .*(PROMOTED|REJECTED) v2 .*vs champion v1", out)
    assert re.search(r"2026-11-19 .*REJECTED v3", out)  # n_components=1: worse on the holdout
    assert re.search(r"drift vs champion: DRIFTED", out)  # the regime-shift day
    assert re.search(r"rollback \(success\): champion v\d+ -> v\d+", out)
    demo_home = (home / "demo").resolve()  # demo is a link to this demo's own folder
    assert (home / "demo").is_symlink() and demo_home.name.startswith("demo.")
    assert f"this demo runs in {demo_home} ({home.resolve() / 'demo'} points at it)" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{demo_home}/mlflow.db" in out
    mlflow_cli = re.search(r"MLflow UI:\s+(\S+) ui ", out).group(1)
    assert os.access(mlflow_cli, os.X_OK)  # the printed command runs as shown, no venv needed
    assert (home / "demo" / "metrics" / "emflow.prom").is_file()
    assert any((home / "demo" / "data" / "quarantine").rglob("telemetry.parquet"))
    shutil.rmtree(home, ignore_errors=True)
