"""``check_batch``'s outcomes: a failed batch is quarantined with its manifest and report, a
passing one is marked validated in place, a rerun (same or new run id) leaves one copy, and a
released batch is checked again. How the bytes move, and what a killed move leaves, is
``test_quarantine_moves.py``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from support.validation import DAY, WINDOW, all_files, sha256

from validation import QuarantineConflict, check_batch
from validation.synthetic import (
    BAD_BATCH_EXPECTATIONS,
    FILE_KINDS,
    make_telemetry,
    write_bad_batch,
    write_window,
)


@pytest.mark.parametrize("kind", sorted(BAD_BATCH_EXPECTATIONS))
def test_bad_batch_fails_named_expectation_and_is_quarantined_unchanged(kind, tmp_path, contract):
    data_root = tmp_path / "data"
    source = data_root / "incoming" / DAY / "telemetry.parquet"
    kwargs = {} if kind in FILE_KINDS else {"start": WINDOW[0], "end": WINDOW[1]}
    write_bad_batch(kind, source, **kwargs)
    original_bytes = source.read_bytes()

    result = check_batch(
        source, run_id=f"run-{kind}", data_root=data_root, contract=contract, window=WINDOW
    )

    expected = BAD_BATCH_EXPECTATIONS[kind]
    assert not result.success
    assert expected in result.failed_expectations, result.summary
    assert expected in result.summary and "fix:" in result.summary
    # moved, not copied: the bytes in quarantine are the bytes delivered
    assert not source.exists()
    quarantined = data_root / "quarantine" / f"run-{kind}" / DAY / "telemetry.parquet"
    assert result.quarantined_to == str(quarantined)
    assert quarantined.read_bytes() == original_bytes
    manifest = json.loads(quarantined.with_name("telemetry.parquet.manifest.json").read_text())
    facts = manifest["files"]["telemetry.parquet"]
    assert facts["sha256"] == facts["sha256_after"] == hashlib.sha256(original_bytes).hexdigest()
    assert manifest["status"] == "quarantined" and expected in manifest["failed_expectations"]
    report = json.loads(Path(result.report_path).read_text())
    assert Path(result.report_path).parent == quarantined.parent
    assert report["success"] is False
    assert expected in {f["expectation"] for f in report["failed"]}
    gx_json = report["gx_results"]["files" if kind in FILE_KINDS else "content"]
    assert expected in {
        r["expectation_config"]["type"] for r in gx_json["results"] if not r["success"]
    }
    assert quarantined.with_name("telemetry.parquet.summary.txt").read_text().strip() == (
        result.summary
    )


def test_folder_with_one_corrupt_file_is_quarantined_whole(tmp_path, contract):
    data_root = tmp_path / "data"
    folder = data_root / "incoming" / DAY
    folder.mkdir(parents=True)
    make_telemetry(200, *WINDOW, seed=1).to_parquet(folder / "a.parquet", index=False)
    write_bad_batch("corrupt_parquet", folder / "b.parquet")
    before = {p.name: sha256(p) for p in all_files(folder)}

    result = check_batch(
        folder, run_id="folder-run", data_root=data_root, contract=contract, window=WINDOW
    )

    assert result.failed_expectations == ["expect_batch_files_to_be_readable"]
    assert "b.parquet" in result.failed[0].examples[0]
    assert result.n_rows == 200  # the readable file was still read
    moved = data_root / "quarantine" / "folder-run" / DAY
    assert {p.name: sha256(p) for p in all_files(moved)} == before
    assert not folder.exists()


def test_rerun_same_run_id_leaves_one_quarantined_copy(tmp_path, contract):
    data_root = tmp_path / "data"
    source = write_bad_batch(
        "nan", data_root / "incoming" / DAY / "telemetry.parquet", start=WINDOW[0], end=WINDOW[1]
    )
    delivered = source.read_bytes()
    first = check_batch(
        source,
        run_id="scheduled__2026-11-02T00:00:00+00:00",
        data_root=data_root,
        contract=contract,
        window=WINDOW,
    )
    quarantine_files = all_files(data_root / "quarantine")
    second = check_batch(
        source,
        run_id="scheduled__2026-11-02T00:00:00+00:00",
        data_root=data_root,
        contract=contract,
        window=WINDOW,
    )
    assert all_files(data_root / "quarantine") == quarantine_files
    assert [f.name for f in quarantine_files].count("telemetry.parquet") == 1
    assert second.success is first.success is False
    assert second.failed_expectations == first.failed_expectations
    assert second.summary == first.summary

    # the same bytes delivered again under the same run id: still one copy, source untouched
    source.write_bytes(delivered)
    third = check_batch(
        source,
        run_id="scheduled__2026-11-02T00:00:00+00:00",
        data_root=data_root,
        contract=contract,
        window=WINDOW,
    )
    assert third.failed_expectations == first.failed_expectations
    assert all_files(data_root / "quarantine") == quarantine_files
    assert source.read_bytes() == delivered

    # different bytes moved back under the same run id and name (a release): checked again;
    # still bad, so quarantined again, the earlier copy kept beside it
    source.unlink()
    write_bad_batch("inf", source, start=WINDOW[0], end=WINDOW[1])
    changed = source.read_bytes()
    fourth = check_batch(
        source,
        run_id="scheduled__2026-11-02T00:00:00+00:00",
        data_root=data_root,
        contract=contract,
        window=WINDOW,
    )
    assert "expect_column_values_to_be_finite" in fourth.failed_expectations
    assert not source.exists()
    run_dir = Path(fourth.quarantined_to).parent
    assert (run_dir / "telemetry.parquet").read_bytes() == changed
    (aside,) = run_dir.glob("telemetry.parquet.released-*[0-9]")
    assert aside.read_bytes() == delivered
    assert json.loads(Path(f"{aside}.manifest.json").read_text())["status"] == "released"


def test_a_released_batch_is_checked_again_under_the_same_run_id(tmp_path, contract):
    """README's release: a quarantined batch moved back fixed (or unchanged under a widened
    contract) and the task cleared is validated again, not refused as a conflict (QA probe);
    the quarantined copy stays, set aside. Unchanged bytes under the unchanged contract keep
    the stored outcome (a retry)."""
    data_root = tmp_path / "data"
    folder = data_root / "incoming" / DAY
    source = write_bad_batch("nan", folder / "telemetry.parquet", start=WINDOW[0], end=WINDOW[1])
    bad = source.read_bytes()
    kw = dict(run_id="r", data_root=data_root, window=WINDOW)
    first = check_batch(folder, contract=contract, **kw)
    assert not first.success and not folder.exists()
    quarantined = Path(first.quarantined_to)

    # moved back unchanged, contract unchanged: the same outcome, nothing moved
    quarantined.rename(folder)
    again = check_batch(folder, contract=contract, **kw)
    assert again.failed_expectations == first.failed_expectations and folder.exists()
    folder.rename(quarantined)  # as it was

    # fixed and moved back: validated under the same run id, the bad bytes kept aside
    write_window(make_telemetry(400, *WINDOW, seed=5), tmp_path / "fixed", DAY)
    (tmp_path / "fixed" / "incoming" / DAY).rename(folder)
    fixed = check_batch(folder, contract=contract, **kw)
    assert fixed.success and folder.exists()
    (aside,) = quarantined.parent.glob(f"{DAY}.released-*[0-9]")
    assert (aside / "telemetry.parquet").read_bytes() == bad
    assert not quarantined.exists()


def test_a_quarantined_batch_moved_back_under_a_widened_contract_is_checked_again(
    tmp_path, contract
):
    data_root = tmp_path / "data"
    source = write_bad_batch(
        "too_few_rows", data_root / "incoming" / DAY / "t.parquet", start=WINDOW[0], end=WINDOW[1]
    )
    first = check_batch(source, run_id="r", data_root=data_root, contract=contract, window=WINDOW)
    assert first.failed_expectations == ["expect_table_row_count_to_be_between"]
    Path(first.quarantined_to).rename(source)
    wide = contract.with_(min_rows=1)
    second = check_batch(source, run_id="r", data_root=data_root, contract=wide, window=WINDOW)
    assert second.success and source.exists()


def test_setting_a_released_batch_aside_killed_halfway_is_finished_by_the_retry(
    tmp_path, contract, monkeypatch
):
    """The renames of the earlier copy and its sidecars, interrupted after the first one,
    are completed by the retry: one aside copy with all its files, the fixed batch validated."""
    import os

    from validation import quarantine

    data_root = tmp_path / "data"
    source = write_bad_batch(
        "nan", data_root / "incoming" / DAY / "t.parquet", start=WINDOW[0], end=WINDOW[1]
    )
    first = check_batch(source, run_id="r", data_root=data_root, contract=contract, window=WINDOW)
    write_window(make_telemetry(400, *WINDOW, seed=5), tmp_path / "fixed", DAY)
    (tmp_path / "fixed" / "incoming" / DAY / "telemetry.parquet").rename(source)

    real_rename, calls = os.rename, []

    def killed_after_one(src, dst):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(src)
        real_rename(src, dst)

    monkeypatch.setattr(quarantine.os, "rename", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        check_batch(source, run_id="r", data_root=data_root, contract=contract, window=WINDOW)
    monkeypatch.setattr(quarantine.os, "rename", real_rename)
    retried = check_batch(source, run_id="r", data_root=data_root, contract=contract, window=WINDOW)
    assert retried.success
    run_dir = Path(first.quarantined_to).parent
    names = sorted(p.name for p in run_dir.iterdir())
    assert len(names) == 4 and all(".released-" in n for n in names), names


def test_a_late_file_in_a_quarantined_day_is_no_release(tmp_path, contract):
    """Review: after a day folder was quarantined, any file landing in a recreated
    incoming/<day> (or an empty folder) counted as a release: the quarantined files were set
    aside and the late file alone passed as the whole day. A release brings back every file of
    the quarantined batch; anything else is a new delivery for a new run id."""
    data_root = tmp_path / "data"
    folder = data_root / "incoming" / DAY
    frame = make_telemetry(400, *WINDOW, seed=5)
    folder.mkdir(parents=True)
    frame.iloc[:200].to_parquet(folder / "a.parquet", index=False)
    write_bad_batch("nan", folder / "b.parquet", start=WINDOW[0], end=WINDOW[1])
    kw = dict(run_id="r", data_root=data_root, contract=contract, window=WINDOW)
    first = check_batch(folder, **kw)
    assert not first.success and not folder.exists()
    quarantined = sorted(p.name for p in Path(first.quarantined_to).iterdir())
    folder.mkdir()
    frame.iloc[200:].to_parquet(folder / "c.parquet", index=False)  # a late file
    with pytest.raises(QuarantineConflict, match="new run id"):
        check_batch(folder, **kw)
    (folder / "c.parquet").unlink()  # an empty folder: no release either, the stored outcome
    again = check_batch(folder, **kw)  # (a day folder a producer still writes into stays)
    assert not again.success and again.quarantined_to == first.quarantined_to
    assert sorted(p.name for p in Path(first.quarantined_to).iterdir()) == quarantined
    assert not list(Path(first.quarantined_to).parent.glob("*.released-*"))


def test_files_the_contract_skips_do_not_change_a_days_record(tmp_path, contract):
    """Review: a day folder's checksums covered every file, so a producer's temporary file
    (``.x.tmp``) present at validation and gone later made a retry of the same run a
    QuarantineConflict. The record covers the files the contract reads."""
    data_root = tmp_path / "data"
    source = write_window(make_telemetry(400, *WINDOW, seed=5), data_root, DAY)
    folder = source.parent
    (folder / ".x.parquet.tmp").write_bytes(b"half written")
    kw = dict(run_id="r", data_root=data_root, contract=contract, window=WINDOW)
    assert check_batch(folder, **kw).success
    (folder / ".x.parquet.tmp").unlink()
    (folder / "_SUCCESS").write_bytes(b"")
    assert check_batch(folder, **kw).success  # the same batch: no conflict


def test_passing_batch_is_marked_validated_once_and_stays_in_place(tmp_path, contract):
    data_root = tmp_path / "data"
    source = write_window(make_telemetry(400, *WINDOW, seed=5), data_root, DAY)
    digest = sha256(source)
    results = [
        check_batch(source, run_id="r1", data_root=data_root, contract=contract, window=WINDOW)
        for _ in range(2)
    ]
    assert all(r.success for r in results)
    assert source.exists() and sha256(source) == digest
    assert not (data_root / "quarantine").exists()
    marker = data_root / "validated" / "r1" / DAY / "telemetry.parquet.manifest.json"
    manifest = json.loads(marker.read_text())
    assert manifest["files"]["telemetry.parquet"]["sha256"] == digest
    assert manifest["n_rows"] == 400
    assert len(all_files(data_root / "validated")) == 2  # the manifest and the report
    assert results[0].validated_path == str(source)
