"""The capacity warning: GET /readyz stays 200 and lists a warning, and `fleet api` logs one at
start, when Redis' maxmemory cannot hold FLEET_MAX_QUEUED queued runs, the live runs and the hot
set (worker/capacity.py). Against a real redis-server whose maxmemory the test sets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import Fleet, RedisServer
from worker.capacity import (
    HEADROOM,
    HOT_RUN_BYTES,
    QUEUED_RUN_BYTES,
    RUNNING_RUN_BYTES,
    ArchiveRate,
    Capacity,
    needed_bytes,
    read_capacity,
)
from worker.keys import Keys
from worker.redis_conn import make_async_redis
from worker.settings import Settings

MAX_QUEUED = 10_000  # the default FLEET_MAX_QUEUED
KEYS = Keys("fleet")


@pytest.fixture(scope="module")
def small_redis() -> Iterator[RedisServer]:
    """A redis-server with maxmemory 1 MiB when the API starts (far below 10,000 queued runs)."""
    server = RedisServer()
    server.client().config_set("maxmemory", str(2**20))
    yield server
    server.close()


@pytest.fixture(scope="module")
def api(small_redis: RedisServer) -> Iterator[Fleet]:
    fleet = Fleet(small_redis)
    fleet.start_api()
    yield fleet
    fleet.close()


def readiness(fleet: Fleet) -> dict[str, object]:
    resp = httpx.get(f"{fleet.url}/readyz", timeout=10)
    assert resp.status_code == 200, resp.text
    body: dict[str, object] = resp.json()
    return body


def test_the_api_logs_the_warning_at_start_when_maxmemory_is_too_small(api: Fleet) -> None:
    text = api.procs[0].text()
    assert "redis capacity" in text
    assert "FLEET_MAX_QUEUED=10000" in text


def test_readyz_stays_200_and_lists_the_warning_while_maxmemory_is_too_small(api: Fleet) -> None:
    api.r.config_set("maxmemory", str(2**20))
    body = readiness(api)
    assert body["ok"] is True and body["redis"] == "ok" and "workers" in body
    warnings = body["warnings"]
    assert isinstance(warnings, list) and len(warnings) == 1
    assert "maxmemory is 1.0 MiB" in warnings[0] and "FLEET_MAX_QUEUED=10000" in warnings[0]


def test_no_warning_without_a_limit_or_with_room_for_the_queue(api: Fleet) -> None:
    api.r.config_set("maxmemory", "0")  # unlimited
    assert readiness(api)["warnings"] == []
    api.r.config_set("maxmemory", str(needed_bytes(MAX_QUEUED, 0, 0) + 2**20))
    assert readiness(api)["warnings"] == []
    api.r.config_set("maxmemory", str(needed_bytes(MAX_QUEUED, 0, 0) - 2**20))
    assert len(readiness(api)["warnings"]) == 1  # type: ignore[arg-type]


def test_needed_bytes_adds_the_states_and_the_headroom() -> None:
    assert needed_bytes(0, 0, 0) == 0
    assert needed_bytes(1000, 0, 0) == round(1000 * QUEUED_RUN_BYTES * HEADROOM)
    assert needed_bytes(0, 10, 100) == round((10 * RUNNING_RUN_BYTES + 100 * HOT_RUN_BYTES) * HEADROOM)
    assert Capacity(0, 10**9, 0, 0).warning() is None  # maxmemory 0: unlimited


def test_archive_rate_is_known_after_a_window_and_follows_the_counter() -> None:
    rate = ArchiveRate(window_s=60)
    assert rate.observe(1000, now=0.0) is None
    assert rate.observe(1300, now=30.0) is None  # the window has not passed
    assert rate.observe(7000, now=60.0) == pytest.approx(100.0)
    assert rate.observe(7600, now=90.0) == pytest.approx(100.0)  # the last full window's rate
    assert rate.observe(10000, now=120.0) == pytest.approx(50.0)
    assert rate.observe(5, now=130.0) == pytest.approx(50.0)  # a counter that went back starts anew
    assert rate.observe(605, now=190.0) == pytest.approx(10.0)


def test_the_hot_set_counts_the_archive_backlog_and_the_archived_rate(small_redis: RedisServer) -> None:
    r = small_redis.client()
    r.config_set("maxmemory", str(2**30))  # room for the test's writes (noeviction refuses them when full)
    r.delete(KEYS.archive_ended(), KEYS.stats_archive())
    r.zadd(KEYS.archive_ended(), {f"{i:032x}": 1.0 for i in range(5)})  # ended, not archived yet
    r.hset(KEYS.stats_archive(), "archived", 100)
    settings = Settings(hot_ttl_s=60)

    async def read_twice() -> tuple[Capacity, Capacity]:
        client = make_async_redis(small_redis.url)
        rate = ArchiveRate(window_s=0.2)
        try:
            first = await read_capacity(client, KEYS, settings, rate)
            r.hincrby(KEYS.stats_archive(), "archived", 50)
            await asyncio.sleep(0.25)
            return first, await read_capacity(client, KEYS, settings, rate)
        finally:
            await client.aclose()

    first, second = asyncio.run(read_twice())
    assert first.hot_runs == 5  # no rate yet: the backlog alone
    # 50 runs in 0.25-0.5 s: 100-200 a second, for 60 s
    assert 5 + 50 * 60 / 0.5 <= second.hot_runs <= 5 + 50 * 60 / 0.25
    assert second.maxmemory == 2**30 and second.max_queued == MAX_QUEUED
    r.delete(KEYS.archive_ended(), KEYS.stats_archive())
