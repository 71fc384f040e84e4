"""Operator signals with real processes: fleet-wide /metrics from Redis, the worker heartbeat
probe, /readyz's worker count and Flower behind basic auth."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import ROOT, EventTap, Fleet, RedisServer, free_port, wait_for


@pytest.fixture(scope="module")
def obs_fleet() -> Iterator[Fleet]:
    server = RedisServer()
    f = Fleet(server)
    try:
        f.start_api()
        yield f
    finally:
        f.close()
        server.close()


def scrape(fleet: Fleet) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{fleet.url}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def healthcheck(fleet: Fleet, beat: Path) -> int:
    argv = [
        sys.executable,
        "-m",
        "fleetcli",
        "healthcheck",
        "worker",
        "--file",
        str(beat),
        "--max-age",
        "6",
    ]
    return subprocess.run(argv, env=fleet.env, cwd=ROOT, capture_output=True, timeout=30).returncode


def test_metrics_show_queue_depth_and_age_then_run_counts_that_survive_a_worker_restart(
    obs_fleet: Fleet,
) -> None:
    runs = [obs_fleet.submit(input={"plan": [{"tool": "echo"}, {"final": "x"}]}) for _ in range(5)]
    time.sleep(1.2)
    before = scrape(obs_fleet)
    assert before[("fleet_queue_depth", (("queue", "agents"),))] == 5
    age = before[("fleet_queue_oldest_age_seconds", (("queue", "agents"),))]
    assert 1.2 <= age < 30

    obs_fleet.start_tool_worker()  # first, so no tool call waits for a tool worker to start
    worker = obs_fleet.start_worker(2)
    for run in runs:
        assert obs_fleet.wait(run["id"])["status"] == "succeeded"
    after = scrape(obs_fleet)
    assert after[("fleet_queue_depth", (("queue", "agents"),))] == 0
    assert after[("fleet_queue_oldest_age_seconds", (("queue", "agents"),))] == 0
    finished = ("fleet_runs_total", (("status", "succeeded"), ("stop_reason", "finish")))
    assert after[finished] == 5
    assert after[("fleet_tool_calls_total", (("outcome", "ok"), ("tool", "echo")))] == 5
    assert after[("fleet_budget_usage_total", (("budget", "steps"),))] == 10

    obs_fleet.stop_proc(worker)  # counters live in Redis, not in a worker
    assert scrape(obs_fleet)[finished] == 5
    obs_fleet.start_worker(2)
    obs_fleet.r.set("fleet:kill:tool:echo", "test")
    try:
        switches = scrape(obs_fleet)
        assert switches[("fleet_kill_switch_on", (("switch", "tool:echo"),))] == 1
    finally:
        obs_fleet.r.delete("fleet:kill:tool:echo")


def test_readyz_reports_live_workers(obs_fleet: Fleet) -> None:
    if not any(p.name == "worker" and p.popen.poll() is None for p in obs_fleet.procs):
        obs_fleet.start_worker(1)
    if not any(p.name == "tool-worker" and p.popen.poll() is None for p in obs_fleet.procs):
        obs_fleet.start_tool_worker()
    wait_for(lambda: httpx.get(f"{obs_fleet.url}/readyz").json()["workers"]["tool"] >= 1, 15)
    body = httpx.get(f"{obs_fleet.url}/readyz").json()
    assert body["ok"] is True and body["workers"]["agent"] >= 1


def test_heartbeat_probe_fails_when_the_worker_is_stopped_and_recovers_after(
    obs_fleet: Fleet, tmp_path: Path
) -> None:
    beat = tmp_path / "agent.heartbeat"
    assert healthcheck(obs_fleet, beat) == 1  # no file yet: unhealthy
    obs_fleet.env["FLEET_HEARTBEAT_FILE"] = str(beat)  # this worker alone beats into it
    try:
        worker = obs_fleet.start_worker(1)
    finally:
        del obs_fleet.env["FLEET_HEARTBEAT_FILE"]
    wait_for(lambda: healthcheck(obs_fleet, beat) == 0, 15, "healthy worker reported unhealthy")
    os.kill(worker.popen.pid, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        wait_for(lambda: healthcheck(obs_fleet, beat) == 1, 15, "a stopped worker still looks healthy")
        # the file may have been touched just before the stop: max age 6 s + the 5 s interval
        assert time.monotonic() - stopped_at <= 6 + 5 + 2
    finally:
        os.kill(worker.popen.pid, signal.SIGCONT)
    wait_for(lambda: healthcheck(obs_fleet, beat) == 0, 12, "the worker did not beat again after SIGCONT")


def test_flower_requires_basic_auth_and_lists_the_workers(obs_fleet: Fleet) -> None:
    port = free_port()
    env = {**obs_fleet.env, "FLEET_FLOWER_PASSWORD": "flower-test-password-1", "FLEET_FLOWER_PORT": str(port)}
    log = Path(obs_fleet.dir) / "flower.log"
    with log.open("wb") as out:
        argv = [sys.executable, "-m", "fleetcli", "flower"]
        flower = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return httpx.get(url, timeout=2).status_code == 401
            except httpx.HTTPError:
                return False

        wait_for(answers, 30, f"flower did not start: {log.read_text(errors='replace')}")
        assert httpx.get(f"{url}/api/workers", auth=("fleet", "wrong-password")).status_code == 401
        deadline = time.monotonic() + 30
        names: list[str] = []
        while time.monotonic() < deadline and not any(n.startswith("agent-") for n in names):
            resp = httpx.get(
                f"{url}/api/workers",
                params={"refresh": 1},
                auth=("fleet", "flower-test-password-1"),
                timeout=10,
            )
            assert resp.status_code == 200
            names = list(resp.json())
            time.sleep(0.5)
        assert any(n.startswith("agent-") for n in names), names
        assert any(n.startswith("tool-") for n in names), names
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        flower.wait(timeout=15)


def test_tool_workers_send_no_task_events_unless_configured(obs_fleet: Fleet) -> None:
    for proc in obs_fleet.procs:  # the runs and calls below must go to the workers started here
        if proc.name in ("worker", "tool-worker"):
            obs_fleet.stop_proc(proc)
    saved = obs_fleet.env
    obs_fleet.env = {**saved, "FLEET_OBSERVABILITY__RUN_TASK_EVENTS": "true"}  # the tap's positive control
    try:
        agent = obs_fleet.start_worker(1)
    finally:
        obs_fleet.env = saved
    quiet = obs_fleet.start_tool_worker()
    tap = EventTap(obs_fleet)
    try:
        # heartbeats still flow from the quiet tool worker (Flower's worker list, /readyz)
        wait_for(
            lambda: tap.seen(lambda e: e["type"] == "worker-heartbeat" and e["hostname"].startswith("tool-")),
            15,
            "no heartbeat from the tool worker",
        )
        run = obs_fleet.submit(input={"plan": [{"tool": "echo", "args": {"n": 1}}, {"final": "x"}]})
        assert obs_fleet.wait(run["id"])["status"] == "succeeded"
        wait_for(
            lambda: tap.seen(lambda e: e["type"] == "task-succeeded" and e["hostname"].startswith("agent-")),
            10,
            "the agent worker sent no task events",
        )
        assert tap.seen(lambda e: e["type"].startswith("task-") and e["hostname"].startswith("tool-")) == []
        assert tap.seen(lambda e: e["type"] == "task-sent") == []
        assert "received" not in quiet.text() and "fleet.tool_call" not in quiet.text()

        obs_fleet.stop_proc(quiet)
        saved = obs_fleet.env
        obs_fleet.env = {**saved, "FLEET_OBSERVABILITY__TOOL_TASK_EVENTS": "true"}
        try:
            loud = obs_fleet.start_tool_worker()
        finally:
            obs_fleet.env = saved
        run = obs_fleet.submit(input={"plan": [{"tool": "echo", "args": {"n": 2}}, {"final": "x"}]})
        assert obs_fleet.wait(run["id"])["status"] == "succeeded"
        wait_for(
            lambda: tap.seen(
                lambda e: (
                    e["type"] == "task-succeeded"
                    and e["hostname"].startswith("tool-")
                    and e["hostname"] != quiet_hostname(tap)
                )
            ),
            10,
            "the configured tool worker sent no task events",
        )
        wait_for(lambda: "fleet.tool_call" in loud.text(), 5, "Celery's per-task lines are missing")
        obs_fleet.stop_proc(loud)
    finally:
        tap.close()
        obs_fleet.stop_proc(agent)


def quiet_hostname(tap: EventTap) -> str:
    """The first tool worker's hostname (the one without task events)."""
    beats = tap.seen(lambda e: e["type"] == "worker-heartbeat" and e["hostname"].startswith("tool-"))
    return str(beats[0]["hostname"]) if beats else ""


@pytest.mark.parametrize(
    ("queues", "only_tools"),
    [
        ("tools", True),
        ("tools,tools.echo", True),
        (["tools", "tools.http.get"], True),
        ("tools,tools.echo,webhooks", True),  # tool workers make the webhook deliveries too
        ("agents", False),
        ("agents,tools", False),
        ("toolsx", False),
        (None, False),
        ("", False),
    ],
)
def test_a_worker_serves_only_tools_when_every_queue_is_a_tool_queue(queues: Any, only_tools: bool) -> None:
    from worker.celery_app import serves_only_tools

    assert serves_only_tools(queues) is only_tools
