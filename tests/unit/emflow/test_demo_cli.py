"""``emflow demo``: arguments checked first, one folder per demo, failures said on the console."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.airflow import private_tmp

from emflow.cli import demo, main

ROLLBACK_LOG = """\
2026-12-05T01:26:39.342791Z [error    ] Task failed with exception [task] loc=task_runner.py:1639
Traceback (most recent call last):
  File "/work/main/emflow/registry/rollback.py", line 176, in rollback
    raise UnknownVersionError(
emflow.registry.rollback.UnknownVersionError: telemetry-gmm has no previous champion recorded; \
pass an explicit version (--version N; `emflow status` lists them)

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/work/main/dags/gmm_rollback.py", line 71, in rollback
    raise AirflowFailException(f"rollback refused: {refused}") from refused
airflow.sdk.exceptions.AirflowFailException: rollback refused: telemetry-gmm has no previous \
champion recorded; pass an explicit version (--version N; `emflow status` lists them)
2026-12-05T01:26:39.343711Z [info     ] ::group::Post Execute [task] loc=task_runner.py:1640
"""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # the data contract's min_rows, the gmm_retrain DAG's bounds of n_init and seed
        (["--rows-per-day", "-5"], "--rows-per-day: expected an integer >= 100, got -5"),
        (["--rows-per-day", "0"], "--rows-per-day: expected an integer >= 100, got 0"),
        (["--rows-per-day", "many"], "--rows-per-day: expected an integer >= 100, got 'many'"),
        (["--n-init", "0"], "--n-init: expected an integer from 1 to 64, got 0"),
        (["--n-init", "65"], "--n-init: expected an integer from 1 to 64, got 65"),
        (["--seed", "-1"], "--seed: expected an integer from 0 to 4294967295, got -1"),
    ],
)
def test_bad_arguments_exit_2_with_the_bound_before_anything_is_written(
    tmp_path, capsys, args, message
):
    (tmp_path / "demo.20260101T000000").mkdir()  # an earlier demo, and the link to it
    (tmp_path / "demo").symlink_to("demo.20260101T000000")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--home", str(tmp_path / "demo"), *args])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert os.readlink(tmp_path / "demo") == "demo.20260101T000000"


def test_a_bad_gate_setting_stops_the_demo_before_anything_is_written(
    tmp_path, capsys, monkeypatch
):
    """A bad EMFLOW_PROMOTION_MARGIN ran the whole demo until every gate task failed (99 s)."""
    monkeypatch.setenv("EMFLOW_PROMOTION_MARGIN", "abc")
    assert main(["demo", "--home", str(tmp_path / "demo")]) == 2
    assert "EMFLOW_PROMOTION_MARGIN='abc' is not a number" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_home_that_is_a_file_is_refused_and_left_alone(tmp_path, capsys):
    (tmp_path / "notes").write_text("mine")
    assert main(["demo", "--home", str(tmp_path / "notes")]) == 2
    assert f"--home {tmp_path / 'notes'} is a file" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes"]
    assert (tmp_path / "notes").read_text() == "mine"


def test_each_demo_gets_a_new_folder_and_the_link_moves_to_it(tmp_path):
    link = tmp_path / "demo"
    first, note = demo._prepare_home(link)
    (first / "mlflow.db").write_text("first")
    assert link.resolve() == first and "previous" not in note
    second, note = demo._prepare_home(link)  # the same second: a "-2" folder, not the same one
    assert second != first and second.parent == first.parent
    assert link.resolve() == second and os.readlink(link) == second.name  # relative link
    assert f"the previous demo stays usable in {first}" in note
    assert (first / "mlflow.db").read_text() == "first"  # nothing moved
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".link")]


def test_an_empty_home_folder_becomes_the_link(tmp_path):
    (tmp_path / "demo").mkdir()
    folder, _ = demo._prepare_home(tmp_path / "demo")
    assert (tmp_path / "demo").is_symlink() and (tmp_path / "demo").resolve() == folder


def test_a_real_demo_folder_at_home_is_left_where_its_registry_points(tmp_path):
    old = tmp_path / "demo"
    old.mkdir()
    (old / "mlflow.db").write_text("old")
    folder, note = demo._prepare_home(old)
    assert not old.is_symlink() and (old / "mlflow.db").read_text() == "old"
    assert folder.name.startswith("demo.") and folder.is_dir()
    assert f"This demo runs in {folder}" in note and f"remove {old}" in note


def test_refused_rollback_says_why_on_the_console(tmp_path):
    log = tmp_path / "gmm_rollback.log"
    log.write_text(ROLLBACK_LOG)
    line = demo._describe_rollback({"state": "failed", "xcom": {}, "log": str(log)})
    assert line.startswith(
        "rollback (failed): rollback refused: telemetry-gmm has no previous champion recorded; "
        "pass an explicit version"
    )
    assert str(log) in line and "None" not in line


def test_rollback_without_a_logged_reason_points_at_the_log(tmp_path):
    line = demo._describe_rollback(
        {"state": "failed", "xcom": {}, "log": str(tmp_path / "missing.log")}
    )
    assert line == f"rollback (failed): no reason logged (log {tmp_path / 'missing.log'})"


def test_done_rollback_names_the_move():
    done = {"previous": 3, "version": 1, "actor": "airflow:unknown", "reason": "demo"}
    line = demo._describe_rollback({"state": "success", "xcom": {"rollback": done}, "log": "x"})
    assert line == "rollback (success): champion v3 -> v1 by airflow:unknown: demo"


def _emflow(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """Run ``emflow`` in a fresh interpreter with only ``EMFLOW_HOME`` saying where things are."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EMFLOW_", "MLFLOW_", "AIRFLOW_", "AIRFLOW__"))
    }
    env.update(EMFLOW_HOME=str(home), EMFLOW_PUSHGATEWAY="")
    return subprocess.run(
        [sys.executable, "-m", "emflow.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow  # two demos on the smallest data (~1 min on 2 cores)
def test_a_kept_demo_still_scores_with_its_own_registry_after_the_next_demo():
    root = private_tmp("emflow-demo-twice-")
    link = root / "demo"
    small = ("demo", "--rows-per-day", "100", "--n-init", "1")
    outs = []
    for _ in range(2):
        proc = _emflow(*small, home=root)
        assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
        outs.append(proc.stdout)
        if len(outs) == 1:
            first = link.resolve()
    second = link.resolve()
    assert first != second and first.is_dir() and first.parent == root
    assert f"the previous demo stays usable in {first}" in outs[1]
    for out in outs:
        assert "\r" not in out  # no progress bar in a redirected stdout
        rollback = next(line for line in out.splitlines() if line.startswith("rollback ("))
        assert re.fullmatch(
            r"rollback \((success\): champion v\d+ -> v\d+ by .+|failed\): .*refused: .+)",
            rollback,
        ), rollback
        assert "None" not in rollback

    # the first demo, kept where it ran, scores with its own registry (v1 is registered there)
    rows = next((first / "data" / "incoming" / "2026-11-16").iterdir())
    scored = _emflow("score", str(rows), "--version", "1", "--out", str(root / "s.csv"), home=first)
    assert scored.returncode == 0, scored.stderr[-3000:]
    with (root / "s.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 100
    # and the link, as the README uses it, reaches the latest demo
    status = _emflow("status", home=link)
    assert status.returncode == 0, status.stderr[-3000:]
    assert "telemetry-gmm" in status.stdout
    shutil.rmtree(root, ignore_errors=True)
