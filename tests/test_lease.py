"""Run leases and the reaper's claims (Redis logic on fakeredis; recovery of real workers is in
tests/test_recovery.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import fakeredis
import pytest

from worker.keys import Keys
from worker.lease import Leases, holder_is_dead, new_token

KEYS = Keys("fleet")


@pytest.fixture
def leases() -> Leases:
    return Leases(fakeredis.FakeRedis(decode_responses=True), KEYS, ttl_s=0.3)


def test_a_live_holder_keeps_the_run_and_a_second_delivery_is_refused(leases: Leases) -> None:
    first, second = new_token(), f"otherhost:1:{'a' * 8}"
    assert leases.acquire("r1", first)
    assert not leases.acquire("r1", second)
    assert leases.renew("r1", first)
    assert not leases.renew("r1", second)


def test_the_holders_dead_process_on_this_host_is_taken_over_at_once(leases: Leases) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = f"{socket.gethostname()}:{child.pid}:deadbeef"
    assert holder_is_dead(dead)
    assert not holder_is_dead(f"{socket.gethostname()}:{os.getpid()}:alive000")
    assert not holder_is_dead(f"elsewhere:{child.pid}:deadbeef")  # another host: can't tell
    assert leases.acquire("r1", dead)
    assert leases.acquire("r1", new_token())


def test_reaper_claims_an_expired_lease_once_and_skips_live_ones(leases: Leases) -> None:
    leases.acquire("dead", "elsewhere:1:aaaaaaaa")
    leases.acquire("alive", "elsewhere:2:bbbbbbbb")
    assert leases.reap() == []
    time.sleep(0.2)
    leases.renew("alive", "elsewhere:2:bbbbbbbb")
    time.sleep(0.2)
    assert leases.reap() == ["dead"]
    assert leases.reap() == []  # claimed: a second reaper does not requeue it again


def test_release_frees_the_run_for_the_next_execution(leases: Leases) -> None:
    token = new_token()
    leases.acquire("r1", token)
    leases.release("r1", token)
    assert leases.acquire("r1", "elsewhere:3:cccccccc")
    time.sleep(0.35)
    assert leases.reap() == ["r1"]


def test_a_lost_lease_is_reported_to_the_holder(leases: Leases) -> None:
    token = new_token()
    leases.acquire("r1", token)
    with leases.held("r1", token) as lost:
        leases.r.set(KEYS.run_lease("r1"), "elsewhere:4:dddddddd")  # taken over
        deadline = time.monotonic() + 2
        while not lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lost.is_set()
