from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest

from tests.harness import CountingServer, FakeOpenAI, Fleet, RedisServer
from worker.keys import Keys
from worker.run.store import RunStore


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
