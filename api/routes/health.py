"""Liveness and readiness."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import State
from worker.redis_conn import make_redis

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, bool]:
    """200 while the process serves."""
    return {"ok": True}


@router.get("/readyz")
def readyz(state: State) -> JSONResponse:
    """200 when Redis answers, else 503 with the reason."""
    probe = make_redis(state.settings.redis_url)
    probe.connection_pool.connection_kwargs.update(socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        probe.ping()
    except redis.RedisError as exc:
        reason = f"redis unreachable: {type(exc).__name__}"
        return JSONResponse(
            {"ok": False, "error": {"type": "unavailable", "message": reason}}, status_code=503
        )
    finally:
        probe.close()
    return JSONResponse({"ok": True, "redis": "ok"})
