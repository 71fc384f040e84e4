"""One Redis client per process, with timeouts so a dead Redis is an error, not a hang.

Every client of the fleet comes from here, so every client follows a Sentinel failover: with a
`redis+sentinel://` REDIS_URL a client asks the Sentinels for the primary, and asks again when a
connection to it fails or the old primary answers READONLY (it was demoted to a replica).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from worker.settings import (
    SentinelURL,
    Settings,
    get_settings,
    is_sentinel_url,
    masked_url,
    parse_sentinel_url,
)

CHECK_TIMEOUT_S = 2.0
SENTINEL_TIMEOUT_S = 1.0  # one Sentinel's answer (a dead one is skipped for the next)
ASYNC_MAX_CONNECTIONS = 64


def _sentinel_kwargs(sentinel_password: str | None) -> dict[str, Any]:
    """How a client talks to the Sentinels themselves: short timeouts, their own password."""
    kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
    }
    if sentinel_password:
        kwargs["password"] = sentinel_password
    return kwargs


def _node_kwargs(target: SentinelURL) -> dict[str, Any]:
    """How a client authenticates to the data nodes (the primary) of a Sentinel URL."""
    kwargs: dict[str, Any] = {"db": target.db}
    if target.password is not None:
        kwargs["password"] = target.password
    if target.username is not None:
        kwargs["username"] = target.username
    return kwargs


def make_redis(
    url: str,
    *,
    sentinel_password: str | None = None,
    timeout_s: float = 15,
    connect_timeout_s: float = 5,
) -> redis.Redis:
    """A client for `url` (redis://, rediss://, unix:// or redis+sentinel://) that decodes to str
    and gives up on a dead server within seconds; on Sentinel it follows the primary."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": connect_timeout_s,
        "socket_timeout": timeout_s,
        "health_check_interval": 25,
        "retry_on_timeout": True,
    }
    if is_sentinel_url(url):
        target = parse_sentinel_url(url)
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(sentinel_password)
        )
        client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
            target.master, **options, **_node_kwargs(target)
        )
        return client
    return redis.Redis.from_url(url, **options)


class _BlockingSentinelPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """The Sentinel's pool for the primary, that waits for a free connection like
    BlockingConnectionPool rather than failing with "Too many connections"."""


def make_async_redis(
    url: str, timeout_s: float = 15, *, sentinel_password: str | None = None
) -> redis.asyncio.Redis:
    """An asyncio client for `url` (the API's waits and probes), with the same timeouts as
    make_redis; `timeout_s` bounds each read and the wait for a free connection.

    Its pool holds at most ASYNC_MAX_CONNECTIONS connections and makes a burst of commands (500
    long-polls re-checking at once) wait for one, rather than fail with "Too many connections"."""
    options: dict[str, Any] = {
        "max_connections": ASYNC_MAX_CONNECTIONS,
        "timeout": timeout_s,
        "decode_responses": True,
        "socket_connect_timeout": min(5, timeout_s),
        "socket_timeout": timeout_s,
        "health_check_interval": 25,
        "retry_on_timeout": True,
    }
    if is_sentinel_url(url):
        target = parse_sentinel_url(url)
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(sentinel_password)
        )
        client: redis.asyncio.Redis = sentinel.master_for(
            target.master, connection_pool_class=_BlockingSentinelPool, **options, **_node_kwargs(target)
        )
        return client
    pool = redis.asyncio.BlockingConnectionPool.from_url(url, **options)
    return redis.asyncio.Redis(connection_pool=pool)


def redis_for(settings: Settings, **kwargs: Any) -> redis.Redis:
    """make_redis for the process's REDIS_URL, with the Sentinels' password from settings."""
    return make_redis(settings.redis_url, sentinel_password=settings.sentinel_password(), **kwargs)


def async_redis_for(settings: Settings, timeout_s: float = 15) -> redis.asyncio.Redis:
    """make_async_redis for the process's REDIS_URL, with the Sentinels' password from settings."""
    return make_async_redis(settings.redis_url, timeout_s, sentinel_password=settings.sentinel_password())


@lru_cache(maxsize=1)
def get_redis() -> redis.Redis:
    """The process's client for REDIS_URL (redis-py pools are fork-safe)."""
    return redis_for(get_settings())


def sentinel_password_problem(settings: Settings) -> str | None:
    """Why a Sentinel refuses this process's Sentinel password (or its lack of one), else None.

    redis-py takes a Sentinel that refuses the password for one that is down (it tries the next,
    then reports no primary), so each Sentinel is asked here; one that does not answer is no
    problem. The message names the password's setting, never the password."""
    target = settings.sentinel
    if target is None:
        return None
    password = settings.sentinel_password()
    for host, port in target.sentinels:
        client = redis.Redis(
            host=host,
            port=port,
            password=password,
            socket_connect_timeout=CHECK_TIMEOUT_S,
            socket_timeout=CHECK_TIMEOUT_S,
        )
        try:
            client.ping()
        except (redis.AuthenticationError, redis.exceptions.AuthenticationWrongNumberOfArgsError):
            break
        except redis.ResponseError as exc:
            if str(exc).startswith(("NOAUTH", "WRONGPASS")):
                break
        except redis.RedisError:
            pass
        finally:
            client.close()
    else:
        return None
    if password is None:
        return (
            f"Sentinel {host}:{port} needs a password: set FLEET_REDIS_SENTINEL_PASSWORD, "
            "FLEET_REDIS_SENTINEL_PASSWORD_FILE or /run/secrets/redis_sentinel_password"
        )
    return (
        f"Sentinel {host}:{port} refused the Sentinel password (FLEET_REDIS_SENTINEL_PASSWORD, "
        "its _FILE or /run/secrets/redis_sentinel_password)"
    )


def password_problem(settings: Settings) -> str | None:
    """Why Redis refuses this process's password (or its lack of one), else None.

    A Redis that does not answer is no problem here: the processes wait for it as before. The
    message names the password's source, never the password.
    """
    url = settings.redis_url
    refused = sentinel_password_problem(settings)
    if refused:
        return refused
    client = redis_for(settings, timeout_s=CHECK_TIMEOUT_S, connect_timeout_s=CHECK_TIMEOUT_S)
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


def write_durably(
    r: redis.Redis, write: Callable[[Any], object], replicas: int, timeout_ms: int
) -> tuple[list[Any], bool]:
    """Run `write` (given a pipeline, or with 0 replicas the client itself), then WAIT until
    `replicas` replicas have it, in one round trip on one connection. WAIT covers the last write
    of its own connection, and the replication stream is ordered, so it covers every write that
    any connection made before too.

    Returns the write's results and whether enough replicas acknowledged within `timeout_ms`
    (always True for 0 replicas: a plain Redis, or redis.wait_replicas 0)."""
    if replicas <= 0:
        return [write(r)], True
    with r.pipeline(transaction=False) as pipe:
        write(pipe)
        pipe.execute_command("WAIT", replicas, timeout_ms)  # type: ignore[no-untyped-call, unused-ignore]
        results = pipe.execute()
    return results[:-1], int(results[-1]) >= replicas
