"""``emflow demo``: the whole retraining workflow on the embedded default, in a few minutes.

What it does, in one process, with Airflow's SQLite database and the embedded MLflow store in a
folder of its own, ``<EMFLOW_HOME>/demo.<UTC time>``, to which the link ``<EMFLOW_HOME>/demo``
then points (what the README's commands use). An MLflow registry records its artifacts' absolute
paths, so a demo folder is never moved or rewritten: every earlier demo stays usable where it is.

1. sets Airflow up (metadata database, the ``gpu`` pool) and generates several days of
   multimodal telemetry, one of them a bad batch (infinite latencies);
2. runs the real ``gmm_retrain`` DAG once per day with ``dag.test`` (logical date = the day):
   the first model is promoted to ``champion``, the bad batch is quarantined and its run fails
   naming the failed expectation, a good day is gated against the champion, and an operator's
   trial with too few components is rejected by the gate;
3. rolls the champion back with the real ``gmm_rollback`` DAG;
4. prints where to look: the MLflow UI command, the data folders, the metrics file, the logs.

Airflow's and the tasks' own output (per-iteration EM progress included) goes to one log file
per run under ``<home>/logs/``; stdout gets one line per run, stderr a progress bar when it is a
terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from emflow.cli import int_in_range
from emflow.config import Settings
from emflow.run.params import SPECS

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
    """Options of ``emflow demo``; out-of-range values stop here, before anything is written."""
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="link to the latest demo (default: $EMFLOW_HOME/demo); each demo writes into a new "
        "folder HOME.<UTC time> beside it and HOME is pointed at it, earlier ones stay as they are",
    )
    parser.add_argument(
        "--rows-per-day",
        type=_rows_per_day,
        default=20_000,
        help="telemetry rows per day (default 20000; at least the data contract's min_rows)",
    )
    parser.add_argument(
        "--n-init",
        type=_spec_int("n_init"),
        default=3,
        help="EM restarts per training run (default 3)",
    )
    parser.add_argument(
        "--seed", type=_spec_int("seed"), default=0, help="seed of data and training (default 0)"
    )


def _spec_int(name: str) -> Callable[[str], int]:
    """An argparse type with the bounds of the ``gmm_retrain`` DAG's Param ``name``.

    A value the DAG would refuse stops here, before anything is written, instead of as an
    Airflow ``ParamValidationError`` in the middle of the demo.
    """
    spec = SPECS[name]
    assert spec.minimum is not None  # the demo's integer Params are bounded below
    return int_in_range(int(spec.minimum), None if spec.maximum is None else int(spec.maximum))


def _rows_per_day(text: str) -> int:
    """A ``--rows-per-day`` value: within the data contract's row bounds, so good days pass."""
    from validation.contract import ContractError, load_contract

    try:
        contract = load_contract()
    except ContractError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return int_in_range(contract.min_rows, contract.max_rows)(text)


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


def _new_demo_folder(link: Path) -> Path:
    """A new, empty folder for one demo beside ``link``: ``<link>.<UTC time>[-n]``.

    ``mkdir`` without ``exist_ok`` claims the name, so two demos started in the same second do
    not share a folder.
    """
    stamp = f"{link.name}.{datetime.now(UTC):%Y%m%dT%H%M%S}"
    for n in itertools.count(1):
        folder = link.with_name(stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        return folder
    raise AssertionError("unreachable")


def _point(link: Path, folder: Path) -> None:
    """Make ``link`` a symbolic link to ``folder`` (its sibling) in one step.

    The new link is made under a temporary name and renamed over the old one, so a demo killed at
    any moment leaves ``link`` at the previous demo or at this one, never missing.
    """
    staged = link.with_name(f".{link.name}.{os.getpid()}.link")
    staged.unlink(missing_ok=True)
    staged.symlink_to(folder.name)  # relative: the pair can be looked at from anywhere
    os.replace(staged, link)


def _prepare_home(link: Path) -> tuple[Path, str]:
    """Make this demo's folder and point ``link`` at it; return the folder and what happened.

    Nothing that exists is moved: an MLflow registry records its artifacts' absolute paths, so
    a demo folder renamed aside would no longer find its models. A folder (not a link) at
    ``link``, e.g. one an earlier emflow ran its demo in, is left as it is and not pointed over.

    Raises
    ------
    NotADirectoryError
        ``link`` is a file.
    """
    if link.exists() and not link.is_dir():
        raise NotADirectoryError(
            f"--home {link} is a file; pass a new path, or the link an earlier demo made"
        )
    if link.is_dir() and not link.is_symlink() and not any(link.iterdir()):
        link.rmdir()  # empty: nothing to keep, and the name becomes the link
    previous = link.resolve() if link.is_symlink() and link.exists() else None
    folder = _new_demo_folder(link)
    if link.exists() and not link.is_symlink():
        return folder, (
            f"{link} is a folder, not a link to a demo (an earlier emflow's demo?): it stays as it "
            f"is, because moving a demo breaks its registry. This demo runs in {folder}; remove "
            f"{link} for the next demo to make it the link to the latest."
        )
    _point(link, folder)
    note = f"this demo runs in {folder} ({link} points at it)"
    if previous:
        note += f"; the previous demo stays usable in {previous}"
    return folder, note


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
    reason = _failure_reason(Path(outcome["log"])) or "no reason logged"
    return f"run {outcome['state']}: failed tasks {failed}: {reason} (log {outcome['log']})"


def _describe_rollback(outcome: dict[str, Any]) -> str:
    """One line about the gmm_rollback run: the move, or why it was refused."""
    done = outcome["xcom"].get("rollback")
    if done:
        return (
            f"rollback ({outcome['state']}): champion v{done['previous']} -> v{done['version']} "
            f"by {done['actor']}: {done['reason']}"
        )
    # refused (e.g. no previous champion: only one model was promoted) or failed: say why here
    reason = _failure_reason(Path(outcome["log"])) or "no reason logged"
    return f"rollback ({outcome['state']}): {reason} (log {outcome['log']})"


# the last line of a logged traceback: "package.module.SomeError: message"
_EXCEPTION_LINE = re.compile(r"^(?:\w+\.)*\w*(?:Error|Exception): (?P<message>.+)$")


def _failure_reason(log_path: Path) -> str | None:
    """The message of the last exception in a run's log, None when there is none.

    A failed task's reason reaches the console only through its log: ``dag.test`` writes the
    traceback there (for the rollback ``AirflowFailException: rollback refused: <why>``) and
    stores no message with the task instance.
    """
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        found = _EXCEPTION_LINE.match(line)
        if found:
            return found["message"]
    return None


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
    # the bar on stderr, and only on a terminal (disable=None): stdout stays the run lines, with
    # no carriage returns in a redirected file; tqdm.write clears the bar before each line
    steps = tqdm(
        total=len(DEMO_DAYS) + 3,
        desc="emflow demo",
        unit="step",
        file=sys.stderr,
        disable=None,
        dynamic_ncols=True,
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
        log_path = log_dir / f"gmm_retrain_{day}.log"
        with _output_to(log_path):
            outcome = runner.run_in_process(
                dags["gmm_retrain"], conf, datetime(day.year, day.month, day.day, tzinfo=UTC)
            )
        outcome.update(day=day.isoformat(), what=step["what"], conf=conf, log=str(log_path))
        results.append(outcome)
        steps.update(1)
        steps.write(f"{day} ({step['what']}): {_describe(outcome)}", file=out)

    steps.set_postfix_str("gmm_rollback")
    reason = "demo: roll back to the previous champion"
    log_path = log_dir / "gmm_rollback.log"
    with _output_to(log_path):
        rollback = runner.run_in_process(dags["gmm_rollback"], {"reason": reason})
    rollback["log"] = str(log_path)
    steps.update(1)
    steps.write(_describe_rollback(rollback), file=out)
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
    # every setting the runs will read, checked before anything is written (SettingsError: exit 2)
    settings = Settings().checked()
    chosen = (args.home or settings.home / "demo").expanduser().absolute()
    link = chosen.parent.resolve() / chosen.name  # resolve() would follow the link itself
    try:
        home, note = _prepare_home(link)
    except OSError as exc:
        print(f"emflow demo: error: {exc}", file=sys.stderr)
        return 2
    print(note)
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
