from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest

from tests.harness import CountingServer, FakeOpenAI, Fleet, RedisServer
from worker.keys import Keys
from worker.run.store import RunStore

# The core integration tests: a run's whole path against a real server and real workers (runs,
# tool calls, parked waits, kill switches, budgets, events, approvals, the gateway's fleet-wide
# limits). .ci/run runs them a second time against Valkey (`-m core` with FLEET_TEST_REDIS_SERVER
# naming valkey-server), so the fleet is proven on both servers without running everything twice.
# They are named by file name, wherever they sit under tests/: test file names are unique there.
CORE_MODULES = frozenset(
    {
        "test_smoke.py",
        "test_server.py",
        "test_killswitch.py",
        "test_parked.py",
        "test_gateway_fleet.py",
        "test_budgets.py",
        "test_events.py",
        "test_approvals.py",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).name in CORE_MODULES:
            item.add_marker(pytest.mark.core)


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    """A fakeredis client for unit tests of Redis logic (Lua included)."""
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def store(r: fakeredis.FakeRedis) -> RunStore:
    """The run store on `r`, with the default key prefix."""
    return RunStore(r, Keys("fleet"))


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """The default fleet for a test module: API, one agent worker (4 processes), one tool worker."""
    server = RedisServer()
    f = Fleet(server)
    try:
        f.start(workers=1, concurrency=4)
        yield f
    finally:
        f.close()
        server.close()


@pytest.fixture(scope="module")
def http_server() -> Iterator[CountingServer]:
    server = CountingServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    """A fake OpenAI-compatible server (tests/fake_openai.py) for the module."""
    server = FakeOpenAI()
    try:
        yield server
    finally:
        server.close()
