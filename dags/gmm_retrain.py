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
All logic lives in `emflow.pipeline`; these tasks only pass small JSON dicts between its steps.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import (
    Asset,
    AssetOrTimeSchedule,
    CronDataIntervalTimetable,
    Param,
    dag,
    get_current_context,
    task,
)

TELEMETRY = Asset(name="emflow-telemetry", uri="file:///emflow/telemetry/incoming")
SCHEDULE = os.environ.get("EMFLOW_RETRAIN_SCHEDULE", "@daily")
GPU_QUEUE = "gpu"  # emflow.airflow_env.GPU_QUEUE (not imported: keep parsing light)
GPU_POOL = "gpu"
RETRY_DELAY = timedelta(seconds=float(os.environ.get("EMFLOW_RETRY_DELAY_S", "60")))

PARAMS = {
    "window_start": Param(
        None, type=["null", "string"], format="date", title="Window start (YYYY-MM-DD)",
        description="First day of telemetry to train on; empty: the day of the logical date.",
    ),
    "window_end": Param(
        None, type=["null", "string"], format="date", title="Window end (exclusive)",
        description="Day after the last day of the window; empty: window start + 1 day.",
    ),
    "n_components": Param(4, type="integer", minimum=1, maximum=256,
                          title="Mixture components (K)"),
    "covariance_type": Param("full", type="string", enum=["full", "tied", "diag", "spherical"],
                             title="Covariance type"),
    "n_init": Param(3, type="integer", minimum=1, maximum=64,
                    title="Seeded restarts (best lower bound wins)"),
    "max_iter": Param(100, type="integer", minimum=1, maximum=10_000, title="EM iterations cap"),
    "seed": Param(0, type="integer", minimum=0, maximum=2**32 - 1,
                  title="Random seed (split and restarts)"),
    "backend": Param("auto", type="string", enum=["auto", "numpy", "cupy", "dask", "multigpu"],
                     title="Compute backend",
                     description="auto: the Dask cluster when EMFLOW_DASK_SCHEDULER is set, else "
                                 "CuPy when a GPU is usable, else NumPy. multigpu: every GPU of "
                                 "the worker."),
    "holdout_fraction": Param(0.2, type="number", minimum=0.05, maximum=0.5,
                              title="Holdout fraction"),
    "promotion_margin": Param(
        None, type=["null", "number"], minimum=0, maximum=100,
        title="Promotion margin (nats/sample)",
        description="Largest holdout log-likelihood drop still promoted; empty: "
                    "EMFLOW_PROMOTION_MARGIN (0.05).",
    ),
}


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
    params=PARAMS,
    default_args={
        "owner": "emflow",
        "retries": 2,
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": True,
    },
)
def gmm_retrain():
    """Validate -> split -> train -> evaluate -> gate -> publish -> publish metrics.

    Each step receives the run's state dict (request, then what earlier steps found: paths,
    counts, the decision) and returns it with its own entry added.
    """

    @task
    def validate() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from emflow import pipeline
        from validation import BatchRejected

        context = get_current_context()
        try:
            request = pipeline.request_from_context(context)
        except ValueError as invalid:  # the run's window or parameters: a retry cannot help
            raise AirflowFailException(str(invalid)) from invalid
        try:
            return pipeline.validate_window(request)
        except BatchRejected as rejected:
            context["ti"].xcom_push(key="rejected", value=pipeline.rejection_summary(rejected))
            raise AirflowFailException(str(rejected)) from rejected  # bad data: no retry

    @task
    def split(state: dict) -> dict:
        from emflow import pipeline

        return pipeline.split_window(state)

    @task(queue=GPU_QUEUE, pool=GPU_POOL, retries=3)
    def train(state: dict) -> dict:
        from emflow import pipeline

        return pipeline.train_challenger(state)

    @task
    def evaluate(state: dict) -> dict:
        from emflow import pipeline

        return pipeline.evaluate_challenger(state)

    @task
    def gate(state: dict) -> dict:
        from emflow import pipeline

        return pipeline.gate_challenger(state)

    @task
    def publish(state: dict) -> dict:
        from emflow import pipeline

        return pipeline.publish_challenger(state)

    # retried when the Pushgateway is unreachable (MetricsPushError); a failed run's
    # AirflowFailException below is final
    @task(trigger_rule="all_done", retries=2)
    def publish_metrics() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from emflow import pipeline

        context = get_current_context()
        ti = context["ti"]
        states = {step: ti.xcom_pull(task_ids=step) for step in pipeline.STEPS}
        rejected = ti.xcom_pull(task_ids="validate", key="rejected")
        summary = pipeline.publish_run_metrics(
            pipeline.metrics_request_from_context(context), states, rejected=rejected
        )
        if summary["status"] != "success":
            raise AirflowFailException(
                f"run failed at step {summary['failed_step']!r}; metrics were published "
                f"with status={summary['status']!r}"
            )
        return summary

    publish(gate(evaluate(train(split(validate()))))) >> publish_metrics()


gmm_retrain()
