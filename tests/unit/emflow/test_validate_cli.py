"""``emflow validate``: summary on stdout, progress bar over folders, exit status, quarantine."""

from __future__ import annotations

import json

import pytest

from emflow.cli import main
from validation.synthetic import make_telemetry, write_bad_batch, write_window

DAY = "2026-11-05"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "data"
    write_window(make_telemetry(300, DAY, "2026-11-06", seed=1), root, DAY)
    write_bad_batch(
        "duplicate_ids",
        root / "incoming" / "2026-11-06" / "telemetry.parquet",
        start="2026-11-06",
        end="2026-11-07",
    )
    return root


def test_good_folder_passes_with_a_progress_bar_on_a_terminal_only(data_root, capsys):
    """The bar over a folder's files is drawn on a terminal; in a redirected stderr (a log
    file, CI) it was noise (QA probe)."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    assert main(["validate", str(data_root / "incoming" / DAY)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("PASSED") and "window [2026-11-05T00:00:00+00:00" in out
    assert "reading" not in err  # not a terminal here
    primary, secondary = pty.openpty()
    # a terminal 100 columns wide (a new pty has 0: tqdm would draw an empty bar)
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "emflow.cli", "validate", str(data_root / "incoming" / DAY)],
            stdout=subprocess.PIPE,
            stderr=secondary,
            text=True,
            timeout=300,
            check=False,
        )
        os.close(secondary)
        drawn = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other end is closed and read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(primary)
    assert done.returncode == 0 and done.stdout.startswith("PASSED")
    assert b"reading" in drawn and b"1/1" in drawn  # tqdm bar over the folder's files


def test_a_rejected_batch_is_summarised_once(data_root, tmp_path):
    """QA probe: ``validate --run-id`` printed the REJECTED summary twice (its log warning)."""
    import subprocess
    import sys

    source = tmp_path / "data" / "incoming" / "2026-11-06" / "telemetry.parquet"
    write_bad_batch("nan", source, start="2026-11-06", end="2026-11-07")
    done = subprocess.run(
        [sys.executable, "-m", "emflow.cli", "validate", str(source), "--run-id", "once",
         "--data-root", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert (done.stdout + done.stderr).count("REJECTED") == 1


def test_window_from_the_folder_name_is_checked(data_root, capsys):
    folder = data_root / "incoming" / DAY
    assert main(["validate", str(folder), "--window", "2026-11-07/2026-11-08"]) == 1
    assert "expect_column_values_to_be_between [ts]" in capsys.readouterr().out
    assert main(["validate", str(folder), "--no-window"]) == 0


def test_rejected_batch_exits_nonzero_and_is_quarantined(data_root, tmp_path, capsys):
    source = data_root / "incoming" / "2026-11-06" / "telemetry.parquet"
    delivered = source.read_bytes()
    report = tmp_path / "report.json"
    argv = [
        "validate",
        str(source),
        "--run-id",
        "cli-run",
        "--data-root",
        str(data_root),
        "--json",
        str(report),
    ]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert out.startswith("REJECTED") and "expect_column_values_to_be_unique [event_id]" in out
    moved = data_root / "quarantine" / "cli-run" / "2026-11-06" / "telemetry.parquet"
    assert f"quarantined to {moved}" in out
    assert moved.read_bytes() == delivered and not source.exists()
    assert json.loads(report.read_text())["failed"][0]["expectation"] == (
        "expect_column_values_to_be_unique"
    )
    assert main(argv) == 1  # same run id again: same outcome, still one copy
    assert sorted(p.name for p in moved.parent.iterdir()) == [
        "telemetry.parquet",
        "telemetry.parquet.manifest.json",
        "telemetry.parquet.summary.txt",
        "telemetry.parquet.validation.json",
    ]


def test_contract_options_and_usage_errors(data_root, tmp_path, capsys):
    frame = make_telemetry(300, DAY, "2026-11-06").assign(site="eu-1")
    path = tmp_path / "extra.parquet"
    frame.to_parquet(path, index=False)
    assert main(["validate", str(path)]) == 1
    assert main(["validate", str(path), "--extra-columns", "allow"]) == 0
    assert (
        main(["validate", str(path), "--features", "cpu_util,mem_util", "--extra-columns", "allow"])
        == 0
    )
    capsys.readouterr()
    assert main(["validate", str(path), "--features", "gpu_util"]) == 2
    assert "add them under `features:`" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "missing.parquet")]) == 2
    assert main(["validate", str(path), "--window", "2026-11-05"]) == 2


def test_print_suite_is_the_contract_as_gx_json(capsys):
    assert main(["validate", "--print-suite"]) == 0
    suite = json.loads(capsys.readouterr().out)
    types = {e["type"] for e in suite["expectations"]}
    assert {
        "expect_column_values_to_be_finite",
        "expect_table_columns_to_match_set",
        "expect_column_values_to_be_unique",
    } <= types


def test_a_quarantine_conflict_is_a_message_not_a_traceback(tmp_path, capsys):
    """Issue 16.9: QuarantineConflict escaped as a traceback. A quarantine in the way (bytes
    under the batch's name without their manifest) is refused with the fix named, nothing
    moved."""
    data_root = tmp_path / "data"
    source = data_root / "incoming" / "2026-11-06" / "telemetry.parquet"
    write_bad_batch("duplicate_ids", source, start="2026-11-06", end="2026-11-07")
    argv = ["validate", str(source), "--run-id", "conflict-run", "--data-root", str(data_root)]
    assert main(argv) == 1  # rejected and quarantined
    (manifest,) = (data_root / "quarantine").rglob("*.manifest.json")
    manifest.unlink()
    write_bad_batch("nan", source, start="2026-11-06", end="2026-11-07", seed=9)  # redelivered
    changed = source.read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("emflow validate: ") and "move it aside by hand" in err
    assert "Traceback" not in out + err
    assert source.read_bytes() == changed  # the new delivery stays where it was


def test_run_ids_near_airflows_limit_make_short_folder_names(tmp_path, capsys):
    """Issue 16.9: a 250-character run id made a folder name over 255 bytes."""
    from validation.quarantine import MAX_KEY_LENGTH, run_folder_name

    long_ids = ["manual__" + "x" * 242, "manual__" + "x" * 241 + "y"]
    keys = [run_folder_name(run_id) for run_id in long_ids]
    assert all(len(key) <= MAX_KEY_LENGTH for key in keys) and len(set(keys)) == 2
    data_root = tmp_path / "data"
    source = data_root / "incoming" / "2026-11-06" / "telemetry.parquet"
    write_bad_batch("duplicate_ids", source, start="2026-11-06", end="2026-11-07")
    argv = ["validate", str(source), "--run-id", long_ids[0], "--data-root", str(data_root)]
    assert main(argv) == 1
    assert (data_root / "quarantine" / keys[0] / "2026-11-06" / "telemetry.parquet").is_file()


@pytest.mark.parametrize("where", ["under_a_file", "a_folder"])
def test_an_unwritable_json_report_is_refused_up_front(where, data_root, tmp_path, capsys):
    """Issue 16.13: ``--json <unwritable path>`` ended in a traceback after validating."""
    (tmp_path / "blocker").write_text("x")
    target = tmp_path / "blocker" / "r.json" if where == "under_a_file" else tmp_path
    rc = main(["validate", str(data_root / "incoming" / DAY), "--json", str(target)])
    out, err = capsys.readouterr()
    assert rc == 2 and err.startswith("emflow validate: --json") and "Traceback" not in err
    assert out == ""  # refused before validating


def test_a_binary_batch_echoes_no_bytes_to_the_terminal(tmp_path, capsys, monkeypatch):
    """Issue 16.15: a binary file named .csv put the parser's quoted "line" on the terminal:
    escape sequences, NULs and U+FFFD. emflow validate and emflow score print a cut, safe text."""
    batch = tmp_path / "telemetry.csv"
    batch.write_bytes(b"a,b\n" + bytes(range(256)) * 40 + b"\x1b[2J\x1b]0;owned\x07" * 50)
    monkeypatch.setenv("EMFLOW_HOME", str(tmp_path / "home"))

    def assert_safe(text):
        assert text, "nothing printed"
        bad = {c for c in text if not (c.isprintable() or c == "\n") or c == "\ufffd"}
        assert not bad, f"unsafe characters printed: {sorted(map(ord, bad))[:10]}"
        assert all(len(line) < 600 for line in text.splitlines())

    assert main(["validate", str(batch)]) == 1
    out, err = capsys.readouterr()
    assert "not Parquet/CSV" in out and "binary content not shown" in out
    assert_safe(out)
    assert main(["score", str(batch)]) == 2
    out, err = capsys.readouterr()
    assert "cannot read rows" in err and "Traceback" not in err
    assert not (tmp_path / "home").exists()  # a bad file opens (creates) no registry
    assert_safe(out + err)


def test_a_rollback_reason_is_as_long_as_the_dag_form_asks(capsys):
    """QA probe: ``rollback --reason ab`` was taken where the rollback DAG's form needs 3
    characters; both read ROLLBACK_REASON_LENGTH now, and so does the registry call."""
    from emflow.config import Settings
    from emflow.registry.rollback import rollback

    with pytest.raises(SystemExit) as usage:
        main(["rollback", "--reason", "ab"])
    assert usage.value.code == 2
    assert "--reason: expected 3 to 500 characters, got 2" in capsys.readouterr().err
    with pytest.raises(ValueError, match="3 to 500 characters"):
        rollback(reason="  ab ", settings=Settings())
