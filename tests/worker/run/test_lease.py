"""Run leases, their keeper thread and the reaper's claims (Redis logic on fakeredis; recovery of
real workers is in tests/worker/run/test_recovery.py)."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import fakeredis
import pytest

from worker.keys import Keys
from worker.run.keeper import RunKeeper
from worker.run.lease import Leases, holder_is_dead, new_token
from worker.run.reaper import lost_deliveries
from worker.run.store import Budgets, RunStore

KEYS = Keys("fleet")
TTL_S = 0.3


@pytest.fixture
def leases(r: fakeredis.FakeRedis) -> Leases:
    return Leases(r, KEYS, ttl_s=TTL_S)


@pytest.fixture
def store(r: fakeredis.FakeRedis) -> Iterator[RunStore]:
    store = RunStore(r, KEYS, lease_ttl_s=TTL_S)
    for run_id in ("r1", "dead", "alive"):
        budgets = Budgets(max_steps=5, max_tool_calls=2, max_seconds=30)
        store.create(run_id, tenant="t1", agent="scripted", input={}, budgets=budgets, metadata={})
    yield store


def test_a_live_holder_keeps_the_run_and_a_second_delivery_is_refused(
    store: RunStore, leases: Leases
) -> None:
    first, second = new_token(), f"otherhost:1:{'a' * 8}"
    assert store.start("r1", first).raw is not None
    assert store.start("r1", second).holder == first
    assert leases.renew("r1", first)
    assert not leases.renew("r1", second)


def test_the_holders_dead_process_on_this_host_is_taken_over_at_once(store: RunStore) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = f"{socket.gethostname()}:{child.pid}:deadbeef"
    assert holder_is_dead(dead)
    assert not holder_is_dead(f"{socket.gethostname()}:{os.getpid()}:alive000")
    assert not holder_is_dead(f"elsewhere:{child.pid}:deadbeef")  # another host: can't tell
    assert store.start("r1", dead).raw is not None
    token = new_token()
    assert store.start("r1", token).holder == dead  # the loop checks the holder, then takes over
    assert store.start("r1", token, takeover=dead).raw is not None


def test_reaper_claims_an_expired_lease_once_and_skips_live_ones(store: RunStore, leases: Leases) -> None:
    store.start("dead", "elsewhere:1:aaaaaaaa")
    store.start("alive", "elsewhere:2:bbbbbbbb")
    assert leases.reap() == []
    time.sleep(0.2)
    leases.renew("alive", "elsewhere:2:bbbbbbbb")
    time.sleep(0.2)
    assert leases.reap() == ["dead"]
    assert leases.reap() == []  # claimed: a second reaper does not requeue it again


def test_release_frees_the_run_for_the_next_execution(store: RunStore, leases: Leases) -> None:
    token = new_token()
    store.start("r1", token)
    leases.release("r1", token)
    assert store.start("r1", "elsewhere:3:cccccccc").raw is not None
    time.sleep(0.35)
    assert leases.reap() == ["r1"]


def test_the_keeper_renews_held_leases_and_releases_them_at_the_end(
    store: RunStore, leases: Leases, r: fakeredis.FakeRedis
) -> None:
    keeper = RunKeeper(leases)
    token = new_token()
    store.start("r1", token)
    with keeper.hold("r1", token) as held:
        time.sleep(TTL_S * 3)  # three TTLs: only renewals keep the lease
        assert r.get(KEYS.run_lease("r1")) == token and not held.lost.is_set()
    assert r.get(KEYS.run_lease("r1")) is None


def test_a_lost_lease_is_reported_to_the_holder(store: RunStore, leases: Leases) -> None:
    keeper = RunKeeper(leases)
    token = new_token()
    store.start("r1", token)
    with keeper.hold("r1", token) as held:
        leases.r.set(KEYS.run_lease("r1"), "elsewhere:4:dddddddd")  # taken over
        assert held.lost.wait(2)


def test_the_keeper_fires_a_watchdog_once_at_its_time_and_not_after_the_hold_ended(
    store: RunStore, leases: Leases
) -> None:
    keeper = RunKeeper(leases)
    fired: list[str] = []
    event = threading.Event()
    store.start("r1", "host:1:a")
    with keeper.hold("r1", "host:1:a") as held:
        keeper.watch(held, time.time() + 0.1, lambda: (fired.append("r1"), event.set()))
        assert event.wait(2)
        time.sleep(0.2)
    store.start("alive", "host:1:b")
    with keeper.hold("alive", "host:1:b") as held:
        keeper.watch(held, time.time() + 0.2, lambda: fired.append("alive"))
    time.sleep(0.4)
    assert fired == ["r1"]


def test_a_forked_child_gets_its_own_keeper_thread(store: RunStore, leases: Leases) -> None:
    keeper = RunKeeper(leases)
    with keeper.hold("r1", "host:1:a"):
        pass
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread did not survive the fork
        try:
            event = threading.Event()
            with keeper.hold("alive", "host:2:b") as held:
                keeper.watch(held, time.time() + 0.05, event.set)
                ok = event.wait(2)
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"


def test_a_zombie_holder_counts_as_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while not holder_is_dead(f"{socket.gethostname()}:{child.pid}:zombie00"):
        assert time.monotonic() < deadline, "the exited, unreaped child never counted as dead"
        time.sleep(0.02)
    assert child.poll() == 0  # it was a zombie until now: exited, not yet reaped


def test_a_failing_watchdog_does_not_stop_the_keeper_renewing_other_leases(
    store: RunStore, leases: Leases, r: fakeredis.FakeRedis
) -> None:
    keeper = RunKeeper(leases)

    def broken() -> None:
        raise RuntimeError("a watchdog that fails")

    store.start("r1", "host:1:a")
    store.start("alive", "host:1:b")
    with keeper.hold("r1", "host:1:a") as held, keeper.hold("alive", "host:1:b") as other:
        keeper.watch(held, time.time() + 0.05, broken)
        time.sleep(TTL_S * 3)
        assert r.get(KEYS.run_lease("alive")) == "host:1:b" and not other.lost.is_set()


def _unacked_entry(run_id: str) -> str:
    """A kombu Redis transport `unacked` value for a run's message, as a worker holds it."""
    body = base64.b64encode(json.dumps([[run_id], {}, {}]).encode()).decode()
    return json.dumps([{"headers": {"task": "fleet.run_agent"}, "body": body}, "", "agents"])


def test_a_queued_run_whose_message_is_nowhere_is_found_once_when_the_queue_is_empty(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    # r1, dead and alive were created just now: none is old enough yet
    assert lost_deliveries(r, KEYS, "fleet.run_agent") == []
    found_now = lost_deliveries(r, KEYS, "fleet.run_agent", min_age_s=-1)
    assert sorted(found_now) == ["alive", "dead", "r1"]
    assert lost_deliveries(r, KEYS, "fleet.run_agent", min_age_s=-1) == []  # claimed once
    for run_id in ("r1", "dead", "alive"):
        r.delete(KEYS.run_redelivery(run_id))
    r.hset("unacked", "tag-1", _unacked_entry("r1"))  # a worker holds r1's message
    store.start("dead", "host:1:x")  # started since: not queued any more
    assert lost_deliveries(r, KEYS, "fleet.run_agent", min_age_s=-1) == ["alive"]
    r.delete(KEYS.run_redelivery("alive"))
    r.rpush("agents", "a message")  # messages still queued: nothing is judged lost
    assert lost_deliveries(r, KEYS, "fleet.run_agent", min_age_s=-1) == []
