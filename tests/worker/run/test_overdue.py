"""A run whose worker died never outlives its max_seconds by more than a few seconds, even when
no worker is free to resume it: the reaper ends it as stopped / max_seconds. Real workers."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.harness import Fleet, Proc, RedisServer
from worker.run.lease import LEASE_TTL_S

OVERRUN_BOUND_S = 3.0  # the reaper scans every 0.5 s; the rest is slack for a loaded machine


@pytest.fixture(scope="module")
def busy_fleet() -> Iterator[Fleet]:
    """Two agent workers with one process each; one of them stays busy with a 55 s run."""
    server = RedisServer()
    # A run here must hold its process while it waits (these tests kill the worker under an
    # executing run); parked runs' crashes are tests/worker/run/test_parked.py's.
    f = Fleet(server, {"runtime": {"park_waits": False}})
    try:
        f.start_api()
        f.start_worker(1)
        f.start_worker(1)
        busy = f.submit(input={"plan": [{"sleep": 55}]}, budgets={"max_seconds": 60})
        f.wait_status(busy["id"], "running")
        yield f
    finally:
        f.close()
        server.close()


def run_seconds(run: dict[str, Any]) -> float:
    started = datetime.fromisoformat(run["started_at"])
    finished = datetime.fromisoformat(run["finished_at"])
    return (finished - started).total_seconds()


def kill_the_worker_of(fleet: Fleet, run_id: str) -> float:
    """SIGKILL the main process and pool of the worker executing `run_id`; returns the run's
    deadline (unix s), which must still be ahead."""
    token = fleet.r.get(f"fleet:run:{run_id}:lease")
    assert token, "the running run holds no lease"
    pid = int(token.split(":")[1])
    alive = [p for p in fleet.procs if p.name == "worker" and p.popen.poll() is None]
    victim: Proc = next(p for p in alive if pid in {c.pid for c in fleet.pool_children(p)})
    deadline = float(fleet.r.zscore("fleet:deadlines", run_id) or 0)
    assert time.time() < deadline, "the run's deadline passed before its worker was killed"
    os.killpg(victim.popen.pid, signal.SIGKILL)
    victim.popen.wait(timeout=10)
    return deadline


def test_a_run_whose_worker_died_ends_at_max_seconds_though_no_worker_is_free(busy_fleet: Fleet) -> None:
    # Its deadline comes before its lease would expire: the reaper sees the holder is dead.
    run = busy_fleet.submit(input={"plan": [{"sleep": 30}, {"final": "never"}]}, budgets={"max_seconds": 5})
    busy_fleet.wait_status(run["id"], "running")
    kill_the_worker_of(busy_fleet, run["id"])

    done = busy_fleet.wait(run["id"], timeout=30)
    assert (done["status"], done["stop_reason"]) == ("stopped", "max_seconds"), done
    assert run_seconds(done) <= 5 + OVERRUN_BOUND_S, f"ended {run_seconds(done):.2f} s after its start"
    assert busy_fleet.r.hget(f"fleet:run:{run['id']}", "attempts") == "1"  # never resumed
    assert busy_fleet.r.zscore("fleet:deadlines", run["id"]) is None


def test_a_requeued_run_waiting_behind_a_busy_worker_ends_at_max_seconds(busy_fleet: Fleet) -> None:
    # Its lease expires first: the reaper requeues it, the only worker is busy, its deadline passes
    # while it waits in the queue.
    busy_fleet.start_worker(1)
    max_seconds = LEASE_TTL_S + 4
    plan = [{"sleep": 30}, {"final": "never"}]
    run = busy_fleet.submit(input={"plan": plan}, budgets={"max_seconds": max_seconds})
    busy_fleet.wait_status(run["id"], "running")
    kill_the_worker_of(busy_fleet, run["id"])

    done = busy_fleet.wait(run["id"], timeout=max_seconds + 30)
    assert (done["status"], done["stop_reason"]) == ("stopped", "max_seconds"), done
    seconds = run_seconds(done)
    assert seconds <= max_seconds + OVERRUN_BOUND_S, f"ended {seconds:.2f} s after its start"
    assert busy_fleet.r.hget(f"fleet:run:{run['id']}", "attempts") == "1"  # never resumed
