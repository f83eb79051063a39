"""``emflow demo``: the whole retraining workflow on the embedded default, in a few minutes.

What it does, in one process, with Airflow's SQLite database and the embedded MLflow store under
``<EMFLOW_HOME>/demo``:

1. sets Airflow up (metadata database, the ``gpu`` pool) and generates several days of
   multimodal telemetry, one of them a bad batch (infinite latencies);
2. runs the real ``gmm_retrain`` DAG once per day with ``dag.test`` (logical date = the day):
   the first model is promoted to ``champion``, the bad batch is quarantined and its run fails
   naming the failed expectation, a good day is gated against the champion, and an operator's
   trial with too few components is rejected by the gate;
3. rolls the champion back with the real ``gmm_rollback`` DAG;
4. prints where to look: the MLflow UI command, the data folders, the metrics file, the logs.

Airflow's and the tasks' own output (per-iteration EM progress included) goes to one log file
per run under ``<home>/logs/``; the terminal shows a progress bar and one line per run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from emflow.config import Settings

FIRST_DAY = date(2026, 11, 16)
# one gmm_retrain run per day, in order: what the day holds and the run's conf
DEMO_DAYS: list[dict[str, Any]] = [
    {"what": "first good day: no champion yet", "conf": {}},
    {"what": "bad batch (inf latencies)", "conf": {}, "bad": "inf"},
    {"what": "good day, gated against the champion", "conf": {}},
    {"what": "operator trial with n_components=1", "conf": {"n_components": 1}},
    {"what": "regime shift (+1.5 std)", "conf": {}, "shift": 1.5},
]
EXPECTED_STATES = ["success", "failed", "success", "success", "success"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``emflow demo``."""
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="folder for everything the demo writes (default: $EMFLOW_HOME/demo); "
        "an existing one is kept and renamed with a timestamp",
    )
    parser.add_argument(
        "--rows-per-day", type=int, default=20_000, help="telemetry rows per day (default 20000)"
    )
    parser.add_argument("--n-init", type=int, default=3, help="EM restarts per training run")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and training")


@contextlib.contextmanager
def _output_to(log_path: Path) -> Iterator[None]:
    """Send everything written to file descriptors 1 and 2 (Airflow, tasks, EM) to ``log_path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log_path.open("ab") as log_file:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _fresh_home(home: Path) -> Path | None:
    """Make ``home`` empty by renaming an earlier demo folder aside (nothing is deleted)."""
    if home.exists() and any(home.iterdir()):
        kept = home.with_name(f"{home.name}.{datetime.now(UTC):%Y%m%dT%H%M%S}")
        shutil.move(str(home), str(kept))
        home.mkdir(parents=True)
        return kept
    home.mkdir(parents=True, exist_ok=True)
    return None


def _write_days(settings: Settings, rows: int, seed: int) -> list[dict[str, Any]]:
    """Telemetry for the demo days; returns the plan: day, what it holds, the run's conf."""
    from validation.synthetic import make_bad_batch, make_telemetry, write_window

    plan = [dict(step) for step in DEMO_DAYS]
    for i, step in enumerate(plan):
        day = FIRST_DAY + timedelta(days=i)
        start, end = day.isoformat(), (day + timedelta(days=1)).isoformat()
        if step.get("bad"):
            frame = make_bad_batch(step["bad"], rows, start, end, seed=seed + i, n_bad=25)
        else:
            frame = make_telemetry(rows, start, end, seed=seed + i, shift=step.get("shift", 0.0))
        step.update(day=day, path=write_window(frame, settings.data_root, day))
    return plan


def _describe(outcome: dict[str, Any]) -> str:
    """One line about a gmm_retrain run."""
    published = outcome["xcom"].get("publish")
    if published:
        verdict = "PROMOTED" if published["promoted"] else "REJECTED"
        drift = (outcome["xcom"].get("evaluate") or {}).get("drift")
        drift = f"\n    drift vs champion: {drift['summary']}" if drift else ""
        return (
            f"{verdict} v{published['version']} (champion now v"
            f"{published['champion_version']}): {published['reason']}{drift}"
        )
    rejected = outcome["xcom_extra"].get("validate", {}).get("rejected")
    if rejected:
        return (
            f"FAILED at validate, batch quarantined in {rejected['quarantine_dirs'][0]}; "
            f"failed expectations: {', '.join(rejected['failed'])}"
        )
    failed = [t for t, s in outcome["tasks"].items() if s == "failed"]
    return f"run {outcome['state']}: failed tasks {failed} (see the log)"


def run_demo(
    home: Path,
    *,
    rows_per_day: int = 20_000,
    n_init: int = 3,
    seed: int = 0,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Run the demo in ``home`` and return what each run did.

    Returns
    -------
    dict
        ``retrain``: list of per-day outcomes (:func:`emflow.airflow.runner.run_outcome` plus
        ``day``), ``rollback``: the rollback run's outcome, ``settings`` paths.
    """
    from tqdm import tqdm

    from emflow.airflow import environment, runner

    out = out or sys.stdout
    settings = Settings(home=home).ensure_dirs()
    log_dir = home / "logs"
    log_dir.mkdir(exist_ok=True)
    env = environment.airflow_environment(settings, extra={"EMFLOW_RETRY_DELAY_S": "5"})
    steps = tqdm(
        total=len(DEMO_DAYS) + 3, desc="emflow demo", unit="step", file=out, dynamic_ncols=True
    )
    with _output_to(log_dir / "setup.log"):
        environment.setup_airflow(env)
        plan = _write_days(settings, rows_per_day, seed)
        dags = runner.load_dags()
    steps.update(1)
    steps.write(
        f"telemetry: {len(plan)} days x {rows_per_day} rows under "
        f"{settings.data_root / 'incoming'}",
        file=out,
    )

    results = []
    for step in plan:
        day = step["day"]
        conf = {"n_init": n_init, "seed": seed, **step["conf"]}
        steps.set_postfix_str(f"gmm_retrain {day}")
        with _output_to(log_dir / f"gmm_retrain_{day}.log"):
            outcome = runner.run_in_process(
                dags["gmm_retrain"], conf, datetime(day.year, day.month, day.day, tzinfo=UTC)
            )
        outcome.update(day=day.isoformat(), what=step["what"], conf=conf)
        results.append(outcome)
        steps.update(1)
        steps.write(f"{day} ({step['what']}): {_describe(outcome)}", file=out)

    steps.set_postfix_str("gmm_rollback")
    reason = "demo: roll back to the previous champion"
    with _output_to(log_dir / "gmm_rollback.log"):
        rollback = runner.run_in_process(dags["gmm_rollback"], {"reason": reason})
    steps.update(1)
    done = rollback["xcom"].get("rollback") or {}
    steps.write(
        f"rollback ({rollback['state']}): champion v{done.get('previous')} -> "
        f"v{done.get('version')} by {done.get('actor')}: {done.get('reason')}",
        file=out,
    )
    with _output_to(log_dir / "status.log"):
        from emflow.registry.status import status as registry_status

        status = registry_status(settings)
    steps.update(1)
    steps.close()
    return {
        "retrain": results,
        "rollback": rollback,
        "status": status,
        "log_dir": str(log_dir),
        "settings": settings,
    }


def _where_to_look(report: dict[str, Any], out: TextIO) -> None:
    settings: Settings = report["settings"]
    status = report["status"]
    bin_dir = Path(sys.executable).parent  # the project environment's commands, runnable as shown
    lines = [
        "",
        f"Registry {status['model_name']}: aliases {status['aliases']}",
        *(
            f"  v{v['version']:>2} {v['decision'] or '-':8} {','.join(v['aliases']) or '':26} "
            f"{v['data_window']}"
            for v in status["versions"]
        ),
        "",
        "Where to look:",
        f"  MLflow UI:   {bin_dir / 'mlflow'} ui --backend-store-uri {settings.tracking_uri} "
        "--host 127.0.0.1 --port 5000",
        f"  telemetry:   {settings.data_root / 'incoming'}",
        f"  quarantine:  {settings.data_root / 'quarantine'}  (bad batch + validation report)",
        f"  models:      {settings.data_root / 'models'}",
        f"  metrics:     {settings.metrics_textfile}",
        f"  task logs:   {report['log_dir']}  (per-iteration EM progress in gmm_retrain_*.log)",
        f"  Airflow:     AIRFLOW_HOME={settings.home / 'airflow'} (SQLite metadata database)",
        f"  status:      EMFLOW_HOME={settings.home} {bin_dir / 'emflow'} status",
    ]
    print("\n".join(lines), file=out)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``emflow demo``; 0 when every run did what the demo expects."""
    base = Settings()
    home = (args.home or base.home / "demo").resolve()
    kept = _fresh_home(home)
    if kept:
        print(f"kept the previous demo in {kept}")
    started = time.monotonic()
    report = run_demo(home, rows_per_day=args.rows_per_day, n_init=args.n_init, seed=args.seed)
    _where_to_look(report, sys.stdout)
    states = [r["state"] for r in report["retrain"]]
    ok = states == EXPECTED_STATES and report["rollback"]["state"] == "success"
    print(
        f"\ndemo {'finished' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s "
        f"(run states {states}, rollback {report['rollback']['state']})"
    )
    return 0 if ok else 1
