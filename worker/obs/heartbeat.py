"""Worker liveness: a heartbeat file for container probes, and a Redis record for the fleet.

A Celery bootstep touches the file and refreshes the worker's entry in the `workers` sorted set
every `HEARTBEAT_INTERVAL_S`, on the worker's own timer: a stopped or wedged worker stops
beating. `fleet healthcheck worker` checks the file's age (`celery inspect ping` is no container
probe: it depends on the broker and is heavy). The API's /readyz counts the live workers.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
from celery import bootsteps

from worker.keys import Keys

HEARTBEAT_INTERVAL_S = 5.0
STALE_AFTER_S = 3 * HEARTBEAT_INTERVAL_S


def default_file(kind: str) -> Path:
    """Where a worker of `kind` ("agent" or "tool") beats unless FLEET_HEARTBEAT_FILE says."""
    return Path(
        os.environ.get("FLEET_HEARTBEAT_FILE")
        or Path(tempfile.gettempdir()) / f"fleet-{kind}-worker.heartbeat"
    )


def beat(path: Path, r: redis.Redis | None, keys: Keys, member: str) -> None:
    """Touch the file and the worker's Redis entry; a Redis outage does not stop the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    os.utime(path)
    if r is not None:
        with contextlib.suppress(redis.RedisError):
            r.zadd(keys.workers(), {member: time.time()})


def file_age_s(path: Path) -> float | None:
    """Seconds since the file was touched, or None if it does not exist."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def live_workers(r: redis.Redis, keys: Keys) -> dict[str, int]:
    """Live workers by kind ("agent", "tool"), from heartbeats younger than STALE_AFTER_S."""
    now = time.time()
    r.zremrangebyscore(keys.workers(), "-inf", now - 10 * STALE_AFTER_S)
    return count_kinds(r.zrangebyscore(keys.workers(), now - STALE_AFTER_S, "+inf"))


async def live_workers_async(r: redis.asyncio.Redis, keys: Keys) -> dict[str, int]:
    """live_workers on an asyncio client (the API's /readyz)."""
    now = time.time()
    await r.zremrangebyscore(keys.workers(), "-inf", now - 10 * STALE_AFTER_S)
    return count_kinds(await r.zrangebyscore(keys.workers(), now - STALE_AFTER_S, "+inf"))


def count_kinds(members: list[Any]) -> dict[str, int]:
    """Workers by kind, from `workers` members named `<kind>:<node>`."""
    counts = {"agent": 0, "tool": 0}
    for member in members:
        kind = str(member).split(":", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


class Heartbeat(bootsteps.StartStopStep):
    """Beats on the worker's timer while the worker runs."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.tref: Any = None

    def start(self, worker: Any) -> None:
        from worker.keys import AGENT_QUEUE
        from worker.redis_conn import get_redis
        from worker.settings import get_settings

        queues = set(worker.app.amqp.queues.consume_from or ())
        kind = "agent" if AGENT_QUEUE in queues else "tool"
        path = default_file(kind)
        member = f"{kind}:{worker.hostname}"
        keys = Keys(get_settings().key_prefix)
        r = get_redis()
        beat(path, r, keys, member)
        self.tref = worker.timer.call_repeatedly(
            HEARTBEAT_INTERVAL_S, beat, (path, r, keys, member), priority=10
        )

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
