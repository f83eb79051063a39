"""Point the `champion` alias back at a prior registered version.

Trigger it by hand with a `reason` (required) and optionally a `version`; without a version the
champion goes back to the previous champion (the `previous-champion` alias). The move is recorded
on the version's tags (who, when, why, from which version); a version that does not exist is
refused and the champion stays where it is, and so is a version the gate rejected unless `force`
is set. Same as `emflow rollback --version N --reason ... [--force]`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import Param, dag, get_current_context, task

from emflow.config import ROLLBACK_REASON_LENGTH
from emflow.run import steps


@dag(
    dag_id=Path(__file__).stem,
    doc_md=__doc__,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["emflow", "gmm", "rollback"],
    params={
        "version": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Registered version",
            description="Model version to serve as champion; empty: the previous champion.",
        ),
        "reason": Param(
            type="string",
            minLength=ROLLBACK_REASON_LENGTH[0],
            maxLength=ROLLBACK_REASON_LENGTH[1],
            title="Reason",
            description="Why the champion is moved (recorded on the version).",
        ),
        "force": Param(
            False,
            type="boolean",
            title="Serve a rejected version",
            description="The gate rejected the version: serve it anyway (recorded).",
        ),
    },
    default_args={"owner": "emflow", "retries": 1, "retry_delay": timedelta(seconds=30)},
)
def gmm_rollback():
    """One task: roll the champion back."""

    @task
    def rollback() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        context = get_current_context()
        params, dag_run = context["params"], context["dag_run"]
        actor = f"airflow:{getattr(dag_run, 'triggering_user_name', None) or 'unknown'}"
        try:
            return steps.rollback(
                params["version"],
                params["reason"],
                actor,
                bool(params.get("force")),
                request_id=dag_run.run_id,  # a retried task finds its finished rollback
            )
        except (LookupError, ValueError) as refused:  # no such version: retrying cannot help
            raise AirflowFailException(f"rollback refused: {refused}") from refused

    rollback()


gmm_rollback()
