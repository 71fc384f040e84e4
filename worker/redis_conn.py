"""One Redis client per process, with timeouts so a dead Redis is an error, not a hang."""

from __future__ import annotations

from functools import lru_cache

import redis

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


@lru_cache(maxsize=1)
def get_redis() -> redis.Redis:
    """The process's client for REDIS_URL (redis-py pools are fork-safe)."""
    return make_redis(get_settings().redis_url)
