"""The retrain and rollback DAGs' tasks as functions of JSON values: the XCom edge.

Each function takes the small JSON values earlier tasks returned, rebuilds the records of
:mod:`emflow.run.state`, calls the step module that does the work, and returns its record as JSON.
The DAG files import this module at parse time, so it imports the step modules only when a task
runs. Without Airflow the same chain reads::

    request = build_request(params, run_id="manual__1", logical_date=day)
    first = validate(request.to_json())
    split_ = split(first["request"], first["validation"])
    trained = train(first["request"], split_)
    evaluated = evaluate(first["request"], split_, trained)
    decision = gate(first["request"], trained, evaluated)
    publication = publish(first["request"], first["validation"], split_, trained, decision)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from emflow.run.request import metrics_request_from_context, request_from_context
from emflow.run.state import Evaluated, RunRequest, Split, Trained, Validated
from emflow.run.summary import STEPS

__all__ = [
    "STEPS",
    "RunFailed",
    "RunRejected",
    "check_configuration",
    "evaluate",
    "gate",
    "publish",
    "publish_metrics",
    "request_from_context",
    "retry_delay",
    "rollback",
    "split",
    "train",
    "validate",
]

JSON = dict[str, Any]


class RunFailed(Exception):
    """A step failed in a way a retry cannot fix; the message names the fix."""


class RunRejected(RunFailed):
    """The window's data failed the contract (quarantined); ``facts`` for the metrics step."""

    def __init__(self, message: str, facts: JSON):
        super().__init__(message)
        self.facts = facts


def retry_delay() -> timedelta:
    """The retrain tasks' first retry delay (``EMFLOW_RETRY_DELAY_S``), read at DAG parse time.

    A value that does not parse gives the default here, so the DAG stays listed; the run's
    first task then fails without retry naming the variable (:func:`check_configuration`).
    """
    from emflow.config import Settings, SettingsError

    try:
        return timedelta(seconds=Settings().retry_delay_s)
    except SettingsError:
        return timedelta(seconds=float(Settings.retry_delay_s.default))


def check_configuration() -> None:
    """Every ``EMFLOW_*`` setting and the data contract, before a run does any work.

    Raises
    ------
    RunFailed
        Naming the variable or contract file and the fix: a retry cannot help (the settings
        were found only at the gate, three tasks and several retries later).
    """
    import validation
    from emflow.config import Settings, SettingsError

    try:
        Settings().checked()
        validation.load_contract()
    except (SettingsError, validation.ContractError) as error:
        raise RunFailed(f"configuration: {error}") from error


def validate(request: Mapping[str, Any] | RunRequest) -> JSON:
    """Check the configuration, then validate the window; ``{"request": ..., "validation": ...}``.

    Raises
    ------
    RunRejected
        A batch failed the contract; its message names the failed expectations.
    RunFailed
        A setting or the contract does not parse (:func:`check_configuration`), or quarantine
        refused to overwrite other bytes recorded for this run (nothing was moved).
    """
    import validation
    from emflow.run.validate import rejection_summary, validate_window
    from validation.quarantine import QuarantineIntegrityError

    request = RunRequest.from_json(request)
    check_configuration()
    try:
        validated = validate_window(request)
    except validation.BatchRejected as rejected:
        raise RunRejected(str(rejected), rejection_summary(rejected)) from rejected
    except (validation.QuarantineConflict, QuarantineIntegrityError) as conflict:
        raise RunFailed(f"quarantine refused: {conflict}") from conflict
    return {"request": request.to_json(), "validation": validated.to_json()}


def split(request: Mapping[str, Any], validated: Mapping[str, Any]) -> JSON:
    """:func:`emflow.run.split.split_window`."""
    from emflow.run.split import split_window

    return split_window(RunRequest.from_json(request), Validated.from_json(validated)).to_json()


def train(request: Mapping[str, Any], split_: Mapping[str, Any]) -> JSON:
    """:func:`emflow.run.train.train_challenger`.

    Raises
    ------
    RunFailed
        A setting the fit needs does not work (e.g. ``EMFLOW_DASK_SCHEDULER`` is no address).
    """
    from emflow.config import SettingsError
    from emflow.run.train import train_challenger

    try:
        return train_challenger(RunRequest.from_json(request), Split.from_json(split_)).to_json()
    except SettingsError as error:
        raise RunFailed(f"configuration: {error}") from error


def evaluate(
    request: Mapping[str, Any], split_: Mapping[str, Any], trained: Mapping[str, Any]
) -> JSON:
    """:func:`emflow.run.evaluate.evaluate_challenger`: ``{"evaluation": ..., "drift": ...}``."""
    from emflow.run.evaluate import evaluate_challenger

    return evaluate_challenger(
        RunRequest.from_json(request), Split.from_json(split_), Trained.from_json(trained)
    ).to_json()


def gate(
    request: Mapping[str, Any], trained: Mapping[str, Any], evaluated: Mapping[str, Any]
) -> JSON:
    """:func:`emflow.run.gate.gate_challenger`: the decision."""
    from emflow.run.gate import gate_challenger

    return gate_challenger(
        RunRequest.from_json(request), Trained.from_json(trained), Evaluated.from_json(evaluated)
    ).to_json()


def publish(
    request: Mapping[str, Any],
    validated: Mapping[str, Any],
    split_: Mapping[str, Any],
    trained: Mapping[str, Any],
    decision: Mapping[str, Any],
) -> JSON:
    """:func:`emflow.run.publish.publish_challenger`: the publication."""
    from emflow.model.gate import Decision
    from emflow.run.publish import publish_challenger

    return publish_challenger(
        RunRequest.from_json(request),
        Validated.from_json(validated),
        Split.from_json(split_),
        Trained.from_json(trained),
        Decision.from_json(decision),
    ).to_json()


def outputs_from_json(values: Mapping[str, Any]) -> Any:
    """:class:`emflow.run.summary.StepOutputs` from each task's JSON (None: it failed)."""
    from emflow.model.gate import Decision
    from emflow.registry.publish import PublishResult
    from emflow.run.summary import StepOutputs

    def record(step: str, kind: Any) -> Any:
        value = values.get(step)
        return kind.from_json(value) if value else None

    first = values.get("validate") or {}
    return StepOutputs(
        validate=Validated.from_json(first["validation"]) if first.get("validation") else None,
        split=record("split", Split),
        train=record("train", Trained),
        evaluate=record("evaluate", Evaluated),
        gate=record("gate", Decision),
        publish=record("publish", PublishResult),
    )


def publish_metrics(
    context: Mapping[str, Any], values: Mapping[str, Any], rejected: JSON | None
) -> JSON:
    """Publish the run's metrics from each task's JSON return value (None: it failed)."""
    from emflow.run.summary import publish_metrics as publish_run_metrics

    return publish_run_metrics(
        metrics_request_from_context(context), outputs_from_json(values), rejected=rejected
    )


def rollback(
    version: int | str | None,
    reason: str,
    actor: str,
    force: bool = False,
    request_id: str | None = None,
) -> JSON:
    """:func:`emflow.run.rollback.rollback_champion`; ``request_id`` makes retries idempotent."""
    from emflow.run.rollback import rollback_champion

    return rollback_champion(version, reason, actor, force=force, request_id=request_id)
