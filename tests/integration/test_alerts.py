"""ops/prometheus/alerts.yml: promtool checks it, its unit tests fire every alert, it reads only
metrics that emflow exports."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from support.ops import (
    PROMETHEUS_BUILTINS,
    PROMETHEUS_DIR,
    REPO,
    promql_metric_names,
    require_binary,
)

from emflow.metrics import METRICS

ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"

# the failure modes the seeds and issue 7 name, each with the alert that covers it
REQUIRED_ALERTS = {
    "retrain failed": "EmflowRetrainFailed",
    "retrain stale": "EmflowRetrainStale",
    "holdout likelihood dropped": "EmflowHoldoutLikelihoodDropped",
    "drift above threshold": "EmflowFeatureDriftHigh",
    "quarantine rate high": "EmflowQuarantineRateHigh",
    "training duration spike": "EmflowTrainingDurationSpike",
}


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def promtool(*args: str, cwd=PROMETHEUS_DIR) -> subprocess.CompletedProcess:
    binary = require_binary("promtool")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_check_rules_passes():
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_promtool_unit_tests_pass():
    done = promtool("test", "rules", str(ALERTS_TEST))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_fires_in_a_unit_test_and_is_quiet_in_another():
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    names = {rule["alert"] for rule in alert_rules()}
    assert set(REQUIRED_ALERTS.values()) <= names
    fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert fired == names, f"alerts no unit test fires: {sorted(names - fired)}"
    # a threshold is only tested when a case just below it stays quiet (drift's quiet case is
    # the cpu_util series at PSI 0.15 inside the firing case)
    assert names - quiet <= {"EmflowFeatureDriftHigh"}, sorted(names - quiet)


def test_unit_tests_catch_a_changed_threshold(tmp_path):
    """The promtool tests are not vacuous: loosen one threshold and they fail."""
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    text = ALERTS.read_text()
    assert "emflow_quarantined_rows / emflow_validated_rows > 0.05" in text
    (tmp_path / ALERTS.name).write_text(
        text.replace(
            "emflow_quarantined_rows / emflow_validated_rows > 0.05",
            "emflow_quarantined_rows / emflow_validated_rows > 0.5",
        )
    )
    done = promtool("test", "rules", str(tmp_path / ALERTS_TEST.name), cwd=tmp_path)
    assert done.returncode != 0
    assert "EmflowQuarantineRateHigh" in done.stdout + done.stderr


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_reads_only_exported_metrics_and_routes(rule):
    names = promql_metric_names(rule["expr"])
    assert names, rule["expr"]
    unknown = names - set(METRICS) - PROMETHEUS_BUILTINS
    assert not unknown, f"{rule['alert']} queries metrics emflow does not export: {unknown}"
    assert rule["labels"]["severity"] in {"page", "ticket"}
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_paging_is_kept_for_a_broken_retrain_cadence():
    paging = {rule["alert"] for rule in alert_rules() if rule["labels"]["severity"] == "page"}
    # and the Pushgateway being down, which blinds both
    assert paging == {"EmflowRetrainFailed", "EmflowRetrainStale", "EmflowPushgatewayDown"}


def test_drift_thresholds_are_the_data_contracts():
    contract = yaml.safe_load((REPO / "validation" / "contracts" / "telemetry.yaml").read_text())
    expressions = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert expressions["EmflowFeatureDriftHigh"] == (
        f"emflow_feature_drift_psi > {contract['drift']['psi']}"
    )
    assert expressions["EmflowScoreDriftHigh"] == (
        f"emflow_drift_score_divergence > {contract['drift']['score_divergence']}"
    )


def test_operator_docs_list_every_alert_with_its_severity():
    docs = (REPO / "ops" / "README.md").read_text()
    rows = {
        line.split("`")[1]: line.split("|")[2].strip()
        for line in docs.splitlines()
        if line.startswith("| `Emflow")
    }
    assert rows == {rule["alert"]: rule["labels"]["severity"] for rule in alert_rules()}
