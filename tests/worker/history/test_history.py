"""The run history with real parts: a redis-server, `fleet api`, an agent worker and a tool
worker, archiving to a real PostgreSQL of the module's own (tests/pg.py).

Ended runs are archived as GET /v1/runs/{id} shows them, their Redis keys get the hot TTL, and
once Redis no longer holds them the API answers from the database; a database that goes away
mid-load loses nothing and archives nothing twice. The module's fleet retries a failed batch
after 0.2 s, doubling up to 2 s, and gives archived runs a hot TTL of 300 s.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine, func, select

from tests.harness import KEY_T1, Fleet, RedisServer, wait_for
from tests.history_checks import (
    HOT_TTL_S,
    KEYS,
    PLAN,
    assert_archived_as_shown,
    assert_served_from_history,
    forget_in_redis,
    wait_archived,
)
from tests.pg import PostgresServer
from worker.history.db import make_engine
from worker.history.schema import run_metadata, run_steps, runs

CONFIG = {"archive": {"retry_min_s": 0.2, "retry_max_s": 2.0}}


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def fleet(pg: PostgresServer) -> Iterator[Fleet]:
    redis_server = RedisServer()
    fleet = Fleet(redis_server, CONFIG, {"FLEET_DATABASE_URL": pg.url, "FLEET_HOT_TTL_S": str(HOT_TTL_S)})
    try:
        fleet.start(workers=1, concurrency=3)
        yield fleet
    finally:
        fleet.close()
        redis_server.close()


@pytest.fixture(scope="module")
def engine(pg: PostgresServer, fleet: Fleet) -> Iterator[Engine]:
    engine = make_engine(pg.url)
    yield engine
    engine.dispose()


# -- tests ---------------------------------------------------------------------------------------------


def test_ended_runs_are_archived_as_the_api_shows_them(fleet: Fleet, engine: Engine) -> None:
    ok = fleet.submit(input=PLAN, metadata={"order": "o-17", "n": 3})["id"]
    failed = fleet.submit(input={"plan": [{"fail": "broken"}]})["id"]
    for run_id in (ok, failed):
        fleet.wait(run_id)
    wait_archived(fleet, engine, [ok, failed])
    shown = assert_archived_as_shown(fleet, engine, ok)
    assert shown["status"] == "succeeded" and len(shown["steps"]) == 1  # the final step logs nothing
    assert assert_archived_as_shown(fleet, engine, failed)["status"] == "failed"
    with engine.connect() as conn:
        meta = dict(
            conn.execute(
                select(run_metadata.c.key, run_metadata.c.value).where(run_metadata.c.run_id == ok)
            ).all()
        )
        positions = list(conn.execute(select(run_steps.c.position).where(run_steps.c.run_id == ok)).scalars())
    assert meta == {"order": '"o-17"', "n": "3"} and positions == [0]
    forget_in_redis(fleet, ok)
    assert_served_from_history(fleet, ok, shown)


def test_a_database_outage_loses_nothing_and_archives_nothing_twice(
    fleet: Fleet, engine: Engine, pg: PostgresServer
) -> None:
    quick = {"plan": [{"final": "ok"}]}
    with fleet.client(KEY_T1) as client:

        def submit(n: int) -> list[str]:
            ids = []
            for _ in range(n):
                answer = client.post("/v1/runs", json={"agent": "scripted", "input": quick})
                assert answer.status_code == 202, answer.text
                ids.append(answer.json()["id"])
            return ids

        first = submit(30)
        wait_archived(fleet, engine, first[:5])  # archiving is under way
        failed_before = int(fleet.r.hget(KEYS.stats_archive(), "failed") or 0)
        pg.stop()
        try:
            later = submit(70)
            for run_id in later:
                fleet.wait(run_id)
            wait_for(
                lambda: int(fleet.r.hget(KEYS.stats_archive(), "failed") or 0) > failed_before,
                15,
                "no batch failed while the database was down",
            )
            pending = [run_id for run_id in later if fleet.r.zscore(KEYS.archive_ended(), run_id) is not None]
            assert len(pending) == len(later), "no run was archived while the database was down"
            for run_id in pending:
                assert fleet.r.ttl(KEYS.run(run_id)) > HOT_TTL_S, "a run not archived keeps its full TTL"
            metrics = httpx.get(f"{fleet.url}/metrics", timeout=10).text
            assert _metric(metrics, "fleet_archive_pending") >= len(later)
            assert _metric(metrics, "fleet_archive_lag_seconds") > 0
        finally:
            pg.start()
    every = first + later
    wait_archived(fleet, engine, every, timeout=60)
    with engine.connect() as conn:
        rows = conn.execute(
            select(func.count(), func.count(runs.c.id.distinct())).where(runs.c.id.in_(every))
        ).one()
    assert tuple(rows) == (100, 100), "every run archived exactly once"
    assert all(0 < fleet.r.ttl(KEYS.run(run_id)) <= HOT_TTL_S for run_id in every)
    metrics = httpx.get(f"{fleet.url}/metrics", timeout=10).text
    assert _metric(metrics, "fleet_archive_lag_seconds") == 0
    assert _metric(metrics, "fleet_runs_archived_total") >= 100
    assert _metric(metrics, "fleet_redis_memory_used_bytes") > 0


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")
