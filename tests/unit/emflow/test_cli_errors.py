"""Usage errors of every ``emflow`` command: a message naming what to change and exit 2 (no
traceback), decided before any data are read or written; a closed output pipe ends quietly."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from emflow.cli import main
from validation.synthetic import make_telemetry


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """An empty EMFLOW_HOME, no tracking server and no contract override."""
    monkeypatch.setenv("EMFLOW_HOME", str(tmp_path / "home"))
    for name in ("MLFLOW_TRACKING_URI", "EMFLOW_DATA_ROOT", "EMFLOW_CONTRACT"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


@pytest.fixture()
def rows(tmp_path):
    path = tmp_path / "rows.parquet"
    make_telemetry(300, "2026-11-01", "2026-11-02", seed=1).to_parquet(path, index=False)
    return path


def _run_into_a_closed_pipe(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """``emflow ARGV | head -0``, deterministically: the reader is gone before anything is
    written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "emflow.cli", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "argv", [["status"], ["--help"], ["validate", "--print-suite"]], ids=" ".join
)
def test_a_closed_output_pipe_ends_quietly(argv, home):
    """D6: `emflow status | head` printed a BrokenPipeError traceback."""
    done = _run_into_a_closed_pipe(argv, dict(os.environ))
    # Python's note on SIGPIPE: exit 1, nothing on stderr (argparse's --help ignores the error)
    assert done.returncode == (0 if argv == ["--help"] else 1)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr


def test_a_bad_setting_fails_only_the_commands_that_use_it(home, monkeypatch, capsys):
    """D10: EMFLOW_PROMOTION_MARGIN=abc made `emflow status` (which has no gate) crash with a
    ValueError traceback; a command that reads a bad value names the variable and its form."""
    from emflow.config import Settings, SettingsError

    monkeypatch.setenv("EMFLOW_PROMOTION_MARGIN", "abc")
    monkeypatch.setenv("EMFLOW_ALIGNMENT_THRESHOLD", "nan")
    assert main(["status"]) == 0
    assert "no versions registered yet" in capsys.readouterr().out
    with pytest.raises(SettingsError, match=r"EMFLOW_PROMOTION_MARGIN='abc' is not a number >= 0"):
        _ = Settings().promotion_margin
    with pytest.raises(SettingsError, match="EMFLOW_ALIGNMENT_THRESHOLD='nan'"):
        _ = Settings().alignment_threshold
    assert Settings(promotion_margin=0.2).with_(home=home / "other").promotion_margin == 0.2

    # status through MLflow (not the SQLite file) uses the retries: refused before connecting
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("EMFLOW_MLFLOW_RETRIES", "-3")
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emflow status: EMFLOW_MLFLOW_RETRIES='-3' is not a whole number >= 1")
    assert "unset it" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("variable", "value"),
    [("EMFLOW_MLFLOW_BACKOFF_S", "soon"), ("EMFLOW_PROMOTION_MARGIN", "-0.1")],
)
def test_every_numeric_setting_names_its_variable(variable, value, monkeypatch):
    from emflow.config import Settings, SettingsError

    monkeypatch.setenv(variable, value)
    settings = Settings()
    with pytest.raises(SettingsError, match=f"{variable}='{value}'"):
        getattr(settings, variable.removeprefix("EMFLOW_").lower())


def test_a_home_that_is_a_file_is_a_usage_error(tmp_path, monkeypatch, capsys):
    """EMFLOW_HOME naming a file ended in a NotADirectoryError traceback where folders are made."""
    home = tmp_path / "home.txt"
    home.write_text("not a folder")
    monkeypatch.setenv("EMFLOW_HOME", str(home))
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"emflow status: EMFLOW_HOME {home} is a file") and "Traceback" not in err
    assert home.read_text() == "not a folder"


def test_a_home_path_that_cannot_be_expanded_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMFLOW_HOME", "~no-such-user-here/emflow")
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emflow status: EMFLOW_HOME='~no-such-user-here/emflow'")
    assert "Traceback" not in err


@pytest.mark.parametrize("where", ["missing_folder", "a_folder"])
def test_score_refuses_an_unwritable_out_before_scoring(where, home, rows, tmp_path, capsys):
    """D7: `emflow score --out /nonexistent/dir/x.csv` (or a folder) scored every row, then
    failed with an OSError traceback. Now the location is checked first, as validate --json's."""
    target = tmp_path / "no" / "such" / "x.csv" if where == "missing_folder" else tmp_path
    assert main(["score", str(rows), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"emflow score: --out {target}") and "Traceback" not in err
    assert ("is a folder" if where == "a_folder" else "not an existing folder") in err
    assert not home.exists()  # refused before opening (creating) a registry


def test_validate_refuses_a_folder_where_a_file_belongs(home, rows, tmp_path, monkeypatch, capsys):
    """D8: `--contract <a folder>` gave an IsADirectoryError traceback; `--data-root <a file>`
    a NotADirectoryError one after validating."""
    assert main(["validate", str(rows), "--contract", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"contract file {tmp_path} cannot be read" in err and "Traceback" not in err
    monkeypatch.setenv("EMFLOW_CONTRACT", str(tmp_path))  # the same through the environment
    assert main(["validate", str(rows)]) == 2
    assert "unset EMFLOW_CONTRACT" in capsys.readouterr().err
    monkeypatch.delenv("EMFLOW_CONTRACT")
    assert main(["validate", str(rows), "--contract", str(rows)]) == 2  # binary, not YAML
    assert "is not valid YAML" in capsys.readouterr().err
    argv = ["validate", str(rows), "--run-id", "r1", "--data-root", str(rows / "data")]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"emflow validate: --data-root {rows / 'data'}: {rows} is a file")
    assert out == ""  # refused before validating


def test_status_limit_is_checked_and_counts_what_it_hides(home, capsys):
    """D9: --limit -1 was taken (3 of 4 versions shown, "5 older")."""
    from emflow.cli.status import format_status

    with pytest.raises(SystemExit) as done:
        main(["status", "--limit", "-1"])
    assert done.value.code == 2
    assert "argument --limit: expected an integer >= 0, got -1" in capsys.readouterr().err
    versions = [
        {"version": str(v), "aliases": [], "decision": "promote", "data_window": "", "reason": ""}
        for v in (4, 3, 2, 1)
    ]
    report = {"model_name": "m", "tracking_uri": "sqlite://", "aliases": {}, "versions": versions}
    for limit, shown, hidden in [(-1, 3, 1), (0, 0, 4), (3, 3, 1), (9, 4, 0)]:
        text = format_status(report, limit)
        assert sum(line.lstrip().startswith("v") for line in text.splitlines()[3:]) == shown
        assert (f"... {hidden} older version(s)" in text) == (hidden > 0), (limit, text)


@pytest.mark.parametrize(
    "argv",
    [
        ["airflow-env", "--port", "99999"],
        ["airflow-env", "--port", "0"],
        ["airflow-env", "--parallelism", "0"],
        ["telemetry", "generate", "--shift", "nan"],
        ["telemetry", "generate", "--shift", "inf"],
        ["telemetry", "generate", "--rows", "0"],
    ],
    ids=" ".join,
)
def test_out_of_range_options_are_refused_by_the_parser(argv, home, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and f"argument {argv[-2]}: expected" in err
    assert not home.exists()  # nothing written


def test_telemetry_warns_when_the_contract_will_reject_the_days(home, capsys):
    assert main(["telemetry", "generate", "--day", "2026-11-20", "--rows", "50"]) == 0
    err = capsys.readouterr().err
    assert "--rows 50 is below the data contract's min_rows (100)" in err
    assert main(["telemetry", "generate", "--day", "2026-11-21", "--rows", "100"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_score_help_lists_every_output_column(capsys):
    with pytest.raises(SystemExit) as done:
        main(["score", "--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0
    for column in ("event_id", "component", "responsibility", "log_likelihood", "p_value"):
        assert f"\n  {column} " in text, column
    assert "is_anomaly" in text and "-1 for a row far outside every component" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    summary = " ".join(capsys.readouterr().out.split())
    assert "event_id, component, responsibility, log_likelihood, and p_value, is_anomaly" in (
        summary
    )


@pytest.fixture()
def full_disk(tmp_path):
    """A 512 KiB tmpfs (a real full disk; needs the right to mount, as root on this machine)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_named_with_the_fix_and_leaves_no_partial_file(full_disk):
    """Writing on a full disk ended in a pyarrow traceback and left a partial temporary file
    (QA probe): one line naming the fix, exit 1, only whole files under the data root."""
    env = {**os.environ, "EMFLOW_HOME": str(full_disk / "home")}
    env.pop("EMFLOW_DATA_ROOT", None)
    done = subprocess.run(
        [sys.executable, "-m", "emflow.cli", "telemetry", "generate", "--days", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "no space left on the device" in done.stderr and "EMFLOW_HOME" in done.stderr
    assert not list(full_disk.rglob("*.tmp"))
    for path in full_disk.rglob("*.parquet"):  # the days written before the disk filled
        assert len(pd.read_parquet(path)) > 0


def test_full_disk_errors_are_recognised_through_their_causes():
    import sqlite3

    from emflow.cli import disk_full

    full = OSError(28, "No space left on device")
    assert disk_full(full)
    wrapped = RuntimeError("write failed")
    wrapped.__cause__ = sqlite3.OperationalError("database or disk is full")
    assert disk_full(wrapped)
    assert not disk_full(OSError(13, "Permission denied"))
    try:  # an error raised while handling a full disk, "from None": not itself a full disk
        try:
            raise full
        except OSError:
            raise KeyError("cleanup") from None
    except KeyError as cleanup:
        assert not disk_full(cleanup)
    assert not disk_full(ValueError("bad value"))


@pytest.fixture()
def read_only_registry(tmp_path):
    """A published registry under EMFLOW_HOME, then the same folder bind-mounted read-only (a
    registry snapshot, another user's home); skipped where mounting is not allowed."""
    from support.lifecycle import cycle, telemetry, train

    from emflow.config import Settings

    home = tmp_path / "home"
    data = telemetry(600, seed=1)
    _, info = train(data, tmp_path / "model", seed=0, n_init=1)
    cycle(Settings(home=home), tmp_path / "model", telemetry(200, seed=2), "run-1", info)
    view = tmp_path / "read-only"
    view.mkdir()
    for command in (
        ["mount", "--bind", str(home), str(view)],
        ["mount", "-o", "remount,bind,ro", str(view)],
    ):
        made = subprocess.run(command, capture_output=True, text=True, check=False)
        if made.returncode != 0:
            subprocess.run(["umount", str(view)], check=False)
            pytest.skip(f"cannot bind-mount read-only here: {made.stderr.strip()}")
    try:
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=False)


@pytest.mark.slow
def test_a_read_only_home_scores_and_names_the_fix_for_writes(read_only_registry, rows):
    """QA probe: score and rollback on a read-only registry copy ended in a PermissionError /
    SQLAlchemy traceback (the store's lock file, the model cache). Scoring needs no write; a
    command that must write says where and how to fix it, exit 1."""
    env = {**os.environ, "EMFLOW_HOME": str(read_only_registry)}
    for name in ("MLFLOW_TRACKING_URI", "EMFLOW_DATA_ROOT"):
        env.pop(name, None)

    def emflow(*argv):
        return subprocess.run(
            [sys.executable, "-m", "emflow.cli", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )

    scored = emflow("score", str(rows))
    assert scored.returncode == 0, scored.stderr
    assert "scored 300 rows with telemetry-gmm v1" in scored.stdout + scored.stderr
    for argv in (
        ["validate", "--run-id", "R1", str(rows)],
        ["telemetry", "generate", "--day", "2026-12-01"],
    ):
        done = emflow(*argv)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr and "cannot write there" in done.stderr
        assert "EMFLOW_HOME" in done.stderr


def test_unwritable_places_are_recognised_through_their_causes():
    """The registry's own refusal (SQLite under a read-only EMFLOW_HOME) arrives wrapped."""
    import sqlite3

    from emflow.cli import not_writable

    readonly = sqlite3.OperationalError("attempt to write a readonly database")
    wrapped = RuntimeError("INSERT INTO registered_models ...")
    wrapped.__cause__ = readonly
    assert not_writable(wrapped) is readonly
    denied = PermissionError(13, "Permission denied", "/srv/emflow/data")
    assert not_writable(denied) is denied
    assert not_writable(OSError(30, "Read-only file system")) is not None
    assert not_writable(OSError(28, "No space left on device")) is None
    assert not_writable(ValueError("bad value")) is None


@pytest.mark.parametrize("argv", [["status"], ["rollback", "--reason", "bad uri"]], ids=" ".join)
def test_a_tracking_uri_mlflow_cannot_open_is_named(argv, home, monkeypatch, capsys):
    """QA probe: MLFLOW_TRACKING_URI=bogus://x ended in MLflow's
    UnsupportedModelRegistryStoreURIException traceback."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://x")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "MLFLOW_TRACKING_URI='bogus://x' names no store MLflow can open" in err


def test_a_bare_ctrl_c_is_one_line_with_the_shells_status(home, monkeypatch, capsys):
    """A KeyboardInterrupt without a message printed 'emflow status: ' and nothing more."""
    import emflow.cli.status as status_cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(status_cli, "run", interrupted)
    assert main(["status"]) == 130
    assert capsys.readouterr().err.strip() == "emflow status: interrupted (Ctrl-C)"
