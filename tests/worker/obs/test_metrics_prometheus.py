"""The fleet's metrics, alert rules and dashboard against a real Prometheus (Debian's `prometheus`
package, installed by .ci/run) scraping a real fleet's /metrics every second.

The rules Prometheus loads are ops/prometheus/alerts.yml with one change: FleetKillSwitchOn's
`for:` is 1 s instead of 15 minutes (the test's copy, written by `rules_for_test`), so flipping
`fleet:kill:all` fires it within seconds. Everything else is the committed file. Each alert's
expression is also unit-tested by `promtool test rules` (tests/prometheus/alerts_test.yml)."""

from __future__ import annotations

import importlib.util
import math
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import ROOT, FakeOpenAI, Fleet, free_port, running_fleet, wait_for
from worker.keys import Keys
from worker.obs import histograms

RULES = ROOT / "ops" / "prometheus" / "alerts.yml"
RUNBOOK = ROOT / "ops" / "runbook.md"
DASHBOARD = ROOT / "ops" / "grafana" / "agentfleet.json"
MODEL = "fake-model"
TEST_FOR = {"FleetKillSwitchOn": "1s"}  # the test copy's `for:` of these alerts


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: .ci/run installs Debian's prometheus package")
    return found


def rules_for_test(path: Path) -> None:
    """ops/prometheus/alerts.yml with TEST_FOR's `for:` durations, written to `path`."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in TEST_FOR:
                rule["for"] = TEST_FOR[rule["alert"]]
    path.write_text(yaml.safe_dump(rules, sort_keys=False))


class Prometheus:
    """A Prometheus on a free loopback port with its own storage, scraping `target` every second."""

    def __init__(self, target: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fleet-prometheus-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules_for_test(self.dir / "alerts.yml")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(self.dir / "alerts.yml")],
            "scrape_configs": [{"job_name": "agentfleet", "static_configs": [{"targets": [target]}]}],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (self.dir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._ready, 30, "Prometheus did not become ready")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, path: str, **params: Any) -> Any:
        resp = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = resp.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it has no sample."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet(fake: FakeOpenAI) -> Iterator[Fleet]:
    """A fleet whose llm agent talks to the fake model server, with prices, so model calls count."""
    config = {
        "agents": {
            "llm": {
                "base_url": f"{fake.url}/v1",
                "model": MODEL,
                "prices_usd_per_1m_tokens": {"input": 2.0, "output": 8.0},
            }
        },
        "tools": {"allowlist": ["echo", "test.sleep"]},
    }
    with running_fleet(config=config, concurrency=4, env={"OPENAI_API_KEY": "sk-test-metrics"}) as f:
        yield f


@pytest.fixture(scope="module")
def prometheus(fleet: Fleet) -> Iterator[Prometheus]:
    prom = Prometheus(fleet.url.removeprefix("http://"))
    try:
        wait_for(lambda: prom.value('up{job="agentfleet"}') == 1.0, 30, "Prometheus did not scrape the API")
        yield prom
    finally:
        prom.close()


def bucket_bounds(value_s: float) -> tuple[float, float]:
    """The (lower, upper] bounds of the histogram bucket `value_s` counts in."""
    lower = 0.0
    for bound in histograms.BUCKETS_S:
        if value_s <= bound:
            return lower, bound
        lower = bound
    return lower, math.inf


def test_run_duration_quantiles_read_back_from_prometheus_fall_in_the_true_values_bucket(
    fleet: Fleet, prometheus: Prometheus, fake: FakeOpenAI
) -> None:
    sleeps = [0.05] * 6 + [0.6] * 4 + [1.3] * 2
    run_ids = [
        fleet.submit(input={"plan": [{"tool": "test.sleep", "args": {"seconds": s}}, {"final": "ok"}]})["id"]
        for s in sleeps
    ]
    fake.load("metrics", [{"content": "done", "usage": {"prompt_tokens": 11, "completion_tokens": 4}}])
    llm_run = fleet.submit(agent="llm", input={"prompt": f"scenario:metrics:{uuid.uuid4().hex}"})["id"]
    for run_id in [*run_ids, llm_run]:
        assert fleet.wait(run_id)["status"] == "succeeded"
    # the durations the fleet observed, exactly: first start to end, from the runs' own records
    durations = sorted(
        float(finished) - float(started)
        for started, finished in (
            fleet.r.hmget(Keys("fleet").run(run_id), ["started_ts", "finished_ts"]) for run_id in run_ids
        )
    )
    n = len(durations)
    scripted = 'agent="scripted",status="succeeded"'
    wait_for(
        lambda: prometheus.value(f"max(fleet_run_duration_seconds_count{{{scripted}}})") == n,
        30,
        "Prometheus did not see the runs' durations",
    )
    for q in (0.5, 0.9, 0.99):
        expr = f"histogram_quantile({q}, max by (le) (fleet_run_duration_seconds_bucket{{{scripted}}}))"
        estimate = prometheus.value(expr)
        true_value = durations[math.ceil(q * n) - 1]
        lower, upper = bucket_bounds(true_value)
        assert estimate is not None and lower <= estimate <= upper, (q, estimate, true_value, durations)
    total = prometheus.value(f"max(fleet_run_duration_seconds_sum{{{scripted}}})")
    assert total == pytest.approx(sum(durations), abs=0.01)

    # each run's one tool step, its tool call on the tool worker, its queue wait; the model call
    counts = {
        'fleet_step_duration_seconds_count{agent="scripted",action="tool"}': n,
        'fleet_tool_call_duration_seconds_count{tool="test.sleep",outcome="ok"}': n,
        'fleet_queue_wait_seconds_count{queue="agents"}': n + 1,
        f'fleet_model_call_duration_seconds_count{{model="{MODEL}",outcome="ok"}}': 1,
        f'fleet_model_tokens_total{{model="{MODEL}",kind="input"}}': 11,
        f'fleet_model_tokens_total{{model="{MODEL}",kind="output"}}': 4,
    }
    for expr, expected in counts.items():
        wait_for(lambda e=expr, x=expected: prometheus.value(f"max({e})") == x, 10, f"{expr} != {expected}")
    slow_tool = prometheus.value(
        'histogram_quantile(0.99, max by (le) (fleet_tool_call_duration_seconds_bucket{tool="test.sleep"}))'
    )
    assert slow_tool is not None and 1.0 <= slow_tool <= 2.5  # the 1.3 s calls' bucket
    cost = prometheus.value('max(fleet_cost_usd_total{agent="llm"})')
    assert cost == pytest.approx((11 * 2.0 + 4 * 8.0) / 1e6)


def test_the_kill_switch_alert_fires_through_prometheus_and_resolves(
    fleet: Fleet, prometheus: Prometheus
) -> None:
    def firing() -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = prometheus.api("alerts")["alerts"]
        return [
            a
            for a in alerts
            if a["labels"].get("alertname") == "FleetKillSwitchOn" and a["state"] == "firing"
        ]

    assert firing() == []
    fleet.r.set("fleet:kill:all", "metrics test")
    try:
        wait_for(lambda: firing() != [], 30, "FleetKillSwitchOn did not fire")
        (alert,) = firing()
        assert alert["labels"]["switch"] == "all" and alert["labels"]["severity"] == "warning"
        assert alert["annotations"]["runbook_url"] == "ops/runbook.md#fleetkillswitchon"
    finally:
        fleet.r.delete("fleet:kill:all")
    wait_for(lambda: firing() == [], 30, "FleetKillSwitchOn did not resolve")


def load_dashboard_module() -> Any:
    spec = importlib.util.spec_from_file_location("dashboard", ROOT / "ops" / "grafana" / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exported_names(metrics_text: str) -> set[str]:
    """Every series name a scrape's families can have, from their types (present without samples)."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {
        family.name + suffix
        for family in text_string_to_metric_families(metrics_text)
        for suffix in suffixes.get(family.type, [""])
    }


def test_the_dashboard_is_generated_and_queries_only_metrics_the_fleet_exports(
    fleet: Fleet, prometheus: Prometheus
) -> None:
    dashboard = load_dashboard_module()
    assert DASHBOARD.read_text() == dashboard.render(), "run: python ops/grafana/dashboard.py > " + str(
        DASHBOARD.relative_to(ROOT)
    )
    model = yaml.safe_load(DASHBOARD.read_text())  # JSON is YAML
    titles = " | ".join(p["title"] for p in model["panels"])
    for needed in ("Runs ended by status", "Run duration", "Step duration", "Tool call duration",
                   "Model call duration", "Queue depth", "Queue age", "Model tokens", "Cost",
                   "breakers and kill switches", "Canary error rate"):  # fmt: skip
        assert needed in titles
    exprs = dashboard.expressions(model)
    assert len(exprs) >= 15
    exported = exported_names(httpx.get(f"{fleet.url}/metrics", timeout=10).text)
    rules = yaml.safe_load(RULES.read_text())
    rule_exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    for expr in [*exprs, *rule_exprs]:
        names = set(re.findall(r"\bfleet_[a-z0-9_]+", expr))
        assert names, expr
        assert names <= exported, (expr, names - exported)
        prometheus.query(expr)  # Prometheus parses and evaluates it


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_the_rules_pass_promtool_and_every_alert_links_to_its_runbook_section() -> None:
    check = subprocess.run(
        [binary("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    anchors = {
        github_anchor(line.lstrip("#")) for line in RUNBOOK.read_text().splitlines() if line.startswith("#")
    }
    rules = yaml.safe_load(RULES.read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    for name in ("FleetKillSwitchOn", "FleetBreakerOpen", "FleetAgentsBacklogOld", "FleetRunErrorRate",
                 "FleetRunP99NearMaxSeconds", "FleetCanaryRolledBack", "FleetNoAgentWorker",
                 "FleetAgentSpendNearQuota", "FleetArchiveLagging", "FleetRedisMemoryHigh"):  # fmt: skip
        assert name in alerts
    for name, rule in alerts.items():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "ops/runbook.md" and anchor in anchors, (name, url)
    assert alerts["FleetKillSwitchOn"]["for"] == "15m"  # the test's copy shortens it, not the file


def test_each_alert_fires_on_synthetic_series_as_promtool_evaluates_it() -> None:
    """tests/prometheus/alerts_test.yml: each operator alert on series it must fire on (and, for
    some, series or times it must not), with two API replicas scraped, annotations rendered."""
    result = subprocess.run(
        [binary("promtool"), "test", "rules", "alerts_test.yml"],
        cwd=ROOT / "tests" / "prometheus",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(
        re.findall(r"alertname: (\w+)", (ROOT / "tests" / "prometheus" / "alerts_test.yml").read_text())
    )
    rules = yaml.safe_load(RULES.read_text())
    operator = {rule["alert"] for rule in rules["groups"][1]["rules"]}
    assert operator <= tested, operator - tested
