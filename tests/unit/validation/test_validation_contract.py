"""The telemetry contract and the Great Expectations suite built from it, and the inputs made
to it: synthetic telemetry, day windows, ``write_window``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from support.validation import DAY, WINDOW, sha256

from validation import (
    ContractError,
    load_contract,
    validate_batch,
    window_for_day,
    window_from_path,
)
from validation.contract import DEFAULT_CONTRACT_PATH
from validation.synthetic import make_telemetry, write_window


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
