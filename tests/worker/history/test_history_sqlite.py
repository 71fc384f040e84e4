"""The run history's embedded default, SQLite (a file in the fleet's temporary folder), with a
real redis-server and real fleet processes: the same archive path as on PostgreSQL
(tests/worker/history/test_history.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from tests.harness import Fleet, RedisServer
from tests.history_checks import (
    HOT_TTL_S,
    PLAN,
    assert_archived_as_shown,
    assert_served_from_history,
    forget_in_redis,
    wait_archived,
)
from worker.history.db import make_engine


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    redis_server = RedisServer()
    fleet = Fleet(redis_server, {}, {"FLEET_HOT_TTL_S": str(HOT_TTL_S)})
    try:
        fleet.start(workers=1, concurrency=2)
        yield fleet
    finally:
        fleet.close()
        redis_server.close()


@pytest.fixture(scope="module")
def engine(fleet: Fleet) -> Iterator[Engine]:
    engine = make_engine(fleet.env["FLEET_DATABASE_URL"])
    yield engine
    engine.dispose()


def test_runs_are_archived_to_sqlite_and_read_back(fleet: Fleet, engine: Engine) -> None:
    assert fleet.env["FLEET_DATABASE_URL"].startswith("sqlite:///")
    ids = [fleet.submit(input=PLAN, metadata={"batch": i})["id"] for i in range(5)]
    for run_id in ids:
        fleet.wait(run_id)
    wait_archived(fleet, engine, ids)
    shown = {run_id: assert_archived_as_shown(fleet, engine, run_id) for run_id in ids}
    forget_in_redis(fleet, ids[0])
    assert_served_from_history(fleet, ids[0], shown[ids[0]])
