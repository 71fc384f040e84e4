"""The reaper, in every agent worker's main process: ends runs past their deadline that nobody
executes (RunStore.end_overdue), requeues runs whose lease expired (worker/run/lease.py), and
requeues queued runs whose delivery is stuck with a dead worker or was lost with a Redis restart."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from worker.keys import Keys
from worker.run.lease import REAP_CLAIM_S, Leases
from worker.run.store import queued_runs
from worker.run.unacked import KOMBU_UNACKED, KOMBU_UNACKED_INDEX, unacked_run_id

REAP_INTERVAL_S = 2.0
DEADLINE_SCAN_S = 0.5  # how often the reaper looks for runs past their deadline
STUCK_DELIVERY_S = 30.0  # a live worker starts a run within milliseconds of taking its message


def stuck_deliveries(
    r: redis.Redis, keys: Keys, task_name: str, min_age_s: float = STUCK_DELIVERY_S
) -> list[str]:
    """Runs still queued whose message a worker took more than `min_age_s` ago: that worker died
    before it started them (they hold no lease yet). Each is claimed once, for a few minutes."""
    tags = r.zrangebyscore(KOMBU_UNACKED_INDEX, "-inf", time.time() - min_age_s, start=0, num=200)
    if not tags:
        return []
    found = []
    for raw in r.hmget(KOMBU_UNACKED, [str(tag) for tag in tags]):
        run_id = unacked_run_id(raw, task_name)
        if run_id is None:
            continue
        if r.hget(keys.run(run_id), "status") == "queued" and r.set(
            keys.run_redelivery(run_id), "1", nx=True, ex=int(REAP_CLAIM_S * 10)
        ):
            found.append(run_id)
    return found


def lost_deliveries(
    r: redis.Redis, keys: Keys, task_name: str, queue: str = "agents", min_age_s: float = STUCK_DELIVERY_S
) -> list[str]:
    """Runs still queued after `min_age_s` whose message is nowhere: the agents queue is empty
    and no worker holds it unacked. kombu takes a message off the list and records it as unacked
    in two steps; a Redis that stops between them (a restart, a failover) loses it, and the run
    would stay queued for ever. Each is claimed once, for a few minutes, like stuck_deliveries'.
    Looked for only while the queue is empty (one LLEN otherwise): then every queued run's
    message must be unacked somewhere."""
    if r.llen(queue) > 0:
        return []
    before = time.time() - min_age_s
    old = [run_id for created, run_id in queued_runs(r, keys) if created < before]
    if not old:
        return []
    held = {unacked_run_id(raw, task_name) for raw in r.hvals(KOMBU_UNACKED)}
    found = []
    for run_id in old:
        if run_id in held or r.hget(keys.run(run_id), "status") != "queued":
            continue
        if r.set(keys.run_redelivery(run_id), "1", nx=True, ex=int(REAP_CLAIM_S * 10)):
            found.append(run_id)
    return found


def reaper_loop(
    leases: Leases,
    requeue: Callable[[str], None],
    stop: threading.Event,
    end_overdue: Callable[[], object] = lambda: None,
    task_name: str = "fleet.run_agent",
) -> None:
    """Every DEADLINE_SCAN_S, end the runs past their deadline that nobody executes; every
    REAP_INTERVAL_S, requeue the runs whose lease expired, the queued runs whose delivery is
    stuck with a dead worker, and those whose message was lost (runs until `stop` is set)."""
    next_reap = time.monotonic() + REAP_INTERVAL_S
    while not stop.wait(DEADLINE_SCAN_S):
        try:
            end_overdue()
            if time.monotonic() < next_reap:
                continue
            next_reap = time.monotonic() + REAP_INTERVAL_S
            for run_id in leases.reap():
                requeue(run_id)
            for run_id in stuck_deliveries(leases.r, leases.keys, task_name):
                requeue(run_id)
            for run_id in lost_deliveries(leases.r, leases.keys, task_name):
                requeue(run_id)
        except Exception:  # a broken Redis or broker: try again next round
            time.sleep(REAP_INTERVAL_S)
