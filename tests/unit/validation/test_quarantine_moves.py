"""How a quarantined batch's bytes move (``validation/moves.py``): file by file for a day folder,
only the recorded files, a file still being written left in place, through a symlink, and a
move killed midway (same filesystem, across filesystems, between files, by SIGKILL) finished by
the retry or another run with exactly one copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.validation import DAY, WINDOW, all_files, sha256

from validation import QuarantineConflict, check_batch
from validation.synthetic import (
    make_telemetry,
    write_bad_batch,
)


def test_interrupted_move_is_resumed_on_retry(tmp_path, contract):
    """A task killed between writing the manifest and moving the batch finishes on retry."""
    data_root = tmp_path / "data"
    source = write_bad_batch(
        "out_of_range", data_root / "incoming" / DAY / "t.parquet", start=WINDOW[0], end=WINDOW[1]
    )
    delivered = source.read_bytes()
    done = check_batch(source, run_id="r", data_root=data_root, contract=contract, window=WINDOW)
    # put the world back to "manifest written, batch not yet moved" (as a kill would leave it)
    moved = Path(done.quarantined_to)
    manifest_path = moved.with_name("t.parquet.manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["status"] = "moving"
    manifest_path.write_text(json.dumps(manifest))
    moved.rename(source)

    retried = check_batch(source, run_id="r", data_root=data_root, contract=contract, window=WINDOW)
    assert retried.failed_expectations == done.failed_expectations
    assert not source.exists() and moved.read_bytes() == delivered
    assert json.loads(manifest_path.read_text())["status"] == "quarantined"


def test_cross_filesystem_folder_move_killed_mid_copy_resumes(tmp_path, contract, monkeypatch):
    """Quarantine across filesystems copies, verifies, then unlinks, file by file; a task killed
    after one file's copy (before its unlink) and before the next file's leaves a stale .partial
    copy and half the folder moved, which the retry finishes: one copy of each file, in
    quarantine, none left at the source."""
    import errno
    import shutil

    from validation import quarantine

    data_root = tmp_path / "data"
    folder = data_root / "incoming" / DAY
    folder.mkdir(parents=True)
    frame = make_telemetry(200, *WINDOW, seed=1)
    frame.loc[0, "cpu_util"] = np.inf
    frame.iloc[:100].to_parquet(folder / "a.parquet", index=False)
    frame.iloc[100:].to_parquet(folder / "b.parquet", index=False)
    delivered = {p.name: p.read_bytes() for p in folder.iterdir()}
    real_rename, real_copy2 = quarantine.os.rename, shutil.copy2
    copies = []

    def cross_device(src, dst):
        if "incoming" in str(src):
            raise OSError(errno.EXDEV, "cross-device link")
        return real_rename(src, dst)

    def killed_at_the_second_copy(src, dst, **kwargs):
        real_copy2(src, dst, **kwargs)
        copies.append(src)
        if len(copies) == 2:
            raise KeyboardInterrupt("task killed mid-move")

    monkeypatch.setattr(quarantine.os, "rename", cross_device)
    monkeypatch.setattr(shutil, "copy2", killed_at_the_second_copy)
    with pytest.raises(KeyboardInterrupt):
        check_batch(folder, run_id="r", data_root=data_root, contract=contract, window=WINDOW)
    left = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert left == {"b.parquet": delivered["b.parquet"]}
    monkeypatch.setattr(shutil, "copy2", real_copy2)
    retried = check_batch(folder, run_id="r", data_root=data_root, contract=contract, window=WINDOW)
    assert not retried.success and not folder.exists()
    moved = Path(retried.quarantined_to)
    assert {p.name: p.read_bytes() for p in moved.iterdir()} == delivered
    assert not list(moved.parent.glob(".*.partial")) and not list(moved.glob(".*.partial"))


def test_a_file_still_being_written_stays_when_its_day_is_quarantined(tmp_path, contract):
    """A producer writes ``.name`` (or ``_name``) and renames it when done. The day folder was
    renamed into quarantine whole, so a file in progress went with it: the producer's rename
    failed, or its late bytes landed in quarantine unchecked. The batch's files move one by
    one; the file in progress stays, and the folder with it."""
    data_root = tmp_path / "data"
    folder = data_root / "incoming" / DAY
    folder.mkdir(parents=True)
    make_telemetry(200, *WINDOW, seed=1).to_parquet(folder / "a.parquet", index=False)
    write_bad_batch("nan", folder / "b.parquet", start=WINDOW[0], end=WINDOW[1])
    before = {p.name: sha256(p) for p in all_files(folder)}
    writing = folder / ".c.parquet.tmp"
    kw = dict(run_id="r", data_root=data_root, contract=contract, window=WINDOW)
    with writing.open("wb") as handle:
        handle.write(b"half")
        result = check_batch(folder, **kw)
        handle.write(b" written")
    assert not result.success
    moved = Path(result.quarantined_to)
    assert {p.name: sha256(p) for p in all_files(moved)} == before
    assert [p.name for p in folder.iterdir()] == [".c.parquet.tmp"]
    assert writing.read_bytes() == b"half written"
    writing.rename(folder / "c.parquet")  # the producer's rename: a new delivery
    manifest = json.loads(moved.with_name(f"{DAY}.manifest.json").read_text())
    assert manifest["status"] == "quarantined" and manifest["source_removed"]
    with pytest.raises(QuarantineConflict, match="new run id"):
        check_batch(folder, **kw)  # not this run's batch: checked under a new run id
    assert {p.name: sha256(p) for p in all_files(moved)} == before


def test_symlinked_batch_is_quarantined_with_its_bytes(tmp_path, contract):
    """Issue 16.2: quarantine renamed the link, not the file; once the producer removed the
    target the quarantined batch was gone and retries failed with "no telemetry"."""
    data_root = tmp_path / "data"
    target = write_bad_batch(
        "nan", tmp_path / "producer" / "spool-0001.parquet", start=WINDOW[0], end=WINDOW[1]
    )
    delivered = target.read_bytes()
    link = data_root / "incoming" / DAY / "telemetry.parquet"
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    run_id = "scheduled__2026-11-02T00:00:00+00:00"
    first = check_batch(link, run_id=run_id, data_root=data_root, contract=contract, window=WINDOW)
    assert not first.success
    moved = Path(first.quarantined_to)
    assert moved.is_file() and not moved.is_symlink() and moved.read_bytes() == delivered
    assert not link.exists() and not link.is_symlink()  # the link left incoming/
    assert target.read_bytes() == delivered  # the producer's file is not ours to delete
    target.unlink()  # the producer cleans up its spool
    assert moved.read_bytes() == delivered
    manifest = json.loads(moved.with_name(moved.name + ".manifest.json").read_text())
    assert manifest["source"] == str(link) and manifest["status"] == "quarantined"
    # the run's retry meets the quarantined batch again, under the same key
    again = check_batch(link, run_id=run_id, data_root=data_root, contract=contract, window=WINDOW)
    assert not again.success and again.quarantined_to == first.quarantined_to
    assert len(all_files(data_root / "quarantine")) == len(
        [p for p in moved.parent.iterdir() if p.is_file()]
    )


_KILLED_AFTER_COPY_LANDED = """
import os, signal, sys
from validation import check_batch, quarantine, window_for_day

real_rename = os.rename

def rename(src, dst):  # the last step before the source's unlink: SIGKILL right after it
    real_rename(src, dst)
    if str(src).endswith(".partial"):
        os.kill(os.getpid(), signal.SIGKILL)

quarantine.os.rename = rename
check_batch(sys.argv[1], run_id=sys.argv[2], data_root=sys.argv[3],
            window=window_for_day(sys.argv[4]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("retry_run_id", ["same run id", "new run id"])
def test_cross_filesystem_move_killed_before_the_unlink_leaves_one_copy(
    tmp_path, contract, retry_run_id
):
    """Issue 16.9: quarantine on another filesystem (a real tmpfs) is copy, verify, rename, unlink;
    a task SIGKILLed between rename and unlink left the source in incoming/, and a run with a new
    run id then quarantined a second copy. The next check (either run id) finishes the move."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile

    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's tmp_path")
    other_fs = Path(tempfile.mkdtemp(prefix="emflow-quarantine-", dir="/dev/shm"))
    try:
        data_root = tmp_path / "data"
        data_root.mkdir()
        (data_root / "quarantine").symlink_to(other_fs)  # a rename into it is EXDEV
        source = write_bad_batch(
            "nan", data_root / "incoming" / DAY / "t.parquet", start=WINDOW[0], end=WINDOW[1]
        )
        delivered = source.read_bytes()
        killed = subprocess.run(
            [
                sys.executable,
                "-c",
                _KILLED_AFTER_COPY_LANDED,
                str(source),
                "run-1",
                str(data_root),
                DAY,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        landed = other_fs / "run-1" / DAY / "t.parquet"
        assert landed.read_bytes() == delivered and source.read_bytes() == delivered  # the crash

        run_id = "run-1" if retry_run_id == "same run id" else "run-2"
        result = check_batch(
            source, run_id=run_id, data_root=data_root, contract=contract, window=WINDOW
        )
        assert not result.success and result.quarantined_to == str(
            data_root / "quarantine" / "run-1" / DAY / "t.parquet"
        )
        assert not source.exists()
        copies = [p for p in other_fs.rglob("t.parquet")]
        assert copies == [landed] and landed.read_bytes() == delivered
        manifest = json.loads(landed.with_name("t.parquet.manifest.json").read_text())
        assert manifest["status"] == "quarantined" and manifest["source_removed"] is True
        # a later delivery of the same bytes after a finished move is a new batch: quarantined
        source.write_bytes(delivered)
        again = check_batch(
            source, run_id="run-3", data_root=data_root, contract=contract, window=WINDOW
        )
        assert again.quarantined_to.endswith(f"run-3/{DAY}/t.parquet") and not source.exists()
    finally:
        shutil.rmtree(other_fs)


def test_a_file_arriving_during_validation_is_not_quarantined_unchecked(
    tmp_path, contract, monkeypatch
):
    """Review: the per-file move took every batch file present at move time, so a file the
    producer finished while the day was being validated went into quarantine unrecorded and
    unchecked. Only the recorded files move; the late one stays for a new run."""
    from validation import quarantine

    data_root = tmp_path / "data"
    folder = data_root / "incoming" / DAY
    folder.mkdir(parents=True)
    write_bad_batch("nan", folder / "a.parquet", start=WINDOW[0], end=WINDOW[1])
    make_telemetry(200, *WINDOW, seed=1).to_parquet(folder / "b.parquet", index=False)
    real = quarantine.validate_batch

    def producer_finishes_c(*args, **kwargs):
        result = real(*args, **kwargs)
        make_telemetry(50, *WINDOW, seed=5).to_parquet(folder / "c.parquet", index=False)
        return result

    monkeypatch.setattr(quarantine, "validate_batch", producer_finishes_c)
    result = check_batch(folder, run_id="r", data_root=data_root, contract=contract, window=WINDOW)
    moved = Path(result.quarantined_to)
    assert sorted(p.name for p in all_files(moved)) == ["a.parquet", "b.parquet"]
    assert [p.name for p in folder.iterdir()] == ["c.parquet"]


def test_a_folder_move_killed_between_files_is_finished_by_another_run(
    tmp_path, contract, monkeypatch
):
    """Review: run r1 killed after moving a.parquet of a bad day; run r2 then met b.parquet
    alone, validated it and marked it validated, and r1's retry quarantined those validated
    bytes. A source holding the rest of a recorded move, the moved files verified in the
    target, is that move unfinished: r2 finishes it."""
    from validation import moves

    data_root = tmp_path / "data"
    folder = data_root / "incoming" / DAY
    folder.mkdir(parents=True)
    write_bad_batch("nan", folder / "a.parquet", start=WINDOW[0], end=WINDOW[1])
    make_telemetry(200, *WINDOW, seed=1).to_parquet(folder / "b.parquet", index=False)
    before = {p.name: sha256(p) for p in all_files(folder)}
    real = moves.move

    def killed_after_one(src, dst):
        real(src, dst)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(moves, "move", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        check_batch(folder, run_id="r1", data_root=data_root, contract=contract, window=WINDOW)
    monkeypatch.setattr(moves, "move", real)
    second = check_batch(folder, run_id="r2", data_root=data_root, contract=contract, window=WINDOW)
    first_target = data_root / "quarantine" / "r1" / DAY
    assert not second.success and second.quarantined_to == str(first_target)
    assert {p.name: sha256(p) for p in all_files(first_target)} == before
    assert not folder.exists() and not (data_root / "validated").exists()
    assert not (data_root / "quarantine" / "r2").exists()


def test_files_in_folders_on_their_way_are_no_part_of_a_batch(tmp_path, contract):
    """Review: only a file's own name was checked, so a committer's ``_temporary/`` or
    ``.staging/`` folder's files counted as the batch (and moved, breaking the commit)."""
    from validation.reader import list_batch_files

    data_root = tmp_path / "data"
    folder = data_root / "incoming" / DAY
    (folder / "_temporary" / "0").mkdir(parents=True)
    (folder / ".staging").mkdir()
    (folder / "sub").mkdir()
    write_bad_batch("nan", folder / "a.parquet", start=WINDOW[0], end=WINDOW[1])
    for path in (folder / "_temporary" / "0" / "part-0.parquet", folder / ".staging" / "b.parquet"):
        make_telemetry(20, *WINDOW, seed=2).to_parquet(path, index=False)
    assert [p.name for p in list_batch_files(folder)] == ["a.parquet"]
    result = check_batch(folder, run_id="r", data_root=data_root, contract=contract, window=WINDOW)
    assert sorted(p.name for p in all_files(Path(result.quarantined_to))) == ["a.parquet"]
    # what the batch did not hold stays, the empty "sub" folder included
    assert (folder / "_temporary" / "0" / "part-0.parquet").is_file()
    assert (folder / ".staging" / "b.parquet").is_file() and (folder / "sub").is_dir()


def test_a_whole_folder_copy_left_by_the_older_move_is_cleared_on_resume(tmp_path, contract):
    """A task of the version that copied a day folder whole across filesystems, killed before
    its rename, left ``.<day>.partial`` beside a ``moving`` manifest; the per-file resume left
    that second copy in quarantine. The retry removes it (a copy only: the source is intact)."""
    import shutil

    data_root = tmp_path / "data"
    folder = data_root / "incoming" / DAY
    folder.mkdir(parents=True)
    write_bad_batch("nan", folder / "a.parquet", start=WINDOW[0], end=WINDOW[1])
    kw = dict(run_id="r", data_root=data_root, contract=contract, window=WINDOW)
    done = check_batch(folder, **kw)
    moved = Path(done.quarantined_to)
    marker = moved.with_name(f"{DAY}.manifest.json")
    manifest = json.loads(marker.read_text())
    # the older version's state: manifest "moving", source intact, a hidden whole copy
    manifest["status"] = "moving"
    manifest.pop("source_removed", None)
    marker.write_text(json.dumps(manifest))
    shutil.copytree(moved, moved.with_name(f".{DAY}.partial"))
    moved.rename(folder)
    retried = check_batch(folder, **kw)
    assert not retried.success and retried.quarantined_to == done.quarantined_to
    assert not moved.with_name(f".{DAY}.partial").exists() and not folder.exists()
    assert [p.name for p in all_files(moved)] == ["a.parquet"]
