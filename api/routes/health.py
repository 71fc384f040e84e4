"""Liveness and readiness."""

from __future__ import annotations

import asyncio

import redis
from fastapi import APIRouter

from api.deps import AppState, State
from api.errors import FleetJSONResponse
from api.schemas import Readiness
from worker.capacity import read_capacity
from worker.obs.heartbeat import live_workers_async

PROBE_TIMEOUT_S = 2.0

router = APIRouter(tags=["health"])


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
