"""Great Expectations 1.x suites built from the telemetry :class:`~validation.contract.Contract`.

Importing this module imports Great Expectations (about 7 s): import it inside functions. One
ephemeral GX context serves the whole process (:func:`gx_context`); suites and validation
definitions are cached per contract fingerprint.

Two suites check a batch:

* the **files suite** runs on a small table with one row per input file (path, size, readable,
  read error) and names unreadable, empty and corrupt files;
* the **content suite** runs on the rows themselves: row count, column set, types, nulls, finite
  and in-range features, unique ids and, when a window is given, timestamps inside it.

Each expectation carries ``meta.fix``: what an operator should do when it fails.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import ColumnMapExpectation
from great_expectations.expectations.metrics.map_metric_provider import (
    ColumnMapMetricProvider,
    column_condition_partial,
)

from validation.contract import Contract

DATA_SOURCE_NAME = "emflow"
FILES_ASSET_NAME = "batch_files"
CONTENT_ASSET_NAME = "telemetry"
WINDOW_START_PARAM = "window_start"
WINDOW_END_PARAM = "window_end"


# ---------------------------------------------------------------------------------------------
# Expectations GX does not ship
# ---------------------------------------------------------------------------------------------
class ColumnValuesFinite(ColumnMapMetricProvider):
    """Row condition: the value is a finite number (nulls are excluded before, as GX does)."""

    condition_metric_name = "column_values.emflow_finite"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, **kwargs):  # noqa: D102, N805 (GX metric signature)
        return np.isfinite(column.to_numpy(dtype="float64", na_value=np.nan))


class ExpectColumnValuesToBeFinite(ColumnMapExpectation):
    """Expect column values to be finite numbers: neither +inf nor -inf (nulls are not judged)."""

    map_metric = "column_values.emflow_finite"
    success_keys = ("mostly",)


class ExpectColumnValuesToHaveDtype(gxe.ExpectColumnValuesToBeInTypeList):
    """Expect the column's pandas dtype to be one of ``type_list`` (names as pandas prints them).

    GX 1.24's ``expect_column_values_to_be_in_type_list`` cannot name timezone-aware datetimes
    (``datetime64[us, UTC]``) or pandas 3 strings (``str``); this accepts any dtype whose name is
    listed, and otherwise defers to GX (numpy dtypes; per-value types for ``object`` columns).
    """

    def _validate_pandas(self, actual_column_type, expected_types_list):  # noqa: D102
        if expected_types_list is not None and str(actual_column_type) in expected_types_list:
            return {"success": True, "result": {"observed_value": str(actual_column_type)}}
        outcome = super()._validate_pandas(actual_column_type, expected_types_list)
        outcome["result"]["observed_value"] = str(actual_column_type)
        return outcome


class ExpectBatchToContainFiles(gxe.ExpectTableRowCountToBeBetween):
    """Expect the batch (a file or a folder) to contain at least one Parquet or CSV file."""

    min_value: Any = 1
    max_value: Any = None


class ExpectBatchFilesToBeReadable(gxe.ExpectColumnValuesToBeInSet):
    """Expect every file of the batch to be readable as Parquet/CSV by pyarrow."""

    column: str = "readable"
    value_set: Any = [True]


class ExpectBatchFilesToBeNonEmpty(gxe.ExpectColumnValuesToBeBetween):
    """Expect every file of the batch to hold at least one byte."""

    column: str = "size_bytes"
    min_value: Any = 1
    max_value: Any = None


FIXES: dict[str, str] = {
    "expect_batch_to_contain_files": "deliver at least one .parquet/.csv file for the window",
    "expect_batch_files_to_be_readable": (
        "the file is truncated or not Parquet/CSV: re-export it from the producer "
        "(the original bytes are kept in quarantine)"
    ),
    "expect_batch_files_to_be_non_empty": "the file has 0 bytes: re-deliver the window",
    "expect_table_row_count_to_be_between": "deliver a batch within the contract's row bounds",
    "expect_table_columns_to_match_set": (
        "send exactly the contract's columns: add missing ones; drop extra ones upstream or "
        "set `extra_columns: allow` in the contract"
    ),
    "expect_column_to_exist": (
        "add the column upstream, or drop it from `feature_columns` in the contract"
    ),
    "expect_column_values_to_have_dtype": (
        "cast the column upstream (features numeric, ts timezone-aware UTC)"
    ),
    "expect_column_values_to_not_be_null": "fill or drop missing values upstream",
    "expect_column_values_to_be_finite": "replace +/-inf upstream (often a division by zero)",
    "expect_column_values_to_be_between": (
        "fix the producer, or widen the range in the contract if the values are real"
    ),
    "expect_column_values_to_be_unique": "de-duplicate rows by id upstream (replayed delivery?)",
}


#: The fix of an expectation that raised instead of being evaluated (its own fix would mislead).
NOT_EVALUATED_FIX = (
    "this check could not run on the column as delivered: fix the column's type or the other "
    "failures named here, then validate again"
)


def _meta(expectation_type: str, **extra: Any) -> dict[str, Any]:
    return {"fix": FIXES[expectation_type], **extra}


def _column_meta(contract: Contract, column: str) -> dict[str, Any]:
    """The fix for a missing column: the id and timestamp cannot be dropped from the features."""
    if column in (contract.id_column, contract.timestamp_column):
        role = "id" if column == contract.id_column else "timestamp"
        return {
            "fix": f"add the {role} column upstream: every row needs one "
            f"(or give the producer's {role} column as `{role}_column: name:` in the contract)"
        }
    return _meta("expect_column_to_exist")


# ---------------------------------------------------------------------------------------------
# Suites
# ---------------------------------------------------------------------------------------------
def files_expectations() -> list[gxe.Expectation]:
    """Expectations on the per-file table (columns ``file, size_bytes, readable, error``)."""
    return [
        ExpectBatchToContainFiles(meta=_meta("expect_batch_to_contain_files")),
        ExpectBatchFilesToBeReadable(meta=_meta("expect_batch_files_to_be_readable")),
        ExpectBatchFilesToBeNonEmpty(meta=_meta("expect_batch_files_to_be_non_empty")),
    ]


def content_expectations(contract: Contract, *, windowed: bool) -> list[gxe.Expectation]:
    """Expectations on the rows of a batch, in the order a reader checks them.

    Parameters
    ----------
    contract : Contract
    windowed : bool
        Add ``ts`` inside ``[window_start, window_end)``; the bounds are suite parameters
        (``{"$PARAMETER": "window_start"}``) supplied per run.
    """
    required = list(contract.required_columns)
    out: list[gxe.Expectation] = [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=contract.min_rows,
            max_value=contract.max_rows,
            meta=_meta("expect_table_row_count_to_be_between"),
        ),
        gxe.ExpectTableColumnsToMatchSet(
            column_set=required,
            exact_match=contract.extra_columns == "refuse",
            meta=_meta("expect_table_columns_to_match_set", extra_columns=contract.extra_columns)
            if contract.extra_columns == "refuse"
            # extra columns are accepted: only missing ones fail this
            else {"fix": "add the contract's missing columns upstream", "extra_columns": "allow"},
        ),
    ]
    out += [gxe.ExpectColumnToExist(column=c, meta=_column_meta(contract, c)) for c in required]

    def typed(column: str, types: tuple[str, ...]) -> gxe.Expectation:
        return ExpectColumnValuesToHaveDtype(
            column=column, type_list=list(types), meta=_meta("expect_column_values_to_have_dtype")
        )

    def not_null(column: str) -> gxe.Expectation:
        return gxe.ExpectColumnValuesToNotBeNull(
            column=column, meta=_meta("expect_column_values_to_not_be_null")
        )

    id_col, ts_col = contract.id_column, contract.timestamp_column
    out += [
        typed(id_col, contract.id_types),
        not_null(id_col),
        gxe.ExpectColumnValuesToBeUnique(
            column=id_col, meta=_meta("expect_column_values_to_be_unique")
        ),
        typed(ts_col, contract.timestamp_types),
        not_null(ts_col),
    ]
    if windowed:
        out.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=ts_col,
                min_value={"$PARAMETER": WINDOW_START_PARAM},
                max_value={"$PARAMETER": WINDOW_END_PARAM},
                strict_max=True,
                meta={
                    "fix": "timestamps must fall inside the batch's window [start, end): "
                    "deliver the rows to the window they belong to"
                },
            )
        )
    for name in contract.feature_columns:
        spec = contract.feature(name)
        out += [
            typed(name, contract.feature_types),
            not_null(name),
            ExpectColumnValuesToBeFinite(
                column=name, meta=_meta("expect_column_values_to_be_finite")
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column=name,
                min_value=spec.min,
                max_value=spec.max,
                meta=_meta("expect_column_values_to_be_between", unit=spec.unit),
            ),
        ]
    return out


def suite_name(contract: Contract, *, windowed: bool) -> str:
    """Name of the content suite of ``contract`` (changes whenever a rule changes)."""
    return f"{contract.name}.v{contract.version}.{contract.fingerprint[:10]}" + (
        ".windowed" if windowed else ""
    )


def build_content_suite(contract: Contract, *, windowed: bool) -> gx.ExpectationSuite:
    """A fresh (unsaved) content suite for ``contract``; review it with ``suite.to_json_dict()``."""
    gx_context()  # GX suites need an active context even before they are saved
    # expectations go in through the constructor: ``add_expectation`` on a suite whose name is
    # already saved in the context would write into that saved suite (and make the validation
    # definition built on it stale)
    expectations = content_expectations(contract, windowed=windowed)
    suite = gx.ExpectationSuite(
        name=suite_name(contract, windowed=windowed),
        expectations=expectations,
        meta={
            "contract": Path(contract.path).name if contract.path else None,
            "contract_fingerprint": contract.fingerprint,
        },
    )
    if len(suite.expectations) != len(expectations):  # GX logs and drops invalid ones
        raise RuntimeError(f"GX refused an expectation of suite {suite.name!r}: see the log")
    return suite


# ---------------------------------------------------------------------------------------------
# One context per process, validation definitions cached by contract fingerprint
# ---------------------------------------------------------------------------------------------
@functools.cache
def gx_context() -> Any:
    """The process-wide ephemeral GX context with one pandas data source and two assets."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # our CLI draws its own bar over files; GX's per-metric bars would only be noise in task logs
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_or_update_pandas(name=DATA_SOURCE_NAME)
    source.add_dataframe_asset(name=FILES_ASSET_NAME).add_batch_definition_whole_dataframe("whole")
    source.add_dataframe_asset(name=CONTENT_ASSET_NAME).add_batch_definition_whole_dataframe(
        "whole"
    )
    return context


def _batch_definition(asset_name: str) -> Any:
    source = gx_context().data_sources.get(DATA_SOURCE_NAME)
    return source.get_asset(asset_name).get_batch_definition("whole")


@functools.cache
def files_validation_definition() -> Any:
    """Validation definition of the files suite."""
    context = gx_context()
    suite = context.suites.add_or_update(
        gx.ExpectationSuite(name="batch-files", expectations=files_expectations())
    )
    return context.validation_definitions.add_or_update(
        gx.ValidationDefinition(
            name="batch-files", data=_batch_definition(FILES_ASSET_NAME), suite=suite
        )
    )


_content_definitions: dict[tuple[str, bool], Any] = {}


def content_validation_definition(contract: Contract, *, windowed: bool) -> Any:
    """Validation definition of the content suite of ``contract`` (built once per process)."""
    key = (contract.fingerprint, windowed)
    if key not in _content_definitions:
        context = gx_context()
        suite = context.suites.add_or_update(build_content_suite(contract, windowed=windowed))
        _content_definitions[key] = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(
                name=suite.name, data=_batch_definition(CONTENT_ASSET_NAME), suite=suite
            )
        )
    return _content_definitions[key]
