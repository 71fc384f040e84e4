"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Header
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.deps import AppState, State
from api.errors import ApiError, FleetJSONResponse
from api.metrics import FleetCollector, known_models
from api.schemas import Readiness
from worker.capacity import read_capacity
from worker.heartbeat import live_workers_async

PROBE_TIMEOUT_S = 2.0

router = APIRouter(tags=["health"])
# The error answer is JSON, unlike the metrics: name its media type, or FastAPI documents text/plain.
_METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "FLEET_METRICS_TOKEN is set and the request does not carry it",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    },
    503: {
        "description": "Redis is unreachable",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    },
}


@router.get("/healthz")
async def healthz() -> dict[str, bool]:
    """200 while the process serves; async, so it answers on the event loop with no thread free."""
    return {"ok": True}


@router.get("/readyz", responses={200: {"model": Readiness}, 503: {"model": Readiness}})
async def readyz(state: State) -> FleetJSONResponse:
    """200 when Redis answers, else 503 with the reason; reports the live agent and tool workers
    and `warnings` that do not make it unready (Redis' maxmemory too small, worker/capacity.py).

    Async on a client of its own with 1 s timeouts, so neither waiting requests nor a dead Redis
    keep a probe from answering within seconds."""
    try:
        await asyncio.wait_for(state.probe.ping(), PROBE_TIMEOUT_S)
        workers = await live_workers_async(state.probe, state.keys)
    except (redis.RedisError, OSError, TimeoutError) as exc:
        reason = f"redis unreachable: {type(exc).__name__}"
        return FleetJSONResponse(
            {"ok": False, "error": {"type": "unavailable", "message": reason}}, status_code=503
        )
    found = await capacity_warning(state)
    return FleetJSONResponse(
        {"ok": True, "redis": "ok", "workers": workers, "warnings": [found] if found else []}
    )


async def capacity_warning(state: AppState) -> str | None:
    """The capacity warning, or None; also None when Redis will not tell (a managed Redis may
    refuse INFO): a warning must not make the probe fail."""
    try:
        capacity = await asyncio.wait_for(
            read_capacity(state.probe, state.keys, state.settings, state.archive_rate), PROBE_TIMEOUT_S
        )
    except (redis.RedisError, OSError, TimeoutError):
        return None
    return capacity.warning()


@router.get("/metrics", response_class=PlainTextResponse, responses=_METRICS_RESPONSES)
def metrics(state: State, authorization: Annotated[str | None, Header()] = None) -> PlainTextResponse:
    """Prometheus metrics of the whole fleet, read from Redis. Tenant names are in its labels, so
    with FLEET_METRICS_TOKEN set it asks for `Authorization: Bearer <that token>` (else 401)."""
    if state.metrics_token:
        token = (authorization or "").partition(" ")
        given = token[2].strip().encode() if token[0].lower() == "bearer" else b""
        if not hmac.compare_digest(given, state.metrics_token.encode()):
            raise ApiError(
                401, "unauthorized", "/metrics needs Authorization: Bearer <FLEET_METRICS_TOKEN>",
                {"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
    registry = CollectorRegistry()
    collector = FleetCollector(
        state.r,
        state.keys,
        tenants=state.tenant_keys.values(),
        models=known_models(state.settings),
        max_seconds=state.settings.max_seconds,
    )
    registry.register(collector)
    return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
