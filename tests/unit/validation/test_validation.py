"""The telemetry contract, validate_batch and quarantine, with real Great Expectations suites."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from validation import (
    BatchRejected,
    ContractError,
    QuarantineConflict,
    check_batch,
    load_contract,
    validate_batch,
    window_for_day,
    window_from_path,
)
from validation.contract import DEFAULT_CONTRACT_PATH
from validation.synthetic import (
    BAD_BATCH_EXPECTATIONS,
    FILE_KINDS,
    make_telemetry,
    write_bad_batch,
    write_window,
)

DAY = "2026-11-01"
WINDOW = window_for_day(DAY)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def contract():
    return load_contract()


@pytest.fixture(scope="module")
def good_frame():
    return make_telemetry(600, *WINDOW, seed=3)


@pytest.fixture(scope="module")
def good_result(good_frame, contract):
    return validate_batch(good_frame, contract, window=WINDOW)


# ---------------------------------------------------------------------------------------------
# the contract and its suite
# ---------------------------------------------------------------------------------------------
def test_contract_defaults_come_from_the_yaml_file(contract):
    assert contract.path == str(DEFAULT_CONTRACT_PATH)
    assert contract.feature_columns == (
        "cpu_util",
        "mem_util",
        "latency_ms",
        "error_rate",
        "req_rate",
        "temp_c",
    )
    assert contract.required_columns[:2] == ("event_id", "ts")
    assert contract.feature("latency_ms").max == 60000.0
    assert contract.extra_columns == "refuse"


def test_contract_overrides_and_errors_name_the_fix(contract, tmp_path, monkeypatch):
    subset = load_contract(feature_columns=["cpu_util", "temp_c"], extra_columns="allow")
    assert subset.feature_columns == ("cpu_util", "temp_c")
    assert subset.fingerprint != contract.fingerprint
    with pytest.raises(ContractError, match="add them under `features:`"):
        load_contract(feature_columns=["gpu_util"])
    with pytest.raises(ContractError, match="extra_columns must be one of"):
        load_contract(extra_columns="maybe")
    with pytest.raises(ContractError, match="unknown contract setting"):
        load_contract(min_row=3)
    custom = tmp_path / "contract.yaml"
    custom.write_text(DEFAULT_CONTRACT_PATH.read_text().replace("min_rows: 100", "min_rows: 7"))
    monkeypatch.setenv("EMFLOW_CONTRACT", str(custom))
    assert load_contract().min_rows == 7
    monkeypatch.setenv("EMFLOW_CONTRACT", str(tmp_path / "nope.yaml"))
    with pytest.raises(ContractError, match="not found"):
        load_contract()


def test_suite_is_built_from_the_contract(contract):
    from validation.expectations import build_content_suite

    suite = build_content_suite(contract, windowed=True).to_json_dict()
    by_column: dict = {}
    for expectation in suite["expectations"]:
        by_column.setdefault(expectation["kwargs"].get("column"), []).append(expectation)
        assert expectation["meta"]["fix"]  # every expectation says what to do when it fails
    for feature in contract.feature_columns:
        kinds = {e["type"] for e in by_column[feature]}
        assert {
            "expect_column_to_exist",
            "expect_column_values_to_not_be_null",
            "expect_column_values_to_be_finite",
            "expect_column_values_to_be_between",
            "expect_column_values_to_have_dtype",
        } <= kinds
        (between,) = [e for e in by_column[feature] if e["type"].endswith("_to_be_between")]
        assert between["kwargs"]["max_value"] == contract.feature(feature).max
    ts_window = [e for e in by_column["ts"] if e["type"] == "expect_column_values_to_be_between"]
    assert ts_window[0]["kwargs"]["min_value"] == {"$PARAMETER": "window_start"}
    unwindowed = build_content_suite(contract, windowed=False).to_json_dict()
    assert len(unwindowed["expectations"]) == len(suite["expectations"]) - 1


def test_committed_suite_snapshot_matches_the_contract(contract):
    """validation/contracts/telemetry.suite.json is the reviewable GX suite; it must be current."""
    from validation.expectations import build_content_suite

    committed = json.loads((DEFAULT_CONTRACT_PATH.parent / "telemetry.suite.json").read_text())
    built = json.loads(
        json.dumps(build_content_suite(contract, windowed=True).to_json_dict(), default=str)
    )
    assert built == committed, (
        "the contract changed: regenerate the snapshot with "
        "`emflow validate --print-suite > validation/contracts/telemetry.suite.json`"
    )


# ---------------------------------------------------------------------------------------------
# good batches
# ---------------------------------------------------------------------------------------------
def test_good_dataframe_passes(good_result, good_frame):
    assert good_result.success, good_result.summary
    assert good_result.failed == []
    assert good_result.n_rows == len(good_frame)
    assert good_result.summary.startswith("PASSED")
    assert good_result.statistics["unsuccessful_expectations"] == 0
    assert good_result.statistics["evaluated_expectations"] >= 40
    assert good_result.data is good_frame


def test_good_parquet_csv_and_folder_pass(tmp_path, contract):
    frame = make_telemetry(300, *WINDOW, seed=4)
    parquet = tmp_path / "day" / "part-0.parquet"
    parquet.parent.mkdir()
    frame.iloc[:150].to_parquet(parquet, index=False)
    csv = tmp_path / "day" / "part-1.csv"
    frame.iloc[150:].to_csv(csv, index=False)
    contract_small = contract.with_(min_rows=100)
    for source, rows in ((parquet, 150), (csv, 150), (tmp_path / "day", 300)):
        result = validate_batch(source, contract_small, window=WINDOW)
        assert result.success, result.summary
        assert result.n_rows == rows
    assert len(result.files) == 2 and all(f["readable"] for f in result.files)


def test_report_is_strict_json_with_the_gx_result(good_result, contract):
    bad = validate_batch(make_telemetry(200, *WINDOW).assign(latency_ms=np.inf), contract)
    for result in (good_result, bad):
        report = json.loads(json.dumps(result.to_json_dict(), allow_nan=False))
        content = report["gx_results"]["content"]
        assert content["success"] is result.success
        assert {r["expectation_config"]["type"] for r in content["results"]} >= {
            "expect_column_values_to_be_finite",
            "expect_column_values_to_be_unique",
        }
    (failure,) = bad.failures_of("expect_column_values_to_be_finite")[:1]
    assert failure.examples[0] == "inf" and failure.unexpected_count == 200


# ---------------------------------------------------------------------------------------------
# every bad batch fails with the named expectation, and is quarantined byte-for-byte
# ---------------------------------------------------------------------------------------------
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


def test_extra_columns_allowed_or_refused_per_configuration(contract):
    frame = make_telemetry(300, *WINDOW).assign(host="web-1")
    refused = validate_batch(frame, contract, window=WINDOW)
    assert refused.failed_expectations == ["expect_table_columns_to_match_set"]
    assert "host" in refused.failed[0].observed_value
    allowed = validate_batch(frame, contract.with_(extra_columns="allow"), window=WINDOW)
    assert allowed.success, allowed.summary


def test_type_errors_naive_timestamps_and_string_features(contract):
    naive = make_telemetry(300, *WINDOW)
    naive["ts"] = naive["ts"].dt.tz_localize(None)
    result = validate_batch(naive, contract)
    (dtype_failure,) = result.failures_of("expect_column_values_to_have_dtype")
    assert dtype_failure.column == "ts" and dtype_failure.observed_value == "datetime64[us]"
    as_text = make_telemetry(300, *WINDOW).astype({"cpu_util": "str"})
    result = validate_batch(as_text, contract)
    assert [f.column for f in result.failures_of("expect_column_values_to_have_dtype")] == [
        "cpu_util"
    ]


def test_missing_column_summary_names_it_once(contract):
    result = validate_batch(make_telemetry(300, *WINDOW).drop(columns=["temp_c"]), contract)
    assert result.failed_expectations[:2] == [
        "expect_table_columns_to_match_set",
        "expect_column_to_exist",
    ]
    assert "expect_column_to_exist [temp_c]: column is missing" in result.summary
    assert "not evaluated)" in result.summary  # dependent checks are collapsed


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


def test_empty_folder_and_missing_path(tmp_path, contract):
    (tmp_path / "empty").mkdir()
    result = validate_batch(tmp_path / "empty", contract)
    assert result.failed_expectations == ["expect_batch_to_contain_files"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        validate_batch(tmp_path / "nowhere.parquet", contract)


# ---------------------------------------------------------------------------------------------
# idempotency: the same run id gives the same outcome, once
# ---------------------------------------------------------------------------------------------
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

    # different bytes under the same run id and name: refused, nothing moved or overwritten
    write_bad_batch("inf", source, start=WINDOW[0], end=WINDOW[1])
    changed = source.read_bytes()
    with pytest.raises(QuarantineConflict, match="new run id"):
        check_batch(
            source,
            run_id="scheduled__2026-11-02T00:00:00+00:00",
            data_root=data_root,
            contract=contract,
            window=WINDOW,
        )
    assert source.read_bytes() == changed
    assert (quarantine_files[-1].parent / "telemetry.parquet").read_bytes() == delivered


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


def test_batch_rejected_names_the_failed_expectation(contract):
    result = validate_batch(make_telemetry(300, *WINDOW).assign(error_rate=1.5), contract)
    with pytest.raises(BatchRejected, match="expect_column_values_to_be_between") as caught:
        result.raise_for_failure()
    assert caught.value.result is result
    both = BatchRejected.from_results([result, result])
    assert len(both.results) == 2 and str(both).count("REJECTED") == 2


def test_window_helpers():
    start, end = window_for_day("2026-11-23")
    assert (start.isoformat(), end.isoformat()) == (
        "2026-11-23T00:00:00+00:00",
        "2026-11-24T00:00:00+00:00",
    )
    assert window_from_path("/data/incoming/2026-11-23/telemetry.parquet") == (start, end)
    assert window_from_path("/tmp/batch.parquet") is None


def test_write_window_never_overwrites(tmp_path):
    frame = make_telemetry(50, *WINDOW)
    path = write_window(frame, tmp_path, DAY)
    assert path == tmp_path / "incoming" / DAY / "telemetry.parquet"
    digest = sha256(path)
    assert write_window(frame, tmp_path, DAY) == path  # same content: no-op
    with pytest.raises(FileExistsError, match="instead of overwriting"):
        write_window(make_telemetry(50, *WINDOW, seed=9), tmp_path, DAY)
    assert sha256(path) == digest
    assert [p.name for p in path.parent.iterdir()] == ["telemetry.parquet"]


# ---------------------------------------------------------------------------------------------
# synthetic telemetry
# ---------------------------------------------------------------------------------------------
def test_synthetic_telemetry_meets_the_contract_and_has_mixture_structure(contract):
    from sklearn.mixture import GaussianMixture

    frame = make_telemetry(3000, *WINDOW, seed=11, n_modes=4)
    assert frame["event_id"].is_unique and frame["event_id"].dtype == np.int64
    assert frame["ts"].between(*WINDOW, inclusive="left").all()
    for name in contract.feature_columns:
        spec = contract.feature(name)
        assert frame[name].between(spec.min, spec.max).all()
    features = np.log1p(frame[list(contract.feature_columns)].to_numpy())
    bic = [GaussianMixture(k, random_state=0).fit(features).bic(features) for k in (1, 4)]
    assert bic[1] < bic[0] - 1000  # four regimes explain the data far better than one Gaussian
    shifted = make_telemetry(3000, *WINDOW, seed=11, n_modes=4, shift=1.0)
    assert (
        shifted[list(contract.feature_columns)].mean()
        > frame[list(contract.feature_columns)].mean()
    ).all()
    assert pd.Series(make_telemetry(10, *WINDOW, seed=2)["cpu_util"]).equals(
        make_telemetry(10, *WINDOW, seed=2)["cpu_util"]
    )


def test_building_a_suite_again_leaves_the_saved_one_untouched(contract, good_frame):
    """Rebuilding the suite of a contract already validated in this process (the CLI's
    --print-suite, the snapshot test) neither changes the saved suite nor breaks validation."""
    from validation.expectations import build_content_suite, gx_context, suite_name

    assert validate_batch(good_frame, contract, window=WINDOW).success
    name = suite_name(contract, windowed=True)
    saved = gx_context().suites.get(name).to_json_dict()
    rebuilt = build_content_suite(contract, windowed=True).to_json_dict()
    assert all("id" not in e for e in rebuilt["expectations"])
    assert gx_context().suites.get(name).to_json_dict() == saved
    assert validate_batch(good_frame, contract, window=WINDOW).success


def test_cross_filesystem_folder_move_killed_mid_copy_resumes(tmp_path, contract, monkeypatch):
    """Quarantine across filesystems copies, verifies, then unlinks; a task killed after the
    copy leaves a stale .partial copy that the retry replaces instead of failing on it."""
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
    real_rename, real_copytree = quarantine.os.rename, shutil.copytree

    def cross_device(src, dst):
        if "incoming" in str(src):
            raise OSError(errno.EXDEV, "cross-device link")
        return real_rename(src, dst)

    def killed_after_copy(src, dst, **kwargs):
        real_copytree(src, dst, **kwargs)
        raise KeyboardInterrupt("task killed mid-move")

    monkeypatch.setattr(quarantine.os, "rename", cross_device)
    monkeypatch.setattr(quarantine.shutil, "copytree", killed_after_copy)
    with pytest.raises(KeyboardInterrupt):
        check_batch(folder, run_id="r", data_root=data_root, contract=contract, window=WINDOW)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == delivered  # source intact
    monkeypatch.setattr(quarantine.shutil, "copytree", real_copytree)
    retried = check_batch(folder, run_id="r", data_root=data_root, contract=contract, window=WINDOW)
    assert not retried.success and not folder.exists()
    moved = Path(retried.quarantined_to)
    assert {p.name: p.read_bytes() for p in moved.iterdir()} == delivered
    assert not list(moved.parent.glob(".*.partial"))


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


def test_hints_fit_the_failure(contract, tmp_path):
    """Issue 16.15: hints that did not fit: "replace +/-inf upstream" on a finite check that
    never ran (a string column), and "drop it from `feature_columns`" for a missing id or
    timestamp column (neither is a feature)."""
    frame = make_telemetry(300, *WINDOW, seed=1)
    typed = frame.assign(cpu_util=frame["cpu_util"].astype(str))
    typed.loc[3, "cpu_util"] = "n/a"
    result = validate_batch(typed, contract, window=WINDOW)
    not_run = [f for f in result.failed if f.error is not None]
    assert {f.expectation for f in not_run} >= {"expect_column_values_to_be_finite"}
    assert all("+/-inf" not in f.fix and "widen the range" not in f.fix for f in not_run)
    assert "+/-inf" not in result.summary and "wrong type column(s) ['cpu_util']" in result.summary

    result = validate_batch(frame.drop(columns=["event_id", "ts"]), contract, window=WINDOW)
    missing = {f.column: f.fix for f in result.failed if f.expectation == "expect_column_to_exist"}
    assert set(missing) == {"event_id", "ts"}
    assert all("feature_columns" not in fix for fix in missing.values())
    assert "add the id column" in missing["event_id"] and "timestamp" in missing["ts"]
    result = validate_batch(frame.drop(columns=["temp_c"]), contract, window=WINDOW)
    (feature,) = [f for f in result.failed if f.expectation == "expect_column_to_exist"]
    assert "feature_columns" in feature.fix  # a feature may be dropped from the contract
