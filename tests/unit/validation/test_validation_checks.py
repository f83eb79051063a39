"""What ``validate_batch`` decides about a batch: good batches pass, bad ones fail with the
named expectation and a fix that fits; the strict-JSON report and ``BatchRejected``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.validation import WINDOW

from validation import BatchRejected, validate_batch
from validation.synthetic import make_telemetry


@pytest.fixture(scope="module")
def good_result(good_frame, contract):
    return validate_batch(good_frame, contract, window=WINDOW)


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


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_file_in_another_time_zone_is_read_as_the_same_utc_instants(tmp_path, contract, suffix):
    """Parquet in Europe/Berlin was refused (dtype datetime64[us, Europe/Berlin]) where the same
    rows as CSV (+01:00 offsets, which pyarrow reads as UTC) passed (QA probe): both are now the
    same instants in UTC; naive timestamps are still refused (above)."""
    from validation.reader import read_file

    frame = make_telemetry(300, *WINDOW, seed=4)
    berlin = frame.assign(ts=frame["ts"].dt.tz_convert("Europe/Berlin"))
    path = tmp_path / f"berlin{suffix}"
    if suffix == ".csv":
        berlin.to_csv(path, index=False)  # ISO text with +01:00 / +02:00 offsets
    else:
        berlin.to_parquet(path, index=False)
    read = read_file(path)
    assert str(read["ts"].dt.tz) == "UTC"
    assert (read["ts"] == frame["ts"]).all()  # the same instants
    result = validate_batch(path, contract, window=WINDOW)
    assert result.success, result.summary


def test_missing_column_summary_names_it_once(contract):
    result = validate_batch(make_telemetry(300, *WINDOW).drop(columns=["temp_c"]), contract)
    assert result.failed_expectations[:2] == [
        "expect_table_columns_to_match_set",
        "expect_column_to_exist",
    ]
    assert "expect_column_to_exist [temp_c]: column is missing" in result.summary
    assert "not evaluated)" in result.summary  # dependent checks are collapsed


def test_empty_folder_and_missing_path(tmp_path, contract):
    (tmp_path / "empty").mkdir()
    result = validate_batch(tmp_path / "empty", contract)
    assert result.failed_expectations == ["expect_batch_to_contain_files"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        validate_batch(tmp_path / "nowhere.parquet", contract)


def test_batch_rejected_names_the_failed_expectation(contract):
    result = validate_batch(make_telemetry(300, *WINDOW).assign(error_rate=1.5), contract)
    with pytest.raises(BatchRejected, match="expect_column_values_to_be_between") as caught:
        result.raise_for_failure()
    assert caught.value.result is result
    both = BatchRejected.from_results([result, result])
    assert len(both.results) == 2 and str(both).count("REJECTED") == 2


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
