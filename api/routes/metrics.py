"""/metrics: the fleet's Prometheus metrics, read from Redis at scrape time (api/metrics.py)."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.deps import State, bearer_token, unauthorized
from api.metrics import FleetCollector, known_models

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


@router.get("/metrics", response_class=PlainTextResponse, responses=_METRICS_RESPONSES)
def metrics(state: State, authorization: Annotated[str | None, Header()] = None) -> PlainTextResponse:
    """Prometheus metrics of the whole fleet, read from Redis. Tenant names are in its labels, so
    with FLEET_METRICS_TOKEN set it asks for `Authorization: Bearer <that token>` (else 401)."""
    if state.metrics_token:
        given = (bearer_token(authorization) or "").encode()
        if not hmac.compare_digest(given, state.metrics_token.encode()):
            raise unauthorized("/metrics needs Authorization: Bearer <FLEET_METRICS_TOKEN>")
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
