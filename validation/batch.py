"""Validate one telemetry batch (a file, a folder of files or a DataFrame) against the contract.

Files are read by :mod:`validation.reader` (pyarrow; Parquet and CSV), never row by row.
A file that cannot be read does not raise: it fails the named expectation
``expect_batch_files_to_be_readable`` (and ``expect_batch_files_to_be_non_empty`` for 0 bytes), so
an operator sees the same kind of report for every way a batch can be bad.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from validation.contract import Contract, load_contract
from validation.reader import list_batch_files, read_batch
from validation.window import as_window

N_EXAMPLES = 5


class BatchRejected(Exception):
    """One or more batches failed validation.

    ``result`` is the (first) :class:`ValidationResult`, ``results`` all of them; the message is
    their summaries, so a failed task log names the failed expectations and the fixes.
    ``rows_checked`` counts every row validated with them, passing batches included (None when
    unknown).
    """

    rows_checked: int | None = None

    def __init__(self, result: ValidationResult, *more: ValidationResult):
        self.results = [result, *more]
        self.result = result
        super().__init__("\n".join(_with_release(r) for r in self.results))

    @classmethod
    def from_results(
        cls, results: Sequence[ValidationResult], *, rows_checked: int | None = None
    ) -> BatchRejected:
        """One exception for several rejected batches (e.g. every bad file of a window)."""
        if not results:
            raise ValueError("from_results needs at least one rejected result")
        error = cls(*results)
        error.rows_checked = rows_checked
        return error


def _with_release(result: ValidationResult) -> str:
    """A rejected batch's summary, plus where its bytes are now and how to release them."""
    if not result.quarantined_to:
        return result.summary
    return (
        f"{result.summary}\n  moved to {result.quarantined_to}; to release it, fix it and move "
        f"it back to {result.source}, then clear this run's validate task with its downstream "
        "tasks (it is checked again), or re-run the window under a new run id"
    )


@dataclass
class FailedExpectation:
    """One failed expectation, flattened from the GX result.

    Attributes
    ----------
    expectation : str
        GX expectation type, e.g. ``"expect_column_values_to_not_be_null"``.
    column : str or None
        Column it applies to (None for table- and file-level expectations).
    unexpected_count : int or None
        Rows (or files) that broke it; None for aggregate expectations.
    unexpected_percent : float or None
        Same, in percent of the non-null values.
    examples : list
        Up to five offending values (JSON-able; non-finite floats as ``"nan"``/``"inf"``).
    observed_value : Any
        What GX measured for aggregate expectations (row count, column list, dtype).
    fix : str
        What to do about it.
    error : str or None
        Why GX could not evaluate it (e.g. the column is missing).
    suite : str
        ``"files"`` or ``"content"``.
    """

    expectation: str
    column: str | None
    unexpected_count: int | None
    unexpected_percent: float | None
    examples: list[Any]
    observed_value: Any
    fix: str
    error: str | None = None
    suite: str = "content"

    def describe(self) -> str:
        """One line for the summary."""
        where = f" [{self.column}]" if self.column else ""
        if self.expectation == "expect_column_to_exist":
            what = "column is missing"
        elif self.error:
            what = f"not evaluated: {self.error}"
        elif self.unexpected_count is not None:
            pct = (
                f" ({self.unexpected_percent:.3g}%)" if self.unexpected_percent is not None else ""
            )
            what = f"{self.unexpected_count} unexpected{pct}, e.g. {self.examples}"
        else:
            what = f"observed {_short(self.observed_value)}"
        return f"{self.expectation}{where}: {what} -> fix: {self.fix}"


@dataclass
class ValidationResult:
    """Outcome of validating one batch.

    Attributes
    ----------
    success : bool
        True when every expectation held.
    failed : list of FailedExpectation
        Failed expectations, file-level first, then table, column existence, types, values.
    n_rows : int
        Rows read (0 when nothing was readable).
    summary : str
        Short human-readable text naming the failed expectations and the fix.
    source : str
        The file or folder validated (``"<DataFrame>"`` for in-memory batches).
    files : list of dict
        Per input file: ``file``, ``size_bytes``, ``readable``, ``error``, ``n_rows``.
    window : tuple of str or None
        ``[start, end)`` the timestamps were checked against (ISO 8601), if any.
    contract : dict
        ``name``, ``version``, ``fingerprint`` and ``path`` of the contract used.
    statistics : dict
        Evaluated / successful / unsuccessful expectation counts over both suites.
    gx_results : dict
        GX's own result JSON per suite (``"files"``, ``"content"``; None when not run).
    report_path : str or None
        Set by :func:`validation.check_batch`: the JSON report written beside the batch.
    quarantined_to : str or None
        Set by :func:`validation.check_batch` on failure: where the batch's bytes now are.
    data : pandas.DataFrame or None
        The rows read (not serialised), so a caller need not read the batch twice.
    """

    success: bool
    failed: list[FailedExpectation]
    n_rows: int
    summary: str
    source: str
    files: list[dict[str, Any]] = field(default_factory=list)
    window: tuple[str, str] | None = None
    contract: dict[str, Any] = field(default_factory=dict)
    statistics: dict[str, int] = field(default_factory=dict)
    gx_results: dict[str, Any] = field(default_factory=dict)
    report_path: str | None = None
    quarantined_to: str | None = None
    data: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    @property
    def failed_expectations(self) -> list[str]:
        """Names of the failed expectations, in report order (with repeats per column)."""
        return [f.expectation for f in self.failed]

    @property
    def quarantine_dir(self) -> str | None:
        """Folder holding the quarantined batch and its reports (None unless quarantined)."""
        return None if self.quarantined_to is None else str(Path(self.quarantined_to).parent)

    @property
    def record_dir(self) -> str | None:
        """Folder holding this batch's reports (``quarantine/`` or ``validated/<run id>/...``)."""
        return None if self.report_path is None else str(Path(self.report_path).parent)

    @property
    def validated_path(self) -> str | None:
        """The batch's path when it passed (it stays where it was delivered), else None."""
        return self.source if self.success and self.source != "<DataFrame>" else None

    def failures_of(self, expectation: str) -> list[FailedExpectation]:
        """The failures of one expectation type."""
        return [f for f in self.failed if f.expectation == expectation]

    def raise_for_failure(self) -> ValidationResult:
        """Raise :class:`BatchRejected` if the batch failed; return ``self`` otherwise."""
        if not self.success:
            raise BatchRejected(self)
        return self

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-able report (strict JSON: no NaN/Infinity), including GX's result JSON."""
        data = asdict(self)
        data.pop("data")
        return jsonable(data)

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> ValidationResult:
        """Rebuild a result written by :meth:`to_json_dict` (``data`` stays None)."""
        fields = dict(data)
        fields["failed"] = [FailedExpectation(**f) for f in fields.get("failed", [])]
        if fields.get("window") is not None:
            fields["window"] = tuple(fields["window"])
        return cls(**fields)


# ---------------------------------------------------------------------------------------------
# JSON helpers
# ---------------------------------------------------------------------------------------------
def jsonable(obj: Any) -> Any:
    """Convert ``obj`` to strict-JSON types: non-finite floats become ``"nan"``/``"inf"``."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float):
        return (
            obj
            if math.isfinite(obj)
            else ("nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf"))
        )
    if isinstance(obj, pd.Timestamp | dt.datetime | dt.date):
        return obj.isoformat()
    if obj is pd.NaT or obj is pd.NA:
        return None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    return str(obj)


def _short(value: Any, limit: int = 160) -> str:
    text = repr(jsonable(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Turning GX results into FailedExpectation records
# ---------------------------------------------------------------------------------------------
def _exception_message(info: Any) -> str | None:
    if not isinstance(info, Mapping):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "exception")
    for value in info.values():
        message = _exception_message(value)
        if message:
            return message
    return None


def _failures(gx_result: Any, suite: str) -> list[FailedExpectation]:
    from validation.expectations import FIXES, NOT_EVALUATED_FIX

    out = []
    for r in gx_result.results:
        if r.success:
            continue
        config = r.expectation_config
        result = r.result or {}
        error = _exception_message(r.exception_info)
        examples = result.get("partial_unexpected_list") or []
        fix = (config.meta or {}).get("fix") or FIXES.get(config.type, "see the contract")
        out.append(
            FailedExpectation(
                expectation=config.type,
                column=config.kwargs.get("column"),
                unexpected_count=result.get("unexpected_count"),
                unexpected_percent=result.get("unexpected_percent"),
                examples=jsonable(examples[:N_EXAMPLES]),
                observed_value=jsonable(result.get("observed_value")),
                fix=NOT_EVALUATED_FIX if error else fix,
                error=error,
                suite=suite,
            )
        )
    return out


def _order(failure: FailedExpectation, contract: Contract | None) -> tuple[int, int, str]:
    from validation.expectations import FIXES

    kinds = list(FIXES)
    rank = kinds.index(failure.expectation) if failure.expectation in kinds else len(kinds)
    columns = list(contract.required_columns) if contract else []
    col = columns.index(failure.column) if failure.column in columns else -1
    return (0 if failure.suite == "files" else 1, rank, f"{col:04d}")


def _summary(result: ValidationResult, n_evaluated: int) -> str:
    contract = result.contract
    head = (
        f"batch {result.source} ({result.n_rows} rows"
        + (f", {len(result.files)} file(s)" if result.files else "")
        + (f", window [{result.window[0]}, {result.window[1]})" if result.window else "")
        + f"), contract {contract.get('name')} v{contract.get('version')}"
    )
    if result.success:
        return f"PASSED: {head}: all {n_evaluated} expectations met."
    # checks on a missing column, or raising on a column of the wrong type: one line per kind
    bad = {f.column: "wrong type" for f in result.failed if "have_dtype" in f.expectation}
    bad |= {f.column: "missing" for f in result.failed if f.expectation.endswith("to_exist")}
    hidden = {
        id(f): bad[f.column]
        for f in result.failed
        if f.column in bad
        and "to_exist" not in f.expectation
        and (bad[f.column] == "missing" or f.error)
    }
    lines = [f"REJECTED: {head}: {len(result.failed)} of {n_evaluated} expectations failed:"]
    lines += [f"  - {f.describe()}" for f in result.failed if id(f) not in hidden]
    for kind in ("missing", "wrong type"):
        columns = sorted({str(f.column) for f in result.failed if hidden.get(id(f)) == kind})
        if count := sum(1 for v in hidden.values() if v == kind):
            lines.append(f"  (+{count} expectations on {kind} column(s) {columns} not evaluated)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------
def validate_batch(
    source: str | os.PathLike[str] | pd.DataFrame,
    contract: Contract | None = None,
    *,
    window: Sequence[Any] | None = None,
    progress: bool = False,
) -> ValidationResult:
    """Validate a telemetry batch against the contract with Great Expectations.

    Parameters
    ----------
    source : path-like or pandas.DataFrame
        A Parquet/CSV file, a folder of them (read recursively, concatenated) or a DataFrame of
        shape (n_rows, n_columns).
    contract : Contract, optional
        Default :func:`validation.contract.load_contract`.
    window : (start, end), optional
        Timestamps must lie in ``[start, end)`` (naive bounds mean UTC); not checked when None.
        :func:`window_for_day` / :func:`window_from_path` build one for a daily folder.
    progress : bool
        Show a tqdm bar while reading the files of a folder.

    Returns
    -------
    ValidationResult
        Never raises for bad data: unreadable, empty or corrupt files fail named expectations.
        Call ``.raise_for_failure()`` to turn a failure into :class:`BatchRejected`.

    Raises
    ------
    FileNotFoundError
        If ``source`` is a path that does not exist.
    """
    from validation import expectations as ex

    contract = contract or load_contract()
    checked_window = as_window(window)
    failed: list[FailedExpectation] = []
    gx_results: dict[str, Any] = {"files": None, "content": None}
    stats = {
        "evaluated_expectations": 0,
        "successful_expectations": 0,
        "unsuccessful_expectations": 0,
    }

    def record(name: str, gx_result: Any) -> None:
        gx_results[name] = jsonable(gx_result.to_json_dict())
        failed.extend(_failures(gx_result, name))
        for key in stats:
            stats[key] += int(gx_result.statistics.get(key, 0))

    facts: list[dict[str, Any]] = []
    if isinstance(source, pd.DataFrame):
        data: pd.DataFrame | None = source
        source_name = "<DataFrame>"
    else:
        files = list_batch_files(source)
        source_name = str(Path(source))
        data, facts = read_batch(files, progress=progress)
        files_table = pd.DataFrame(
            facts, columns=["file", "size_bytes", "readable", "error", "n_rows"]
        ).astype({"size_bytes": "int64", "readable": "bool"})
        record(
            "files",
            ex.files_validation_definition().run(batch_parameters={"dataframe": files_table}),
        )
        for failure in failed:  # name the files, not just the flag values GX saw
            if failure.expectation == "expect_batch_files_to_be_readable":
                failure.examples = [
                    f"{f['file']}: {f['error']}" for f in facts if not f["readable"]
                ]
            elif failure.expectation == "expect_batch_files_to_be_non_empty":
                failure.examples = [f["file"] for f in facts if f["size_bytes"] == 0]
            failure.examples = failure.examples[:N_EXAMPLES]

    n_rows = 0 if data is None else len(data)
    if data is not None:
        definition = ex.content_validation_definition(contract, windowed=checked_window is not None)
        parameters = (
            {ex.WINDOW_START_PARAM: checked_window[0], ex.WINDOW_END_PARAM: checked_window[1]}
            if checked_window
            else {}
        )
        record(
            "content",
            definition.run(batch_parameters={"dataframe": data}, expectation_parameters=parameters),
        )

    failed.sort(key=lambda f: _order(f, contract))
    result = ValidationResult(
        success=not failed,
        failed=failed,
        n_rows=n_rows,
        summary="",
        source=source_name,
        files=jsonable(facts),
        window=None
        if checked_window is None
        else (checked_window[0].isoformat(), checked_window[1].isoformat()),
        contract={
            "name": contract.name,
            "version": contract.version,
            "fingerprint": contract.fingerprint,
            "path": contract.path,
        },
        statistics=stats,
        gx_results=gx_results,
        data=data,
    )
    result.summary = _summary(result, stats["evaluated_expectations"])
    return result
