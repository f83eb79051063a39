"""Run emflow's DAGs in this process (``dag.test``) and read back what a run did."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from emflow.airflow.environment import dags_folder


def load_dags(dag_ids: tuple[str, ...] = ("gmm_retrain", "gmm_rollback")) -> dict[str, Any]:
    """Parse the project's DAG folder and return the named DAGs (Airflow must be configured).

    Raises
    ------
    RuntimeError
        A DAG file failed to import (the message carries Airflow's import errors).
    """
    from airflow.dag_processing.dagbag import DagBag

    folder = dags_folder()
    bag = DagBag(dag_folder=str(folder))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors in {folder}: {bag.import_errors}")
    missing = [d for d in dag_ids if d not in bag.dags]
    if missing:
        raise RuntimeError(f"DAGs {missing} not found in {folder} (found {sorted(bag.dags)})")
    return {dag_id: bag.dags[dag_id] for dag_id in dag_ids}


def run_outcome(dag_run: Any) -> dict[str, Any]:
    """What one finished DAG run did: its state, each task's state and pushed XComs.

    Returns
    -------
    dict
        ``dag_id``, ``run_id``, ``state``, ``tasks`` (task id -> state), ``tries`` (task id ->
        attempts made), ``xcom`` (task id -> return value), ``xcom_extra`` (task id -> {key:
        value}) for other keys.
    """
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        instances = dag_run.get_task_instances(session=session)
        tasks = {ti.task_id: str(ti.state) for ti in instances}
        tries = {ti.task_id: int(ti.try_number) for ti in instances}
        rows = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id))
        xcom: dict[str, Any] = {}
        extra: dict[str, dict[str, Any]] = {}
        row: Any
        for row in rows:
            value = XComModel.deserialize_value(row)
            if row.key == "return_value":
                xcom[row.task_id] = value
            else:
                extra.setdefault(row.task_id, {})[row.key] = value
    return {
        "dag_id": dag_run.dag_id,
        "run_id": dag_run.run_id,
        "state": str(dag_run.state),
        "tasks": tasks,
        "tries": tries,
        "xcom": xcom,
        "xcom_extra": extra,
    }


def run_in_process(dag: Any, conf: Mapping[str, Any], logical_date: Any = None) -> dict[str, Any]:
    """Run ``dag`` once in this process (``dag.test``) and return :func:`run_outcome`.

    Parameters
    ----------
    dag : airflow.sdk.DAG
        From :func:`load_dags`.
    conf : mapping
        The run's conf: Params exactly as the trigger form sends them.
    logical_date : datetime, optional
        The run's logical date (for ``gmm_retrain``: the day whose window it trains on);
        ``None`` lets ``dag.test`` use the current time.
    """
    kwargs = {} if logical_date is None else {"logical_date": logical_date}
    # Resolving a run's conf sets the value of the DAG's and tasks' own Param objects; in a
    # worker that process ends with the task, here it would make this run's conf the next
    # run's defaults. Put the values back afterwards.
    params = [dag.params, *(task.params for task in dag.tasks)]
    saved = [(p.get_param(key), p.get_param(key).value) for p in params for key in p]
    try:
        with _interruptible() as interrupted:
            try:
                dag_run = dag.test(run_conf=dict(conf), **kwargs)
            except Exception:
                if interrupted:  # between two tasks: out of Airflow's own code
                    raise RunInterrupted(None) from None
                raise
            outcome = run_outcome(dag_run)
        if interrupted:
            raise RunInterrupted(outcome)
        return outcome
    finally:
        for param, value in saved:
            param.value = value


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped an in-process run: its task failed without retry, the run with it.

    ``outcome`` is :func:`run_outcome` of the stopped run (None when the interrupt came
    between two tasks).
    """

    def __init__(self, outcome: dict[str, Any] | None):
        where = "" if outcome is None else f": run {outcome['run_id']} {outcome['state']}"
        super().__init__(f"interrupted (Ctrl-C){where}")
        self.outcome = outcome


@contextlib.contextmanager
def _interruptible() -> Iterator[list[bool]]:
    """Ctrl-C during ``dag.test``: fail the running task without retry and end the run.

    Airflow's task runner takes a KeyboardInterrupt inside a task for a task failure and
    retries it, so a Ctrl-C ran the rest of the demo. The handler raises Airflow's no-retry
    failure instead (the run's other tasks then do not run) and records the interrupt, which
    the caller raises once ``dag.test`` returns; a second Ctrl-C interrupts at once. Outside the
    main thread (no signal handlers there) nothing changes.
    """
    import signal
    import threading

    interrupted: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def on_interrupt(signum: int, frame: Any) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)
        raise AirflowFailException("interrupted (Ctrl-C): the run stops here")

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)
