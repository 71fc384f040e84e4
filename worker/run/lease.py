"""Run leases and the reaper: a run whose worker died resumes within seconds, not after the
broker's visibility timeout.

An executing run holds a lease in Redis (`run:<id>:lease`, value = the holder's token) that its
process's keeper thread (worker/run/keeper.py) renews every `LEASE_TTL_S / 3`; the lease's expiry is
also kept in one sorted set. Every agent worker's main process runs a reaper that ends runs past
their deadline that nobody executes (RunStore.end_overdue), and claims expired leases
(atomically, so several reapers never requeue one run twice) and requeues those runs. A delivery
of a run whose lease is held elsewhere (a late redelivery of the original message) is dropped;
one whose holder is a dead process on this host takes over at once. The lease is taken in the
script that starts the run (RunStore.start) and released in the one that ends it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import redis

from worker import lua
from worker.keys import Keys

LEASE_TTL_S = 10.0
REAP_INTERVAL_S = 2.0
DEADLINE_SCAN_S = 0.5  # how often the reaper looks for runs past their deadline
REAP_CLAIM_S = 30.0  # a claimed run is not reaped again for this long

_RENEW = lua.load("worker/run/lease_renew.lua")

_RELEASE = lua.load("worker/run/lease_release.lua")

# The runs whose lease expiry (by Redis' clock) has passed. KEYS[1] = the leases zset.
_DUE = lua.load("worker/run/lease_due.lua")

# Claims the runs among _DUE's answer whose lease is gone; returns the run ids this call claimed.
# KEYS: the leases zset, then each candidate's lease. ARGV: the claim's length (ms), then the
# candidates' run ids, in KEYS order.
_REAP = lua.load("worker/run/lease_reap.lua")


def new_token() -> str:
    """`host:pid:random`: who holds a lease, and whether that process still lives here."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_is_dead(token: str) -> bool:
    """True when the token's process ran on this host and is gone (or a zombie: a pool child
    whose worker was killed with it waits for an init that may never reap it)."""
    host, _, rest = token.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(int(pid_text))


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] == b"Z"
    except (OSError, IndexError):
        return False  # not Linux, or gone since: the lease's expiry decides


class Leases:
    """Run leases of one fleet."""

    def __init__(self, r: redis.Redis, keys: Keys, ttl_s: float = LEASE_TTL_S) -> None:
        self.r = r
        self.keys = keys
        self.ttl_ms = int(ttl_s * 1000)
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)
        self._due = r.register_script(_DUE)
        self._reap = r.register_script(_REAP)

    def renew(self, run_id: str, token: str) -> bool:
        keys = [self.keys.run_lease(run_id), self.keys.leases()]
        return bool(self._renew(keys=keys, args=[token, self.ttl_ms, run_id]))

    def release(self, run_id: str, token: str) -> None:
        self._release(keys=[self.keys.run_lease(run_id), self.keys.leases()], args=[token, run_id])

    def reap(self) -> list[str]:
        """Claim the runs whose lease expired; the caller requeues them."""
        due = [str(run_id) for run_id in self._due(keys=[self.keys.leases()])]
        if not due:
            return []
        claimed = self._reap(
            keys=[self.keys.leases(), *(self.keys.run_lease(run_id) for run_id in due)],
            args=[int(REAP_CLAIM_S * 1000), *due],
        )
        return [str(run_id) for run_id in claimed]

    def forget(self, run_id: str) -> None:
        self.r.zrem(self.keys.leases(), run_id)


STUCK_DELIVERY_S = 30.0  # a live worker starts a run within milliseconds of taking its message
KOMBU_UNACKED, KOMBU_UNACKED_INDEX = "unacked", "unacked_index"  # kombu's Redis transport


def queued_runs(r: redis.Redis, keys: Keys) -> list[tuple[float, str]]:
    """The runs still queued, as (created_ts, run id), from the queued-runs zset (its members
    are `tenant|created_ts|run id`, written by worker/run/store.py's create script)."""
    found = []
    for member in r.zrange(keys.queued_runs(), 0, -1):
        parts = str(member).rsplit("|", 2)
        if len(parts) == 3:
            try:
                found.append((float(parts[1]), parts[2]))
            except ValueError:
                continue
    return found


def unacked_run_id(raw: str | bytes | None, task_name: str) -> str | None:
    """The run id of a kombu `unacked` entry holding a `task_name` message, else None."""
    try:
        payload = json.loads(raw)[0] if raw else None
        if payload is None or payload.get("headers", {}).get("task") != task_name:
            return None
        return str(json.loads(base64.b64decode(payload["body"]))[0][0])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


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
