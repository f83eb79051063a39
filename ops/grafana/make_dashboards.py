"""Write the three emflow Grafana dashboards (executive, on-call, debug) as JSON.

The JSON files in ``ops/grafana/dashboards/`` are what Grafana provisions; this script is their
source, so panels stay consistent (one datasource, one ``$model`` variable, one layout rule).
Edit here, then run ``python ops/grafana/make_dashboards.py``;
``tests/integration/test_dashboards.py`` fails
when the committed JSON and this script disagree. Every PromQL query reads only metrics listed in
``emflow.metrics.METRICS`` (or Prometheus' own ``ALERTS``/``push_time_seconds``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # provisioning/datasources/prometheus.yml
M = '{model=~"$model"}'  # the dashboard's model selector
STALE_AFTER_SECONDS = 36 * 3600  # as the EmflowRetrainStale alert


def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> dict:
    """One Prometheus query; instant for stat/table panels."""
    query = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ""}
    if instant or table:
        query["instant"] = True
        query["range"] = False
    if table:
        query["format"] = "table"
    return query


def thresholds(*steps: tuple[float | None, str]) -> dict:
    """Grafana threshold steps from ``(value, colour)`` pairs (first value ``None``)."""
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


def panel(
    kind: str,
    title: str,
    targets: list[dict],
    *,
    width: int = 8,
    height: int = 8,
    unit: str = "short",
    description: str = "",
    steps=None,
    mappings=None,
    options: dict | None = None,
) -> dict:
    """A Grafana panel reading the emflow datasource (placed later by :func:`layout`)."""
    defaults: dict = {"unit": unit}
    if steps:
        defaults["thresholds"] = thresholds(*steps)
    if mappings:
        defaults["mappings"] = mappings
    for index, query in enumerate(targets):
        query["refId"] = chr(ord("A") + index)
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"w": width, "h": height},
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options or {},
    }


def text_panel(title: str, markdown: str, *, width: int = 24, height: int = 4) -> dict:
    """A markdown panel."""
    return {
        "type": "text",
        "title": title,
        "gridPos": {"w": width, "h": height},
        "options": {"mode": "markdown", "content": markdown},
    }


def stat(title, expr, *, unit="short", legend="", **kwargs):
    """A single-value panel of an instant query."""
    return panel(
        "stat",
        title,
        [target(expr, legend, instant=True)],
        unit=unit,
        width=6,
        height=5,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"]},
            "colorMode": "background",
            "textMode": "value_and_name",
        },
        **kwargs,
    )


def timeseries(title, *queries, unit="short", **kwargs):
    """A time-series panel of ``(expr, legend)`` queries."""
    return panel(
        "timeseries",
        title,
        [target(e, legend) for e, legend in queries],
        unit=unit,
        options={"legend": {"displayMode": "list", "placement": "bottom"}},
        **kwargs,
    )


def table(title, expr, *, width=24, height=6, description=""):
    """A table panel of an instant query, one row per series."""
    return panel(
        "table",
        title,
        [target(expr, table=True)],
        width=width,
        height=height,
        description=description,
    )


def layout(panels: list[dict]) -> list[dict]:
    """Place copies of panels left to right, wrapping at Grafana's 24 columns; give them ids."""
    panels = copy.deepcopy(panels)  # shared panels appear on several dashboards
    x = y = row_height = 0
    for panel_id, item in enumerate(panels, start=1):
        grid = item["gridPos"]
        if x + grid["w"] > 24:
            x, y, row_height = 0, y + row_height, 0
        grid.update(x=x, y=y)
        x += grid["w"]
        row_height = max(row_height, grid["h"])
        item["id"] = panel_id
    return panels


def dashboard(uid: str, title: str, description: str, panels: list[dict]) -> dict:
    """A whole dashboard with the ``$model`` variable."""
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["emflow"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-30d", "to": "now"},
        "links": [
            {
                "title": "emflow dashboards",
                "type": "dashboards",
                "tags": ["emflow"],
                "asDropdown": True,
            }
        ],
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "name": "model",
                    "label": "Model",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {
                        "query": "label_values(emflow_retrain_last_run_timestamp_seconds, model)",
                        "refId": "model",
                    },
                    "definition": "label_values(emflow_retrain_last_run_timestamp_seconds, model)",
                    "refresh": 2,
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                }
            ]
        },
        "panels": layout(panels),
    }


# ---------------------------------------------------------------------------------------------
# shared panels

SINCE_SUCCESS = stat(
    "Time since last successful retrain",
    f"time() - max by (model) (emflow_retrain_last_success_timestamp_seconds{M})",
    unit="s",
    legend="{{model}}",
    steps=[(None, "green"), (STALE_AFTER_SECONDS, "red")],
    description="Pages (EmflowRetrainStale) above 36 h on the daily schedule.",
)
SINCE_PROMOTION = stat(
    "Time since the champion was last replaced",
    f"time() - max by (model) (emflow_retrain_last_promotion_timestamp_seconds{M})",
    unit="s",
    legend="{{model}}",
    steps=[(None, "green"), (72 * 3600, "orange")],
    description="Tickets (EmflowChampionNotRefreshed) above 72 h while retrains succeed: the "
    "gate rejects every challenger (a lasting shift read as a new structure?).",
)
LATEST_ROLLBACK = stat(
    "Champion set by the latest rollback",
    f"max by (model) (emflow_rollback_champion_version{M})",
    legend="{{model}}",
    description="The version the latest rollback made champion; the retrain panels show the "
    "latest retrain run, which may predate it.",
)
SINCE_ROLLBACK = stat(
    "Time since the latest rollback",
    f"time() - max by (model) (emflow_rollback_last_timestamp_seconds{M})",
    unit="s",
    legend="{{model}}",
)
HOLDOUT = timeseries(
    "Holdout log-likelihood: challenger vs champion",
    (f"emflow_holdout_log_likelihood_nats{M}", "{{model}} {{role}}"),
    unit="none",
    description="Mean holdout log-likelihood per sample (nats) of the new model and of the model "
    "in service, on the same rows. Higher is better.",
)
DURATION = timeseries(
    "Training duration",
    (f"emflow_train_duration_seconds{M}", "{{model}} ({{backend}})"),
    unit="s",
    description="Wall time of all restarts; EmflowTrainingDurationSpike fires above 3x the "
    "7-day median.",
)
GPU_MEMORY = timeseries(
    "GPU memory peak",
    (f"emflow_gpu_memory_peak_bytes{M}", "{{model}} (train step)"),
    (f"emflow_train_device_peak_bytes{M}", "{{model}} (fit peak)"),
    unit="bytes",
)
QUARANTINE_RATE = stat(
    "Quarantined rows (latest run)",
    f"emflow_quarantined_rows{M} / emflow_validated_rows{M}",
    unit="percentunit",
    legend="{{model}}",
    steps=[(None, "green"), (0.05, "red")],
    description="Share of validated rows moved to quarantine; tickets above 5 %.",
)

EXECUTIVE = dashboard(
    "emflow-executive",
    "emflow / executive",
    "Is the telemetry model fresh, good and cheap? One screen for stakeholders.",
    [
        SINCE_SUCCESS,
        stat(
            "Retrain success rate (7 d)",
            f"sum(changes(emflow_retrain_last_success_timestamp_seconds{M}[7d]))"
            f" / sum(changes(emflow_retrain_last_run_timestamp_seconds{M}[7d]))",
            unit="percentunit",
            steps=[(None, "red"), (0.9, "orange"), (0.99, "green")],
            description="Successful runs / runs, counted from timestamp changes (the "
            "pipeline pushes per-run gauges, not counters).",
        ),
        stat(
            "Retrain runs (7 d)",
            f"sum by (model) (changes(emflow_retrain_last_run_timestamp_seconds{M}[7d]))",
            legend="{{model}}",
        ),
        stat(
            "Latest promotion decision",
            f"max by (model, outcome) (emflow_promotion_decision{M}) == 1",
            legend="{{model}}: {{outcome}}",
            description="promoted: the new model serves; rejected: the gate kept the "
            "champion (holdout likelihood or alignment); quarantined: the batch "
            "failed validation.",
        ),
        timeseries(
            "Model quality: holdout log-likelihood of the model in service",
            ('emflow_holdout_log_likelihood_nats{model=~"$model", role="champion"}', "{{model}}"),
            unit="none",
            width=12,
        ),
        timeseries(
            "Data drift: worst feature PSI",
            (f"max by (model) (emflow_feature_drift_psi{M})", "{{model}}"),
            unit="none",
            width=12,
            steps=[(None, "green"), (0.2, "red")],
        ),
        timeseries(
            "Training cost proxy: training time per run",
            (f"emflow_train_duration_seconds{M}", "{{model}} ({{backend}})"),
            unit="s",
            width=24,
        ),
    ],
)

ONCALL = dashboard(
    "emflow-oncall",
    "emflow / on-call",
    "What is broken right now and where to look: retrain status, alerts, gate, data.",
    [
        stat(
            "Latest run",
            f"emflow_retrain_last_run_success{M}",
            legend="{{model}}",
            mappings=[
                {
                    "type": "value",
                    "options": {
                        "0": {"text": "FAILED", "color": "red"},
                        "1": {"text": "OK", "color": "green"},
                    },
                }
            ],
        ),
        SINCE_SUCCESS,
        SINCE_PROMOTION,
        LATEST_ROLLBACK,
        SINCE_ROLLBACK,
        QUARANTINE_RATE,
        stat(
            "Latest challenger vs champion (nats/sample)",
            'emflow_holdout_log_likelihood_nats{model=~"$model", role="challenger"}'
            " - ignoring(role) emflow_holdout_log_likelihood_nats"
            '{model=~"$model", role="champion"}',
            unit="none",
            legend="{{model}}",
            steps=[(None, "red"), (-0.05, "green")],
            description="Below -0.05 (the default promotion margin) the gate rejects.",
        ),
        table(
            "Firing emflow alerts",
            'ALERTS{alertname=~"Emflow.*", alertstate="firing"}',
            description="Pages: EmflowRetrainFailed, EmflowRetrainStale. The rest are tickets.",
        ),
        table(
            "Latest retrain run",
            f"emflow_retrain_last_run_info{M}",
            description="run_id is the Airflow run id (run_key its path-safe form: the folder "
            "and MLflow tag); failed_step names the task to open.",
        ),
        HOLDOUT,
        DURATION,
        GPU_MEMORY,
        timeseries(
            "Rows validated and quarantined",
            (f"emflow_validated_rows{M}", "{{model}} validated"),
            (f"emflow_quarantined_rows{M}", "{{model}} quarantined"),
            width=12,
        ),
        timeseries(
            "Age of the latest push to the Pushgateway",
            ('time() - push_time_seconds{job="emflow_retrain", model=~"$model"}', "{{model}}"),
            unit="s",
            width=12,
            description="Grows until the next run pushes; a flat zero means pushes "
            "stopped being scraped.",
        ),
    ],
)

DEBUG = dashboard(
    "emflow-debug",
    "emflow / debug",
    "Why did a run train slowly, fit badly or get rejected: restarts, bounds, drift, alignment.",
    [
        panel(
            "bargauge",
            "Final lower bound per restart (latest run)",
            [
                target(
                    f"emflow_restart_lower_bound_nats{M}",
                    "{{model}} restart {{restart}}",
                    instant=True,
                )
            ],
            unit="none",
            width=12,
            description="All restarts near the winner: a stable fit. A wide spread: sensitive "
            "to initialisation; raise n_init.",
            options={
                "orientation": "horizontal",
                "displayMode": "basic",
                "reduceOptions": {"calcs": ["lastNotNull"]},
            },
        ),
        timeseries(
            "Train lower bound vs holdout (overfitting gap)",
            (f"emflow_winner_lower_bound_nats{M}", "{{model}} train lower bound"),
            (
                'emflow_holdout_log_likelihood_nats{model=~"$model", role="challenger"}',
                "{{model}} challenger holdout",
            ),
            unit="none",
            width=12,
        ),
        timeseries(
            "EM iterations of the winning restart", (f"emflow_em_iterations{M}", "{{model}}")
        ),
        timeseries("Restarts (n_init)", (f"emflow_em_restarts{M}", "{{model}}")),
        timeseries(
            "Components (K)",
            (f"emflow_model_components{M}", "{{model}}"),
            unit="none",
            description="K of the latest trained model; with n_components=auto, the K "
            "model selection chose.",
        ),
        timeseries(
            "Component alignment cost",
            (f"emflow_component_alignment_cost{M}", "{{model}}"),
            unit="none",
            description="Mean Bhattacharyya distance of matched components; above "
            "EMFLOW_ALIGNMENT_THRESHOLD the gate rejects the challenger.",
        ),
        timeseries(
            "Feature drift (PSI) by feature",
            (f"emflow_feature_drift_psi{M}", "{{model}} {{feature}}"),
            unit="none",
            width=12,
            steps=[(None, "green"), (0.2, "red")],
        ),
        timeseries(
            "Score distribution divergence (JS, nats)",
            (f"emflow_drift_score_divergence{M}", "{{model}}"),
            unit="none",
            width=12,
            steps=[(None, "green"), (0.05, "red")],
        ),
        timeseries(
            "Component weights",
            (f"emflow_component_weight{M}", "{{model}} component {{component}}"),
            unit="percentunit",
            width=12,
        ),
        timeseries(
            "Training duration by backend",
            (
                f"sum by (model, backend) (emflow_train_duration_seconds{M})",
                "{{model}} {{backend}}",
            ),
            unit="s",
            width=12,
        ),
        GPU_MEMORY,
        timeseries(
            "Anomaly false-alarm rate: measured vs band",
            (f"emflow_anomaly_alarm_rate{M}", "{{model}} measured"),
            (f"emflow_anomaly_alarm_rate_bound{M}", "{{model}} {{bound}}"),
            unit="percentunit",
            width=8,
            description="Share of fresh holdout rows the challenger's anomaly threshold flags "
            "(calibrated on the other half of the holdout), its target and the band the gate "
            "requires; EmflowAnomalyAlarmRateOutOfBand fires outside it.",
        ),
        text_panel(
            "Per-iteration curves",
            "Per-iteration lower bounds of every restart, convergence plots and the "
            "components drawn over a 2-D projection are in the run's MLflow page "
            "(compose: http://127.0.0.1:5000, experiment `emflow-retrain`); the "
            "`run_id` label of `emflow_retrain_last_run_info` names the Airflow run.",
            width=16,
        ),
    ],
)

DASHBOARDS = {"executive": EXECUTIVE, "oncall": ONCALL, "debug": DEBUG}


def render(board: dict) -> str:
    """The JSON text of a dashboard, stable for diffs."""
    return json.dumps(board, indent=2, sort_keys=True) + "\n"


def main() -> None:
    """Write every dashboard to ``ops/grafana/dashboards/<name>.json``."""
    DASHBOARD_DIR.mkdir(parents=True, exist_ok=True)
    for name, board in DASHBOARDS.items():
        (DASHBOARD_DIR / f"{name}.json").write_text(render(board))


if __name__ == "__main__":
    main()
