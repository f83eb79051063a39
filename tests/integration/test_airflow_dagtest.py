"""gmm_retrain and gmm_rollback run for real with ``dag.test()``: Airflow's SQLite metadata DB,
the real DAG files, GX validation, the embedded MLflow SQLite registry, the metrics textfile.

Airflow fixes its configuration at first import, so the runs happen in one fresh interpreter
(``DRIVER``) with its own ``AIRFLOW_HOME``/``EMFLOW_HOME``; this process then checks what they
left in the registry, on disk and in the output.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from support.airflow import private_tmp

from emflow.airflow.environment import airflow_environment
from emflow.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DRIVER = textwrap.dedent(
    """
    import json, sys
    from datetime import UTC, datetime
    from emflow.airflow import environment, runner
    from emflow.config import Settings
    from validation.synthetic import make_bad_batch, make_telemetry, write_window

    settings = Settings()
    environment.setup_airflow(environment.airflow_environment(settings))
    dags = runner.load_dags()
    conf = {"n_init": 2, "max_iter": 60, "seed": 1}
    outcomes = {}
    for name, day, frame in [
        ("good1", "2026-11-16", make_telemetry(3000, "2026-11-16", "2026-11-17", seed=1)),
        ("bad", "2026-11-17", make_bad_batch("inf", 3000, "2026-11-17", "2026-11-18", seed=2)),
        ("good2", "2026-11-18", make_telemetry(3000, "2026-11-18", "2026-11-19", seed=3)),
    ]:
        path = write_window(frame, settings.data_root, day)
        if name == "bad":
            print("BADSHA" + json.dumps([str(path), __import__("hashlib").sha256(
                path.read_bytes()).hexdigest()]), flush=True)
        logical = datetime.fromisoformat(day).replace(tzinfo=UTC)
        outcomes[name] = runner.run_in_process(dags["gmm_retrain"], conf, logical)
        # the textfile as this run left it (later runs rewrite it)
        textfile = settings.metrics_textfile
        outcomes[name]["metrics_text"] = textfile.read_text() if textfile.exists() else ""
        print(f"DONE {name} {outcomes[name]['state']}", flush=True)
    # issue 18.4: a cheap challenger, one partial_fit step of the champion on a new day
    write_window(make_telemetry(3000, "2026-11-19", "2026-11-20", seed=4), settings.data_root,
                 "2026-11-19")
    outcomes["update"] = runner.run_in_process(
        dags["gmm_retrain"], {**conf, "mode": "update"}, datetime(2026, 11, 19, tzinfo=UTC))
    outcomes["update"]["metrics_text"] = settings.metrics_textfile.read_text()
    print(f"DONE update {outcomes['update']['state']}", flush=True)
    # issue 17: n_components="auto", K chosen by model selection inside the train task
    write_window(make_telemetry(3000, "2026-11-20", "2026-11-21", seed=5), settings.data_root,
                 "2026-11-20")
    outcomes["auto"] = runner.run_in_process(
        dags["gmm_retrain"], {**conf, "n_components": "auto", "k_min": 2, "k_max": 5},
        datetime(2026, 11, 20, tzinfo=UTC))
    outcomes["auto"]["metrics_text"] = settings.metrics_textfile.read_text()
    print(f"DONE auto {outcomes['auto']['state']}", flush=True)
    champion = outcomes["good2"]["xcom"]["publish"]["champion_version"]
    target = 1 if str(champion) == "2" else 2
    outcomes["rollback_missing"] = runner.run_in_process(
        dags["gmm_rollback"], {"version": 99, "reason": "test: no such version"})
    # v2 may have been rejected by the gate: serving it takes force
    outcomes["rollback"] = runner.run_in_process(
        dags["gmm_rollback"],
        {"version": target, "reason": "test: roll back", "force": str(champion) != "2"})
    outcomes["params_after"] = dags["gmm_retrain"].task_dict["validate"].params.dump()
    # QA probe: a setting that does not parse failed only at the gate, after retries
    import os
    os.environ["EMFLOW_PROMOTION_MARGIN"] = "abc"
    outcomes["bad_setting"] = runner.run_in_process(
        dags["gmm_retrain"], conf, datetime(2026, 11, 22, tzinfo=UTC))
    del os.environ["EMFLOW_PROMOTION_MARGIN"]
    # QA probe: Ctrl-C inside a task was taken for a failure, retried, and the run went on
    import signal, time
    from emflow.run import steps
    write_window(make_telemetry(3000, "2026-11-21", "2026-11-22", seed=6), settings.data_root,
                 "2026-11-21")
    real_train = steps.train
    def interrupted_train(*args):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)  # the handler raises here
        return real_train(*args)
    steps.train = interrupted_train
    try:
        runner.run_in_process(dags["gmm_retrain"], conf, datetime(2026, 11, 21, tzinfo=UTC))
        outcomes["interrupted"] = "not interrupted"
    except runner.RunInterrupted as stop:
        outcomes["interrupted"] = {**stop.outcome, "message": str(stop)}
    steps.train = real_train
    print("OUTCOMES" + json.dumps(outcomes, default=str), flush=True)
    """
)


@pytest.fixture(scope="module")
def runs():
    home = private_tmp("emflow-dagtest-")
    settings = Settings(home=home)
    env = {
        **os.environ,
        **airflow_environment(settings),
        "EMFLOW_RETRY_DELAY_S": "1",
        "EMFLOW_PUSHGATEWAY": "",
    }
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER], env=env, capture_output=True, text=True, timeout=900
    )
    output = proc.stdout + proc.stderr
    (home / "driver.log").write_text(output)
    assert proc.returncode == 0, output[-5000:]
    found = {
        prefix: json.loads(line[len(prefix) :])
        for line in proc.stdout.splitlines()
        for prefix in ("OUTCOMES", "BADSHA")
        if line.startswith(prefix)
    }
    outcomes = found["OUTCOMES"]
    bad_path, bad_sha = found["BADSHA"]
    return {
        "settings": settings,
        "outcomes": outcomes,
        "output": output,
        "bad_path": bad_path,
        "bad_sha": bad_sha,
    }


def _client(settings):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def test_first_good_run_registers_the_champion(runs):
    first = runs["outcomes"]["good1"]
    assert first["state"] == "success"
    assert set(first["tasks"].values()) == {"success"}
    publication = first["xcom"]["publish"]
    assert publication["promoted"] is True and publication["version"] == "1"
    version = _client(runs["settings"]).get_model_version_by_alias(
        runs["settings"].model_name, "champion"
    )
    # the registry (not just the XCom) says it; rollback has moved it since, see below
    assert version.tags["emflow.run_key"] == first["xcom"]["validate"]["request"]["run_key"]
    metrics = first["xcom"]["publish_metrics"]
    assert metrics["status"] == "success" and metrics["decision"] == "promoted"
    assert metrics["backend"] == "numpy" and metrics["n_restarts"] == 2


def test_bad_batch_fails_naming_the_expectation_and_is_quarantined(runs):
    bad = runs["outcomes"]["bad"]
    assert bad["state"] == "failed"
    assert bad["tasks"]["validate"] == "failed"
    assert bad["tasks"]["train"] == "upstream_failed"
    assert bad["tasks"]["publish_metrics"] == "failed"  # published, then failed the run
    rejected = bad["xcom_extra"]["validate"]["rejected"]
    assert "expect_column_values_to_be_finite" in rejected["failed"]
    assert "expect_column_values_to_be_finite" in rejected["message"]
    assert "AirflowFailException" in runs["output"]
    # moved byte for byte: gone from incoming/, identical bytes in quarantine/<run key>/
    from pathlib import Path

    assert not Path(runs["bad_path"]).exists()
    quarantine = Path(rejected["quarantine_dirs"][0])
    assert quarantine.is_relative_to(runs["settings"].data_root / "quarantine")
    assert "manual__" in quarantine.relative_to(runs["settings"].data_root).parts[1]  # run key
    moved = list(quarantine.rglob("*.parquet"))
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in moved] == [runs["bad_sha"]]
    reports = [p for p in quarantine.rglob("*.json") if "validation" in p.name]
    assert reports and "expect_column_values_to_be_finite" in reports[0].read_text()
    # the metrics textfile recorded the failed run: status, failed step, quarantined rows
    samples = _samples(bad["metrics_text"])
    model = runs["settings"].model_name
    assert samples["emflow_retrain_last_run_success"] == [({"model": model}, 0.0)]
    [(info, value)] = samples["emflow_retrain_last_run_info"]
    assert value == 1.0 and info["status"] == "failed" and info["failed_step"] == "validate"
    run_key = quarantine.relative_to(runs["settings"].data_root).parts[1]
    assert info["run_key"] == run_key
    [(_, quarantined)] = samples["emflow_quarantined_rows"]
    [(_, validated)] = samples["emflow_validated_rows"]
    assert 0 < quarantined <= validated == 3000


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of a Prometheus text exposition by metric name (prometheus_client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def test_second_good_run_is_gated_against_the_champion(runs):
    second = runs["outcomes"]["good2"]
    assert second["state"] == "success"
    decision = second["xcom"]["gate"]
    assert decision["champion_version"] == "1"  # compared with the first model
    assert decision["alignment_mean_cost"] is not None
    assert decision["challenger_mean_loglik"] is not None
    assert decision["champion_mean_loglik"] is not None
    publication = second["xcom"]["publish"]
    assert publication["version"] == "2"
    assert publication["decision"] == ("promote" if decision["promote"] else "reject")
    assert publication["reason"] == decision["reason"]
    # drift of the new window against the champion's stored reference reached the metrics
    drift = second["xcom"]["evaluate"]["drift"]
    assert set(drift["psi"]) == set(first_features(runs)) and drift["score_divergence"] >= 0
    metrics = second["xcom"]["publish_metrics"]
    assert set(metrics["drift"]) == set(drift["psi"]) | {"score_divergence"}
    versions = _client(runs["settings"]).search_model_versions(
        f"name='{runs['settings'].model_name}'"
    )
    # none for the bad batch; 3 is the update run's, 4 the "auto" run's (below)
    assert sorted(str(v.version) for v in versions) == ["1", "2", "3", "4"]


def test_every_challenger_gets_a_threshold_checked_on_fresh_holdout_rows(runs):
    import gmm_core

    for name in ("good1", "good2", "update"):
        outcome = runs["outcomes"][name]
        evaluation = outcome["xcom"]["evaluate"]["evaluation"]
        decision = outcome["xcom"]["gate"]
        low, high = decision["alarm_rate_band"]
        assert decision["false_alarm_rate"] == 0.01  # the parameter's default
        assert low <= decision["alarm_rate"] == evaluation["alarm_rate"] <= high, name
        assert evaluation["n_alarm_check"] == 300  # half of the 600 holdout rows
        # the folder that was registered carries the threshold the pyfunc serves
        published = gmm_core.load_model(decision["model_dir"])
        assert published.threshold_ == evaluation["anomaly_threshold"]
        assert published.anomaly_calibration_.n_calibration == 300
        [(labels, rate)] = _samples(outcome["metrics_text"])["emflow_anomaly_alarm_rate"]
        assert rate == decision["alarm_rate"]
        bounds = {
            labels["bound"]: value
            for labels, value in _samples(outcome["metrics_text"])[
                "emflow_anomaly_alarm_rate_bound"
            ]
        }
        assert bounds == {"target": 0.01, "low": low, "high": high}
        run = _client(runs["settings"]).get_run(outcome["xcom"]["publish"]["run_id"])
        assert run.data.metrics["anomaly_alarm_rate"] == decision["alarm_rate"]
        assert run.data.params["false_alarm_rate"] == "0.01"


def test_update_mode_is_one_partial_fit_of_the_champion_gated_like_any_challenger(runs):
    import pandas as pd

    import gmm_core

    outcomes = runs["outcomes"]
    update = outcomes["update"]
    assert update["state"] == "success"
    assert set(update["tasks"].values()) == {"success"}
    trained = update["xcom"]["train"]
    assert trained["mode"] == "update" and trained["n_iter"] == 1
    # the champion in service when the update ran, and the folder it was published from
    champion = str(outcomes["good2"]["xcom"]["publish"]["champion_version"])
    source = {"1": "good1", "2": "good2"}[champion]
    champion_model = gmm_core.load_model(outcomes[source]["xcom"]["gate"]["model_dir"])
    updated = gmm_core.load_model(trained["model_dir"])
    assert updated.metadata_["mode"] == "update"
    assert updated.metadata_["updated_from"] == champion
    assert updated.n_steps_ == champion_model.n_steps_ + 1 == 1
    # exactly one stepwise-EM step of that champion on the new day's train rows
    new_day = pd.read_parquet(update["xcom"]["split"]["train_path"]).to_numpy()
    champion_model.partial_fit(new_day)
    np.testing.assert_allclose(updated.means_, champion_model.means_, rtol=1e-12)
    np.testing.assert_allclose(updated.weights_, champion_model.weights_, rtol=1e-12)
    # gated against that champion like any challenger, and registered whatever the verdict
    decision = update["xcom"]["gate"]
    assert decision["champion_version"] == champion
    assert decision["alignment_mean_cost"] is not None
    publication = update["xcom"]["publish"]
    assert publication["version"] == "3"
    assert publication["decision"] == ("promote" if decision["promote"] else "reject")
    metrics = update["xcom"]["publish_metrics"]
    assert metrics["status"] == "success" and metrics["n_iter"] == 1


def test_auto_n_components_selects_k_in_the_train_task_and_reports_it(runs):
    import gmm_core

    auto = runs["outcomes"]["auto"]
    assert auto["state"] == "success", auto
    trained = auto["xcom"]["train"]
    k = trained["n_components"]
    assert 2 <= k <= 5
    rows = json.loads(Path(trained["selection_json"]).read_text())["rows"]
    assert sorted(int(r["n_components"]) for r in rows) == [2, 3, 4, 5]
    chosen = [r for r in rows if r.get("chosen")]
    assert [int(r["n_components"]) for r in chosen] == [k]
    # the model the gate saw and the K gauge agree with the table's choice
    assert gmm_core.load_model(auto["xcom"]["gate"]["model_dir"]).n_components == k
    assert auto["xcom"]["gate"]["n_components"] == k
    samples = _samples(auto["metrics_text"])
    assert [v for _, v in samples["emflow_model_components"]] == [float(k)]


def test_runs_in_one_process_do_not_leak_conf_into_the_dag(runs):
    from emflow.run.params import DEFAULT_PARAMS

    assert runs["outcomes"]["params_after"] == DEFAULT_PARAMS  # runs used n_init=2, seed=1


def first_features(runs):
    return runs["outcomes"]["good1"]["xcom"]["validate"]["validation"]["feature_columns"]


def test_rollback_moves_the_alias_and_refuses_unknown_versions(runs):
    outcomes = runs["outcomes"]
    missing = outcomes["rollback_missing"]
    assert missing["state"] == "failed"
    assert "99" in runs["output"] and "does not exist" in runs["output"]
    rollback = outcomes["rollback"]
    assert rollback["state"] == "success"
    record = rollback["xcom"]["rollback"]
    assert record["changed"] is True and record["reason"] == "test: roll back"
    assert record["actor"].startswith("airflow:")
    champion = _client(runs["settings"]).get_model_version_by_alias(
        runs["settings"].model_name, "champion"
    )
    assert str(champion.version) == str(record["version"]) != str(record["previous"])
    assert champion.tags["emflow.rollback_reason"] == "test: roll back"


def test_a_setting_that_does_not_parse_fails_the_first_task_without_retry(runs):
    """QA probe: EMFLOW_PROMOTION_MARGIN=abc ran validate..evaluate, then failed the gate 3
    times; now the run's first task names the variable and nothing else runs."""
    bad = runs["outcomes"]["bad_setting"]
    assert bad["state"] == "failed"
    assert bad["tasks"]["validate"] == "failed" and bad["tries"]["validate"] == 1
    assert bad["tasks"]["train"] == "upstream_failed"
    assert "EMFLOW_PROMOTION_MARGIN='abc' is not a number" in runs["output"]


def test_ctrl_c_in_a_task_stops_the_run_without_retry(runs):
    """QA probe: a Ctrl-C inside dag.test was a task failure, retried, and the demo went on."""
    stopped = runs["outcomes"]["interrupted"]
    assert stopped != "not interrupted"
    assert stopped["state"] == "failed" and stopped["message"].startswith("interrupted (Ctrl-C)")
    assert stopped["tasks"]["train"] == "failed" and stopped["tries"]["train"] == 1
    assert stopped["tasks"]["publish"] == "upstream_failed"
