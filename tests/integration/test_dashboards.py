"""Grafana dashboards: well-formed, provisioned, reading only exported metrics, and every query
answered by a real Prometheus that scrapes a real Pushgateway the pipeline pushed to."""

from __future__ import annotations

import importlib.util
import json
import time
import urllib.parse

import pytest
import yaml
from support.ops import (
    DASHBOARD_DIR,
    OPS,
    PROMETHEUS_BUILTINS,
    PROMETHEUS_DIR,
    http_get,
    prometheus,
    promql_metric_names,
    pushgateway,
)

from emflow.config import Settings
from emflow.metrics import METRICS, publish_rollback_metrics, publish_run_metrics

DASHBOARDS = ("executive", "oncall", "debug")


def load(name: str) -> dict:
    return json.loads((DASHBOARD_DIR / f"{name}.json").read_text())


def queries(board: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every panel target and template variable of a dashboard."""
    found = [
        (panel["title"], query["expr"])
        for panel in board["panels"]
        for query in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        found.append((f"${variable['name']}", variable["definition"]))
    return found


def test_promql_metric_names_parser():
    assert promql_metric_names(
        'time() - max by (model) (emflow_retrain_last_success_timestamp_seconds{model=~"$model"})'
    ) == {"emflow_retrain_last_success_timestamp_seconds"}
    assert promql_metric_names(
        'a_total{x="b_c", y=~"d|e"} / ignoring(role) f_g[5m] offset 1d and on (k) h > 0.5e3'
    ) == {"a_total", "f_g", "h"}
    assert promql_metric_names(
        "sum(changes(m1[7d])) / sum without (instance) (rate(m2[$__rate_interval]))"
    ) == {"m1", "m2"}
    assert promql_metric_names("label_values(emflow_em_restarts, model)") == {"emflow_em_restarts"}
    assert promql_metric_names("quantile_over_time(0.5, x_seconds[7d]) > bool 3") == {"x_seconds"}


def test_committed_json_is_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location(
        "make_dashboards", OPS / "grafana" / "make_dashboards.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.DASHBOARDS) == set(DASHBOARDS)
    for name, board in module.DASHBOARDS.items():
        committed = (DASHBOARD_DIR / f"{name}.json").read_text()
        assert committed == module.render(board), (
            f"{name}.json differs from ops/grafana/make_dashboards.py: run it and commit"
        )


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_is_well_formed_and_uses_the_provisioned_datasource(name):
    datasource = yaml.safe_load(
        (OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    board = load(name)
    assert board["uid"] == f"emflow-{name}" and board["title"].startswith("emflow / ")
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    occupied: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] != "text":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
            assert all(q["datasource"]["uid"] == datasource["uid"] for q in panel["targets"])
            assert len({q["refId"] for q in panel["targets"]}) == len(panel["targets"])


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_dashboard_query_reads_exported_metrics(name):
    for title, expr in queries(load(name)):
        names = promql_metric_names(expr)
        assert names, (title, expr)
        unknown = names - set(METRICS) - PROMETHEUS_BUILTINS
        assert not unknown, f"{name} / {title!r} queries metrics nobody exports: {unknown}"


def test_every_exported_metric_is_on_a_dashboard():
    shown = set()
    for name in DASHBOARDS:
        for _, expr in queries(load(name)):
            shown |= promql_metric_names(expr)
    assert set(METRICS) - shown == set()


def test_seed_panels_are_present():
    titles = {
        name: " | ".join(p["title"].lower() for p in load(name)["panels"]) for name in DASHBOARDS
    }
    for words in ("since last successful retrain", "success rate", "holdout", "drift", "cost"):
        assert words in titles["executive"], words
    for words in ("latest run", "firing", "quarantined", "challenger vs champion", "duration"):
        assert words in titles["oncall"], words
    for words in ("per restart", "feature drift", "component weights", "alignment", "iterations"):
        assert words in titles["debug"], words


# ---------------------------------------------------------------------------------------------
# real Prometheus + real Pushgateway (Debian packages) on 127.0.0.1


def query_prometheus(url: str, expr: str) -> dict:
    answer = json.loads(http_get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]


def wait_for(url: str, expr: str, timeout: float = 30.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = query_prometheus(url, expr)["result"]
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never answered {expr!r} with data")


@pytest.mark.integration
@pytest.mark.slow
def test_real_prometheus_answers_every_panel_after_a_pushed_run(tmp_path):
    with pushgateway(tmp_path) as gateway:
        publish_run_metrics(
            {
                "model_name": "telemetry-gmm",
                "run_key": "scheduled__2026-11-23",
                "status": "success",
                "train_seconds": 12.5,
                "n_iter": 37,
                "n_restarts": 3,
                "restart_lower_bounds": [-5.2, -5.1, -5.15],
                "winner_lower_bound": -5.1,
                "holdout_loglik_challenger": -5.12,
                "holdout_loglik_champion": -5.2,
                "decision": "promoted",
                "alignment_cost": 0.04,
                "drift": {"latency_ms": 0.05, "cpu_util": 0.3, "score_divergence": 0.02},
                "rows_validated": 20_000,
                "rows_quarantined": 0,
                "gpu_memory_peak_bytes": 123_456_789,
                "device_peak_bytes": 100_000_000,
                "backend": "cupy",
                "component_weights": [0.4, 0.35, 0.25],
                "n_components": 3,
                "alarm_rate": 0.012,
                "false_alarm_rate": 0.01,
                "alarm_rate_band": [0.0, 0.03],
            },
            Settings(home=tmp_path, pushgateway_url=gateway),
        )
        # a rollback later: its own group beside the run's (the on-call rollback panels)
        where = publish_rollback_metrics(
            "telemetry-gmm", "1", Settings(home=tmp_path, pushgateway_url=gateway)
        )
        assert where.endswith("/metrics/job/emflow_rollback/model/telemetry-gmm")
        host_port = gateway.removeprefix("http://")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
            "scrape_configs": [
                {
                    "job_name": "pushgateway",
                    "honor_labels": True,
                    "static_configs": [{"targets": [host_port]}],
                }
            ],
        }
        with prometheus(tmp_path, config) as prom:
            wait_for(prom, "emflow_retrain_last_run_timestamp_seconds")
            # the rules file loads in a real server, and the drift alert (PSI 0.3) fires
            firing = wait_for(
                prom, 'ALERTS{alertname="EmflowFeatureDriftHigh",alertstate="firing"}'
            )
            assert firing[0]["metric"]["feature"] == "cpu_util"
            groups = json.loads(http_get(f"{prom}/api/v1/rules"))["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            rule_file = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
            assert len(rules) == sum(len(g["rules"]) for g in rule_file["groups"])
            assert all(rule["health"] == "ok" for rule in rules)

            empty = []
            for name in DASHBOARDS:
                for title, expr in queries(load(name)):
                    promql = expr.replace("$model", "telemetry-gmm")
                    if promql.startswith("label_values("):  # Grafana's, not PromQL
                        metric = promql_metric_names(promql).pop()
                        promql = f"count by (model) ({metric})"
                    if not query_prometheus(prom, promql)["result"]:
                        empty.append(f"{name} / {title}: {promql}")
            assert not empty, "panels with no data after a pushed run:\n" + "\n".join(empty)
