"""Telemetry validation for emflow: the data contract, batch checks, quarantine and drift.

Public API (Great Expectations is imported only when a batch is validated):

* :func:`load_contract` / :class:`Contract` -- the declarative contract
  (``validation/contracts/telemetry.yaml``);
* :func:`validate_batch` -> :class:`ValidationResult` -- check a file, folder or DataFrame;
* :func:`check_batch` -- validate, then quarantine (moved byte-for-byte, reports beside it) or mark
  validated, idempotently per run id; :class:`BatchRejected` to raise with the result;
* :mod:`validation.drift` -- PSI, Wasserstein and score-distribution drift against a reference;
* :mod:`validation.synthetic` -- realistic multimodal telemetry and deliberately bad batches;
* ``emflow validate`` (:mod:`emflow.cli.validate`) runs them by hand.
"""

from validation.batch import (
    BatchRejected,
    FailedExpectation,
    ValidationResult,
    validate_batch,
)
from validation.contract import Contract, ContractError, load_contract
from validation.quarantine import QuarantineConflict, check_batch
from validation.window import window_for_day, window_from_path

__all__ = [
    "BatchRejected",
    "Contract",
    "ContractError",
    "FailedExpectation",
    "QuarantineConflict",
    "ValidationResult",
    "check_batch",
    "load_contract",
    "validate_batch",
    "window_for_day",
    "window_from_path",
]
