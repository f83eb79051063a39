"""``emflow telemetry generate``: data for the real Airflow set-up (issue 16.10)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from emflow.cli import main
from validation import load_contract, validate_batch, window_for_day


def test_generates_valid_windows_and_never_overwrites(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("EMFLOW_DATA_ROOT", raising=False)
    argv = ["telemetry", "generate", "--day", "2026-11-20", "--days", "2", "--rows", "500"]
    assert main(argv) == 0
    days = sorted(p.name for p in (tmp_path / "data" / "incoming").iterdir())
    assert days == ["2026-11-20", "2026-11-21"]
    path = tmp_path / "data" / "incoming" / "2026-11-21" / "telemetry.parquet"
    result = validate_batch(path, load_contract(), window=window_for_day("2026-11-21"))
    assert result.success and result.n_rows == 500
    assert main(argv) == 0  # the same bytes again: left alone
    assert main([*argv, "--seed", "7"]) == 2  # other bytes: refused, nothing overwritten
    assert "already holds a different window" in capsys.readouterr().err


def test_defaults_to_yesterday(tmp_path, monkeypatch):
    monkeypatch.setenv("EMFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("EMFLOW_DATA_ROOT", raising=False)
    assert main(["telemetry", "generate", "--rows", "50"]) == 0
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    assert (tmp_path / "data" / "incoming" / yesterday / "telemetry.parquet").is_file()
