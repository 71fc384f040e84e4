"""Liveness and readiness."""

from __future__ import annotations

import redis
from fastapi import APIRouter

from api.deps import State
from api.errors import FleetJSONResponse
from worker.redis_conn import make_redis

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, bool]:
    """200 while the process serves."""
    return {"ok": True}


@router.get("/readyz")
def readyz(state: State) -> FleetJSONResponse:
    """200 when Redis answers, else 503 with the reason."""
    probe = make_redis(state.settings.redis_url)
    probe.connection_pool.connection_kwargs.update(socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        probe.ping()
    except redis.RedisError as exc:
        reason = f"redis unreachable: {type(exc).__name__}"
        return FleetJSONResponse(
            {"ok": False, "error": {"type": "unavailable", "message": reason}}, status_code=503
        )
    finally:
        probe.close()
    return FleetJSONResponse({"ok": True, "redis": "ok"})
