from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import CountingServer, Fleet, RedisServer


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
