"""Generates ops/grafana/agentfleet.json, the fleet's Grafana dashboard, from the panels below.

    python ops/grafana/dashboard.py > ops/grafana/agentfleet.json

Plain dicts in Grafana's dashboard JSON model (schemaVersion 39), no library: the dashboard is a
few panel kinds, and tests/worker/obs/test_metrics_prometheus.py regenerates it, compares it with
the committed file and checks every query names a metric the fleet exports. Every API replica
serves the same fleet-wide values: a count takes max() across scraped replicas, a quantile or a
ratio sums them (the same whatever their number).
"""

from __future__ import annotations

import json
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
WIDTH = 24  # Grafana's grid


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def panel(
    title: str, targets: list[tuple[str, str]], unit: str = "short", kind: str = "timeseries", width: int = 12
) -> dict[str, Any]:
    """One panel: (PromQL, legend) per query."""
    return {
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [_target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)],
        "gridPos": {"h": 8, "w": width, "x": 0, "y": 0},
    }


def quantiles(title: str, metric: str, by: str) -> dict[str, Any]:
    """p50, p95 and p99 of a histogram over 5 minutes, per `by` label (a sum over the other labels
    and the replicas: a quantile is the same whatever the number of replicas scraped)."""
    return panel(
        title,
        [
            (
                f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket[5m])))",
                f"p{round(q * 100)} {{{{{by}}}}}",
            )
            for q in (0.5, 0.95, 0.99)
        ],
        unit="s",
    )


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"h": 1, "w": WIDTH}}


PANELS: list[dict[str, Any]] = [
    row("Runs"),
    panel(
        "Runs ended by status",
        [("sum by (status) (max by (status, stop_reason) (rate(fleet_runs_total[5m])))", "{{status}}")],
        unit="ops",
    ),
    panel(
        "Runs now",
        [
            ("max(fleet_runs_executing)", "executing"),
            ("max(fleet_runs_waiting)", "waiting"),
            ('max(fleet_queue_depth{queue="agents"})', "queued"),
        ],
    ),
    row("Latency"),
    quantiles("Run duration", "fleet_run_duration_seconds", "agent"),
    quantiles("Step duration", "fleet_step_duration_seconds", "action"),
    quantiles("Tool call duration", "fleet_tool_call_duration_seconds", "tool"),
    quantiles("Model call duration", "fleet_model_call_duration_seconds", "model"),
    row("Queues"),
    panel("Queue depth", [("max by (queue) (fleet_queue_depth)", "{{queue}}")]),
    panel(
        "Queue age and wait",
        [
            ("max by (queue) (fleet_queue_oldest_age_seconds)", "oldest {{queue}}"),
            (
                "histogram_quantile(0.95, sum by (queue, le) (rate(fleet_queue_wait_seconds_bucket[5m])))",
                "p95 wait {{queue}}",
            ),
        ],
        unit="s",
    ),
    row("Spend"),
    panel(
        "Model tokens",
        [("max by (model, kind) (rate(fleet_model_tokens_total[5m])) * 60", "{{model}} {{kind}}")],
        unit="short",
    ),
    panel(
        "Cost per hour",
        [("sum by (agent) (max by (agent, tenant) (rate(fleet_cost_usd_total[1h]))) * 3600", "{{agent}}")],
        unit="currencyUSD",
    ),
    panel(
        "Spend today against the daily quota",
        [
            (
                "max by (agent) (fleet_agent_spend_today_usd)"
                " / max by (agent) (fleet_agent_spend_limit_usd > 0)",
                "{{agent}}",
            )
        ],
        unit="percentunit",
    ),
    row("Controls"),
    panel(
        "Open breakers and kill switches",
        [
            ("max by (tool, state) (fleet_breaker_open) > 0", "breaker {{tool}} {{state}}"),
            ("max by (switch) (fleet_kill_switch_on)", "switch {{switch}}"),
        ],
    ),
    panel("Workers alive", [("max by (kind) (fleet_workers_alive)", "{{kind}}")]),
    panel(
        "Canary error rate by version",
        [
            (
                'sum by (agent, version) (rate(fleet_version_runs_total{outcome="error"}[10m]))'
                " / sum by (agent, version) (rate(fleet_version_runs_total[10m]))",
                "{{agent}} {{version}}",
            ),
            ("max by (agent) (increase(fleet_canary_rollbacks_total[1h]))", "rollbacks {{agent}}"),
        ],
        unit="percentunit",
    ),
    panel(
        "Tool calls by outcome",
        [("max by (tool, outcome) (rate(fleet_tool_calls_total[5m]))", "{{tool}} {{outcome}}")],
        unit="ops",
    ),
]


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Places panels left to right, two to a line, each row on a line of its own; numbers them."""
    x = y = 0
    out = []
    for i, item in enumerate(panels, start=1):
        item = {**item, "id": i}
        grid = dict(item["gridPos"])
        if item["type"] == "row" or x + grid["w"] > WIDTH:
            y, x = y + (8 if x else 0), 0
        grid.update(x=x, y=y)
        item["gridPos"] = grid
        if item["type"] == "row":
            y += 1
        else:
            x += grid["w"]
        out.append(item)
    return out


def dashboard() -> dict[str, Any]:
    """The dashboard's JSON model."""
    return {
        "uid": "agentfleet",
        "title": "agentfleet",
        "description": "The agent fleet: runs, latencies, queues, spend and controls (README Watching it).",
        "tags": ["agentfleet"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                }
            ]
        },
        "annotations": {"list": []},
        "panels": layout(PANELS),
    }


def render() -> str:
    """The file's text: stable key order, two-space indent, a final newline."""
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


def expressions(model: dict[str, Any]) -> list[str]:
    """Every PromQL expression in a dashboard's panels."""
    return [target["expr"] for item in model["panels"] for target in item.get("targets", [])]


if __name__ == "__main__":
    print(render(), end="")
