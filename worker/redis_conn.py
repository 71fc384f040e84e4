"""One Redis client per process, with timeouts so a dead Redis is an error, not a hang."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import unquote, urlsplit

import redis

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
