"""Retrain the telemetry Gaussian mixture on one window and gate its promotion.

One run takes one telemetry window (`<data root>/incoming/<YYYY-MM-DD>/`, by default the day of
the run's logical date, which on the daily schedule is exactly its data interval) through:

`validate` (Great Expectations contract; a bad batch is quarantined with its report and the run
fails naming the failed expectations) -> `split` (seeded train/holdout) -> `train` (`n_init`
seeded restarts on the `gpu` queue and pool; falls back to NumPy on a machine without a GPU and
says so; per-iteration EM progress in the log) -> `evaluate` (holdout log-likelihood of the
challenger and of the champion) -> `gate` (likelihood margin and component alignment) ->
`publish` (MLflow run, registry version, `challenger`/`champion` aliases) -> `publish_metrics`
(Prometheus; runs even when an earlier step failed, then fails the run with that step's name).

**Triggers**: the schedule (`EMFLOW_RETRAIN_SCHEDULE`, default `@daily`), an update of the
`emflow-telemetry` asset (its event must carry `{"day": "YYYY-MM-DD"}` in its extra: an
asset-triggered run has no logical date, and a run that cannot tell its window fails without
retries, naming the fix), a manual run
with the parameters below, or a backfill (`airflow backfill create --dag-id gmm_retrain
--from-date ... --to-date ...`: one window per logical date).

Failed tasks are retried (`EMFLOW_RETRY_DELAY_S`, default 60 s, growing); a rejected batch is not.
All logic lives in `emflow.run` (one module per step); the tasks pass small explicit values: the
request, the validated files, the split's paths, the trained model's folder, the evaluation (with
the window's drift), the decision and the publication.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.sdk import (
    Asset,
    AssetOrTimeSchedule,
    CronDataIntervalTimetable,
    dag,
    get_current_context,
    task,
)

from emflow.run import steps
from emflow.run.params import airflow_params

TELEMETRY = Asset(name="emflow-telemetry", uri="file:///emflow/telemetry/incoming")
SCHEDULE = os.environ.get("EMFLOW_RETRAIN_SCHEDULE", "@daily")
GPU_QUEUE = "gpu"  # emflow.airflow.environment.GPU_QUEUE (not imported: keep parsing light)
GPU_POOL = "gpu"
RETRY_DELAY = steps.retry_delay()  # a bad EMFLOW_RETRY_DELAY_S fails the run's first task


def _final(step: Any, *args: Any) -> Any:
    """``step(*args)``; its RunFailed (a retry cannot help) as Airflow's no-retry failure."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return step(*args)
    except steps.RunFailed as failed:
        raise AirflowFailException(str(failed)) from failed


@dag(
    dag_id=Path(__file__).stem,
    doc_md=__doc__,
    schedule=AssetOrTimeSchedule(
        timetable=CronDataIntervalTimetable(SCHEDULE, timezone="UTC"), assets=TELEMETRY
    ),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["emflow", "gmm", "retrain"],
    params=airflow_params(),
    default_args={
        "owner": "emflow",
        "retries": 2,
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": True,
    },
)
def gmm_retrain():
    """Validate -> split -> train -> evaluate -> gate -> publish -> publish metrics.

    Each task takes the small values it needs from earlier tasks (the request, paths, the
    decision) and returns its own as JSON.
    """

    @task(multiple_outputs=True)
    def validate() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        context = get_current_context()
        try:
            request = steps.request_from_context(context)
        except ValueError as invalid:  # the run's window or parameters: a retry cannot help
            raise AirflowFailException(str(invalid)) from invalid
        try:
            return steps.validate(request)
        except steps.RunRejected as rejected:
            context["ti"].xcom_push(key="rejected", value=rejected.facts)
            raise AirflowFailException(str(rejected)) from rejected  # bad data: no retry
        except steps.RunFailed as failed:  # e.g. quarantine refused to overwrite: no retry
            raise AirflowFailException(str(failed)) from failed

    @task
    def split(request: dict, validated: dict) -> dict:
        return _final(steps.split, request, validated)

    @task(queue=GPU_QUEUE, pool=GPU_POOL, retries=3)
    def train(request: dict, split: dict) -> dict:
        return _final(steps.train, request, split)

    @task
    def evaluate(request: dict, split: dict, trained: dict) -> dict:
        return _final(steps.evaluate, request, split, trained)

    @task
    def gate(request: dict, trained: dict, evaluated: dict) -> dict:
        return _final(steps.gate, request, trained, evaluated)

    @task
    def publish(request: dict, validated: dict, split: dict, trained: dict, decision: dict) -> dict:
        return _final(steps.publish, request, validated, split, trained, decision)

    # retried when the Pushgateway is unreachable (MetricsPushError); a failed run's
    # AirflowFailException below is final
    @task(trigger_rule="all_done", retries=2)
    def publish_metrics() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        context = get_current_context()
        ti = context["ti"]
        values = {step: ti.xcom_pull(task_ids=step) for step in steps.STEPS}
        rejected = ti.xcom_pull(task_ids="validate", key="rejected")
        summary = steps.publish_metrics(context, values, rejected)
        if summary["status"] != "success":
            raise AirflowFailException(
                f"run failed at step {summary['failed_step']!r}; metrics were published "
                f"with status={summary['status']!r}"
            )
        return summary

    checked = validate()
    request, validated = checked["request"], checked["validation"]
    split_rows = split(request, validated)
    trained = train(request, split_rows)
    evaluated = evaluate(request, split_rows, trained)
    decision = gate(request, trained, evaluated)
    publish(request, validated, split_rows, trained, decision) >> publish_metrics()


gmm_retrain()
