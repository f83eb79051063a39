"""Validate step: every day of the window against the data contract."""

from __future__ import annotations

import logging
from typing import Any

from emflow.config import Settings
from emflow.run.request import settings_for, window_batches
from emflow.run.state import RunRequest, Validated

log = logging.getLogger(__name__)


def rejection_summary(rejected: Exception) -> dict[str, Any]:
    """JSON-able facts of the batches :func:`validate_window` rejected (for the metrics step)."""
    results = getattr(rejected, "results", None) or [getattr(rejected, "result", None)]
    results = [r for r in results if r is not None]
    rows_quarantined = sum(int(r.n_rows) for r in results)
    return {
        "message": str(rejected),
        "failed": sorted({name for r in results for name in r.failed_expectations}),
        # every row the contract checked, the passing batches' included (the quarantine rate)
        "rows_validated": getattr(rejected, "rows_checked", None) or rows_quarantined,
        "rows_quarantined": rows_quarantined,
        "quarantine_dirs": [str(r.quarantine_dir) for r in results if r.quarantine_dir],
    }


def validate_window(request: RunRequest, settings: Settings | None = None) -> Validated:
    """Check every day of the window against the data contract, each day's files together.

    :func:`validation.check_batch` records a passing day's report under
    ``validated/<run key>/<day>`` and moves a failing day's folder, byte for byte, to
    ``quarantine/<run key>/<day>`` with its JSON report. Every day is checked before this raises
    :class:`validation.BatchRejected`, whose message names the failed expectations (and fixes)
    of each rejected day. Re-running for the same run key gives the same outcome; a day moved
    back fixed (or a changed contract) is checked again.

    Raises
    ------
    emflow.run.request.WindowError
        The window has no telemetry file.
    validation.BatchRejected
        At least one day failed the contract (it is in quarantine now).
    """
    import validation

    settings = settings_for(request, settings)
    contract = validation.load_contract()
    results = []
    for folder in window_batches(request, settings):
        log.info("validating %s against contract %s v%s", folder, contract.name, contract.version)
        result = validation.check_batch(
            folder,
            run_id=request.run_key,
            data_root=settings.data_root,
            contract=contract,
            window=validation.window_for_day(folder.name),
        )
        log.info("%s: %s", folder, result.summary)
        results.append((folder, result))
    rejected = [result for _, result in results if not result.success]
    if rejected:
        raise validation.BatchRejected.from_results(
            rejected, rows_checked=sum(int(result.n_rows) for _, result in results)
        )
    return Validated(
        # the files the contract read (a file arriving after the check is not trained on)
        files=[str(facts["file"]) for _, result in results for facts in result.files],
        reports=[str(result.report_path) for _, result in results if result.report_path],
        rows_validated=sum(int(result.n_rows) for _, result in results),
        feature_columns=list(contract.feature_columns),
        contract=contract.fingerprint,
    )
