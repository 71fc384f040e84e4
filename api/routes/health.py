"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.deps import State
from api.errors import FleetJSONResponse
from api.metrics import FleetCollector
from api.schemas import Readiness
from worker.heartbeat import live_workers
from worker.redis_conn import make_redis

router = APIRouter(tags=["health"])
# The error answer is JSON, unlike the metrics: name its media type, or FastAPI documents text/plain.
_METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "Redis is unreachable",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
}


@router.get("/healthz")
def healthz() -> dict[str, bool]:
    """200 while the process serves."""
    return {"ok": True}


@router.get("/readyz", responses={200: {"model": Readiness}, 503: {"model": Readiness}})
def readyz(state: State) -> FleetJSONResponse:
    """200 when Redis answers, else 503 with the reason; reports the live agent and tool workers."""
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
    workers = live_workers(state.r, state.keys)
    return FleetJSONResponse({"ok": True, "redis": "ok", "workers": workers})


@router.get("/metrics", response_class=PlainTextResponse, responses=_METRICS_RESPONSES)
def metrics(state: State) -> PlainTextResponse:
    """Prometheus metrics of the whole fleet, read from Redis."""
    registry = CollectorRegistry()
    registry.register(FleetCollector(state.r, state.keys))
    return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
