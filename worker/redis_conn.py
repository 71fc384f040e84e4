"""One Redis client per process, with timeouts so a dead Redis is an error, not a hang."""

from __future__ import annotations

from functools import lru_cache

import redis
import redis.asyncio

from worker.settings import get_settings


def make_redis(url: str) -> redis.Redis:
    """A client for `url` that decodes to str and gives up on a dead server within seconds."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=15,
        health_check_interval=25,
        retry_on_timeout=True,
    )


ASYNC_MAX_CONNECTIONS = 64


def make_async_redis(url: str, timeout_s: float = 15) -> redis.asyncio.Redis:
    """An asyncio client for `url` (the API's waits and probes), with the same timeouts as
    make_redis; `timeout_s` bounds each read and the wait for a free connection.

    Its pool holds at most ASYNC_MAX_CONNECTIONS connections and makes a burst of commands (500
    long-polls re-checking at once) wait for one, rather than fail with "Too many connections"."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=ASYNC_MAX_CONNECTIONS,
        timeout=timeout_s,
        decode_responses=True,
        socket_connect_timeout=min(5, timeout_s),
        socket_timeout=timeout_s,
        health_check_interval=25,
        retry_on_timeout=True,
    )
    return redis.asyncio.Redis(connection_pool=pool)


@lru_cache(maxsize=1)
def get_redis() -> redis.Redis:
    """The process's client for REDIS_URL (redis-py pools are fork-safe)."""
    return make_redis(get_settings().redis_url)
