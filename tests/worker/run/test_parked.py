"""Parked runs against a real Redis and real workers: a waiting run holds no process, resumes on
any agent worker, and obeys kill switches, cancel and its deadline while it waits; crashes and
deploys of the workers leave parked runs waiting, not failed."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest
from celery import Celery

from tests.harness import CountingServer, Fleet, RedisServer, wait_for
from worker.keys import Keys

KEYS = Keys("fleet")
CONFIG: dict[str, Any] = {
    "runtime": {"env": {"AGENT_MAX_SECONDS": 1200}},
    "tools": {"timeouts_ms": {"http.get": 30000}, "max_concurrency": {"default": 500}},
}


@pytest.fixture
def slow_server() -> Iterator[CountingServer]:
    server = CountingServer()
    yield server
    server.close()


@pytest.fixture
def bare() -> Iterator[Fleet]:
    """A Redis and an API; each test starts the workers it needs."""
    server = RedisServer()
    fleet = Fleet(server, CONFIG)
    try:
        fleet.start_api()
        yield fleet
    finally:
        fleet.close()
        server.close()


def busy_run_tasks(fleet: Fleet) -> int:
    """Run deliveries executing in the agent workers' pools now, as Celery reports them (an
    agent worker that does not answer fails the test rather than count as idle)."""
    app = Celery(broker=fleet.redis.url)
    try:
        active = app.control.inspect(timeout=5.0).active() or {}
    finally:
        app.close()
    assert any(node.startswith("agent-") for node in active), f"no agent worker answered: {active}"
    return sum(1 for tasks in active.values() for task in tasks if task.get("name") == "fleet.run_agent")


def gauge(fleet: Fleet, name: str) -> float:
    """One unlabelled gauge of /metrics."""
    text = httpx.get(f"{fleet.url}/metrics", timeout=10).text
    (value,) = [line.split()[1] for line in text.splitlines() if line.startswith(f"{name} ")]
    return float(value)


def get_plan(server: CountingServer, seconds: float) -> dict[str, Any]:
    call = {"tool": "http.get", "args": {"url": server.url(f"/sleep/{seconds}")}}
    return {"plan": [call, {"final": "done"}]}


def parked(fleet: Fleet, run_id: str) -> bool:
    return fleet.r.hget(KEYS.run(run_id), "parked") == "1"


def test_a_sleep_of_600_s_costs_no_process_and_a_cancel_ends_it_at_once(bare: Fleet) -> None:
    bare.start_worker(1)
    bare.start_tool_worker()
    run = bare.submit(input={"plan": [{"sleep": 600}, {"final": "late"}]}, budgets={"max_seconds": 1200})
    wait_for(lambda: parked(bare, run["id"]), 15, "the sleeping run did not park")
    assert busy_run_tasks(bare) == 0
    assert bare.get(run["id"])["status"] == "running"
    assert (gauge(bare, "fleet_runs_waiting"), gauge(bare, "fleet_runs_executing")) == (1, 0)
    assert gauge(bare, "fleet_runs_running") == 1
    # the only pool child is free: another run goes through while the first one sleeps
    other = bare.submit(input={"plan": [{"tool": "echo", "args": {"text": "x"}}, {"final": "quick"}]})
    assert bare.wait(other["id"], timeout=15)["status"] == "succeeded"
    assert busy_run_tasks(bare) == 0 and parked(bare, run["id"])
    asked = time.time()
    with bare.client() as c:
        assert c.post(f"/v1/runs/{run['id']}/cancel").status_code in (200, 202)
    ended = bare.wait_status(run["id"], "cancelled", timeout=5)
    assert ended["stop_reason"] == "cancelled"
    assert time.time() - asked < 3.0
    assert bare.r.zcard(KEYS.timers()) == 0 and bare.r.hlen(KEYS.parked_owners("tenant")) == 0


def test_a_parked_run_resumes_on_another_agent_worker(bare: Fleet, slow_server: CountingServer) -> None:
    first = bare.start_worker(1)
    bare.start_tool_worker()
    run = bare.submit(input=get_plan(slow_server, 3))
    wait_for(lambda: parked(bare, run["id"]), 15, "the run did not park")
    bare.stop_proc(first)  # the worker it started on is gone before the reply comes
    bare.start_worker(1)
    done = bare.wait(run["id"], timeout=30)
    assert (done["status"], done["output"]) == ("succeeded", "done")
    steps = bare.r.lrange(KEYS.run_steps(run["id"]), 0, -1)
    assert len(steps) == 1 and '"ok": true' in steps[0]
    assert bare.r.hget(KEYS.run(run["id"]), "attempts") == "1"  # a resume is no new attempt
    assert slow_server.count("/sleep/") == 1


def test_kill_switch_cancel_and_deadline_stop_parked_runs(bare: Fleet, slow_server: CountingServer) -> None:
    bare.start_worker(2)
    bare.start_tool_worker("--concurrency", "40")
    runs = [bare.submit(input=get_plan(slow_server, 12)) for _ in range(20)]
    short = bare.submit(input=get_plan(slow_server, 12), budgets={"max_seconds": 4})
    cancelled = bare.submit(input=get_plan(slow_server, 12))
    every = [*runs, short, cancelled]
    wait_for(lambda: all(parked(bare, r["id"]) for r in every), 20, "the runs did not all park")
    assert busy_run_tasks(bare) == 0

    with bare.client() as c:
        assert c.post(f"/v1/runs/{cancelled['id']}/cancel").status_code in (200, 202)
    assert bare.wait_status(cancelled["id"], "cancelled", timeout=5)["stop_reason"] == "cancelled"

    stopped = bare.wait_status(short["id"], "stopped", timeout=10)
    assert stopped["stop_reason"] == "max_seconds"
    assert stopped["usage"]["seconds"] <= 4 + 1.0

    bare.r.set(KEYS.kill_all(), "incident drill")
    flipped = time.time()
    for run in runs:
        view = bare.wait_status(run["id"], "stopped", timeout=5)
        assert view["stop_reason"] == "killed"
        assert view["error"] == {"type": "killed", "message": "incident drill"}
    finished = [float(bare.r.hget(KEYS.run(run["id"]), "finished_ts") or 0) for run in runs]
    assert max(finished) - flipped < 2.0  # the sweep runs every 50 ms; room for a loaded machine
    assert bare.r.zcard(KEYS.timers()) == 0


def kill_tree(pid: int) -> None:
    """SIGKILL a worker and its pool children, as a crash (or the OOM killer) would."""
    proc = psutil.Process(pid)
    for child in proc.children(recursive=True):
        child.kill()
    os.kill(pid, signal.SIGKILL)


def test_sigkill_of_every_agent_worker_with_100_parked_runs_loses_none(
    bare: Fleet, slow_server: CountingServer
) -> None:
    workers = [bare.start_worker(2), bare.start_worker(1)]
    bare.start_tool_worker("--concurrency", "120")
    runs = [bare.submit(input=get_plan(slow_server, 20)) for _ in range(100)]
    wait_for(lambda: bare.r.zcard(KEYS.timers()) >= 100, 45, "100 runs did not park")
    for worker in workers:
        kill_tree(worker.popen.pid)
    bare.start_worker(2)
    views = [bare.wait(run["id"], timeout=90) for run in runs]
    assert [v["status"] for v in views].count("succeeded") == 100, {v["status"] for v in views}
    assert slow_server.count("/sleep/") == 100  # each tool call made once


def test_a_sigterm_deploy_of_every_worker_leaves_parked_runs_waiting(
    bare: Fleet, slow_server: CountingServer
) -> None:
    agent = bare.start_worker(2)
    tool = bare.start_tool_worker("--concurrency", "40")
    runs = [bare.submit(input=get_plan(slow_server, 4)) for _ in range(20)]
    wait_for(lambda: bare.r.zcard(KEYS.timers()) >= 20, 20, "the runs did not park")
    bare.stop_proc(agent, timeout=30)
    bare.stop_proc(tool, timeout=30)
    assert agent.popen.returncode is not None and tool.popen.returncode is not None
    assert all(bare.r.hget(KEYS.run(run["id"]), "status") == "running" for run in runs)
    bare.start_tool_worker("--concurrency", "40")
    bare.start_worker(2)
    views = [bare.wait(run["id"], timeout=60) for run in runs]
    assert [v["status"] for v in views] == ["succeeded"] * 20, [(v["status"], v["error"]) for v in views]
