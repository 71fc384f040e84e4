"""One Redis client per process, with timeouts so a dead Redis is an error, not a hang."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio

from worker.settings import Settings, get_settings, masked_url

CHECK_TIMEOUT_S = 2.0


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


def password_problem(settings: Settings) -> str | None:
    """Why Redis refuses this process's password (or its lack of one), else None.

    A Redis that does not answer is no problem here: the processes wait for it as before. The
    message names the password's source, never the password.
    """
    url = settings.redis_url
    client = redis.Redis.from_url(url, socket_connect_timeout=CHECK_TIMEOUT_S, socket_timeout=CHECK_TIMEOUT_S)
    try:
        client.ping()
        return None
    except (redis.AuthenticationError, redis.exceptions.AuthenticationWrongNumberOfArgsError) as exc:
        reason = str(exc).strip().rstrip(".")
    except redis.ResponseError as exc:
        if not str(exc).startswith(("NOAUTH", "WRONGPASS")):
            return None
        reason = str(exc).strip().rstrip(".")
    except redis.RedisError:
        return None
    finally:
        client.close()
    password = urlsplit(url).password
    if password:
        reason = reason.replace(unquote(password), "***")
    source = settings.redis_password_source
    if source is None:
        return (
            f"Redis at {masked_url(url)} needs a password: put it in REDIS_URL or in "
            "/run/secrets/redis_password (or the file named by FLEET_REDIS_PASSWORD_FILE)"
        )
    return f"Redis at {masked_url(url)} refused the password from {source} ({reason})"
