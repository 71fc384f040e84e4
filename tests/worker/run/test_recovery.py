"""Fast recovery: a run whose worker's main process dies resumes on another worker within
seconds (leases + reaper), and duplicate deliveries of a run are dropped. Real workers."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from tests.harness import Fleet, RedisServer
from worker.celery_app import make_app, send_run
from worker.publish import Publisher
from worker.settings import Settings

RESUME_BOUND_S = 30.0  # issue 7: a run resumes within 30 s of its worker's death


@pytest.fixture(scope="module")
def fleet2() -> Iterator[Fleet]:
    server = RedisServer()
    # A run here must hold its process while it waits (these tests kill the worker under an
    # executing run); parked runs' crashes are tests/worker/run/test_parked.py's.
    f = Fleet(server, {"runtime": {"park_waits": False}})
    try:
        f.start_api()
        f.start_worker(2)
        f.start_worker(2)
        f.start_tool_worker()
        yield f
    finally:
        f.close()
        server.close()


def ts(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def holder_pid(fleet: Fleet, run_id: str) -> int:
    token = fleet.r.get(f"fleet:run:{run_id}:lease")
    assert token, "the running run holds no lease"
    return int(token.split(":")[1])


def test_run_resumes_on_another_worker_when_its_workers_main_process_dies(fleet2: Fleet) -> None:
    plan = [
        {"tool": "echo", "args": {"n": 1}},
        {"sleep": 3},
        {"tool": "echo", "args": {"n": 2}},
        {"final": "ok"},
    ]
    run = fleet2.submit(input={"plan": plan})
    deadline = time.monotonic() + 20
    while fleet2.get(run["id"])["usage"]["steps"] < 2:
        assert time.monotonic() < deadline, fleet2.logs()
        time.sleep(0.05)
    pid = holder_pid(fleet2, run["id"])
    victim = next(
        p for p in fleet2.procs if p.name == "worker" and pid in {c.pid for c in fleet2.pool_children(p)}
    )
    killed_at = time.time()
    os.killpg(victim.popen.pid, signal.SIGKILL)  # the main process and its pool, at once
    victim.popen.wait(timeout=10)

    done = fleet2.wait(run["id"], timeout=RESUME_BOUND_S + 20)
    assert done["status"] == "succeeded" and done["output"] == "ok"
    assert done["usage"]["steps"] == 4 and done["usage"]["tool_calls"] == 2  # nothing spent twice
    resumed_in = ts(done["finished_at"]) - killed_at
    print(f"run finished {resumed_in:.1f} s after its worker was killed")
    assert resumed_in <= RESUME_BOUND_S, f"resumed after {resumed_in:.1f} s"
    attempts = int(fleet2.r.hget(f"fleet:run:{run['id']}", "attempts") or 0)
    assert attempts == 2
    fleet2.start_worker(2)  # back to two workers for the next test


def test_a_duplicate_delivery_of_a_running_run_is_dropped(fleet2: Fleet) -> None:
    run = fleet2.submit(input={"plan": [{"sleep": 0.2}], "loop": True}, budgets={"max_steps": 12})
    fleet2.wait_status(run["id"], "running")
    publisher = Publisher(make_app(Settings(REDIS_URL=fleet2.redis.url)), fleet2.r)
    for _ in range(3):  # as a late redelivery of the original message would arrive
        send_run(publisher, run["id"], 60)
    done = fleet2.wait(run["id"], timeout=30)
    assert done["status"] == "stopped" and done["stop_reason"] == "max_steps"
    assert done["usage"]["steps"] == 12
    assert [s["step"] for s in done["steps"]] == list(range(1, 13))  # one execution, no step twice
    assert fleet2.r.hget(f"fleet:run:{run['id']}", "attempts") == "1"


def test_a_delivery_of_an_ended_run_is_dropped(fleet2: Fleet) -> None:
    run = fleet2.submit(input={"plan": [{"final": "once"}]})
    done = fleet2.wait(run["id"])
    send_run(Publisher(make_app(Settings(REDIS_URL=fleet2.redis.url)), fleet2.r), run["id"], 60)
    time.sleep(1.5)
    again = fleet2.get(run["id"])
    assert again["finished_at"] == done["finished_at"] and again["output"] == "once"
    assert fleet2.r.hget(f"fleet:run:{run['id']}", "attempts") == "1"
