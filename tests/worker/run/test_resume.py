"""A run whose worker process dies resumes from its checkpoint, spending no budget twice (issue 2).

Real parts only: a redis-server, `fleet api`, a prefork `fleet worker` with one pool child (so the
child that runs a run is the only one), and a `fleet tool-worker`. The tests SIGKILL that child
mid-run, as the OOM killer or a crash would; Celery requeues the message (task_acks_late +
task_reject_on_worker_lost) and the next attempt continues from the run's state in Redis.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from tests.harness import CountingServer, Fleet, Proc, RedisServer, wait_for

MAX_ATTEMPTS = 2
RESUME_TIMEOUT_S = 30
CHILD_KILLED_LINE = "exited with 'signal 9 (SIGKILL)'"


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """API, one agent worker with exactly one prefork child, one tool worker; 2 attempts per run."""
    server = RedisServer()
    f = Fleet(server, env_extra={"FLEET_MAX_ATTEMPTS": str(MAX_ATTEMPTS)})
    try:
        f.start(workers=1, concurrency=1)
        yield f
    finally:
        f.close()
        server.close()


def agent_worker(fleet: Fleet) -> Proc:
    (worker,) = [p for p in fleet.procs if p.name == "worker"]
    return worker


def the_pool_child(fleet: Fleet) -> psutil.Process:
    """The single prefork child of the agent worker (started with --concurrency 1)."""
    children: list[psutil.Process] = []

    def one_child() -> bool:
        children[:] = fleet.pool_children(agent_worker(fleet))
        return len(children) == 1

    wait_for(one_child, 15, f"agent worker has not exactly one pool child: {children}")
    return children[0]


def sigkill_child(fleet: Fleet) -> int:
    """SIGKILL the agent worker's pool child, wait until it is gone, and return its pid."""
    child = the_pool_child(fleet)
    pid = int(child.pid)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    return pid


def wait_until(fleet: Fleet, run_id: str, predicate: Any, what: str, timeout: float = 15) -> dict[str, Any]:
    """Poll the run through the API until `predicate(run)` holds; fail with the run if it never does."""
    deadline = time.monotonic() + timeout
    run = fleet.get(run_id)
    while time.monotonic() < deadline:
        run = fleet.get(run_id)
        if predicate(run):
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} never reached {what}: {run}\n{fleet.logs()}")


def killed_children(fleet: Fleet) -> int:
    """How many pool children the agent worker has seen die of SIGKILL (from its log)."""
    return agent_worker(fleet).text().count(CHILD_KILLED_LINE)


def test_sigkilled_child_mid_step_resumes_from_checkpoint_without_repeating_the_first_tool_call(
    fleet: Fleet, http_server: CountingServer
) -> None:
    tag = f"/resume-{uuid.uuid4().hex[:8]}/"
    plan = [
        {"tool": "http.get", "args": {"url": http_server.url(tag + "first")}},
        {"sleep": 3},
        {"tool": "http.get", "args": {"url": http_server.url(tag + "second")}},
        {"final": "resumed"},
    ]
    run = fleet.submit(input={"plan": plan})
    during = wait_until(
        fleet, run["id"], lambda r: r["status"] == "running" and r["usage"]["steps"] == 2, "the sleep step"
    )
    assert during["usage"]["tool_calls"] == 1
    assert http_server.count(tag) == 1
    started_at = during["started_at"]
    assert started_at is not None

    killed_pid = sigkill_child(fleet)

    done = fleet.wait(run["id"], timeout=RESUME_TIMEOUT_S)
    assert done["status"] == "succeeded", done
    assert done["stop_reason"] == "finish"
    assert done["output"] == "resumed"
    # No budget spent twice: 4 steps (not 5), 2 tool calls, and the server saw each call once.
    assert done["usage"]["steps"] == 4, done["usage"]
    assert done["usage"]["tool_calls"] == 2, done["usage"]
    assert http_server.count(tag + "first") == 1
    assert http_server.count(tag + "second") == 1
    assert http_server.count(tag) == 2
    # The step log holds each finished step once; step 2 ran again after the kill and counts once.
    assert [entry["step"] for entry in done["steps"]] == [1, 2, 3], done["steps"]
    assert [entry["action"] for entry in done["steps"]] == ["tool", "sleep", "tool"]
    # Budget time counts from the first start, not from the resume.
    assert done["started_at"] == started_at
    assert done["usage"]["seconds"] >= 3
    # The run really went on in another process: the pool replaced the killed child.
    assert the_pool_child(fleet).pid != killed_pid


def test_sigkilled_child_while_waiting_on_a_tool_resumes_and_counts_the_call_once(fleet: Fleet) -> None:
    plan = [{"tool": "test.sleep", "args": {"seconds": 8}}, {"final": "resumed"}]
    run = fleet.submit(input={"plan": plan})
    during = wait_until(
        fleet,
        run["id"],
        lambda r: r["status"] == "running" and r["usage"]["steps"] == 1 and r["usage"]["tool_calls"] == 1,
        "the tool call",
    )
    started_at = during["started_at"]
    time.sleep(0.5)  # the call is reserved; let the loop send it and block waiting for the reply
    still = fleet.get(run["id"])
    assert still["status"] == "running" and still["usage"]["steps"] == 1, still

    killed_pid = sigkill_child(fleet)

    done = fleet.wait(run["id"], timeout=RESUME_TIMEOUT_S)
    assert done["status"] == "succeeded", done
    assert done["output"] == "resumed"
    assert done["usage"]["tool_calls"] == 1, done["usage"]
    assert done["usage"]["steps"] == 2, done["usage"]
    (entry,) = done["steps"]
    assert entry["step"] == 1 and entry["tool"] == "test.sleep" and entry["ok"] is True, entry
    assert done["started_at"] == started_at
    assert the_pool_child(fleet).pid != killed_pid


def test_run_killing_its_worker_every_step_fails_worker_lost_after_max_attempts(fleet: Fleet) -> None:
    kills_before = killed_children(fleet)
    run = fleet.submit(agent="suicidal", input={})

    done = fleet.wait(run["id"], timeout=RESUME_TIMEOUT_S)
    assert done["status"] == "failed", done
    assert done["stop_reason"] == "error"
    assert done["error"]["type"] == "worker_lost", done["error"]
    assert done["output"] is None
    assert done["finished_at"] is not None

    # Each of the MAX_ATTEMPTS attempts killed the child once; the next delivery gave up without
    # running the agent, and nothing requeues the run after it failed.
    wait_for(
        lambda: killed_children(fleet) - kills_before >= MAX_ATTEMPTS,
        10,
        f"worker log shows fewer than {MAX_ATTEMPTS} killed children:\n{fleet.logs()}",
    )
    time.sleep(2)
    assert killed_children(fleet) - kills_before == MAX_ATTEMPTS, agent_worker(fleet).text()[-3000:]
    assert fleet.get(run["id"])["status"] == "failed"

    # The worker keeps serving.
    after = fleet.submit(input={"plan": [{"tool": "echo", "args": {"n": 1}}, {"final": "still serving"}]})
    served = fleet.wait(after["id"], timeout=RESUME_TIMEOUT_S)
    assert served["status"] == "succeeded", served
    assert served["output"] == "still serving"
    assert agent_worker(fleet).popen.poll() is None
