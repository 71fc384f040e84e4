"""Builds the FastAPI app; `fleet api` serves it with uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
import structlog
from celery import Celery
from fastapi import FastAPI

from api import errors
from api.bodylimit import BodyLimit
from api.deps import AppState
from api.routes import admin, approvals, health, history, metrics, runs
from api.routes.health import capacity_warning
from api.waiter import EndWaiter
from api.waitslots import WaitSlots
from worker.agents import load_plugins
from worker.celery_app import make_app
from worker.control.approvals import Approvals
from worker.control.policy import PolicyStore
from worker.control.rollout import Rollouts
from worker.history.db import HistoryDB
from worker.keys import Keys
from worker.obs import tracing
from worker.publish import Publisher
from worker.redis_conn import async_redis_for, redis_for
from worker.run.ended import end_recorder
from worker.run.store import RunStore
from worker.settings import Settings, get_settings

THREADPOOL_SIZE = 256  # sync routes run in threads; long-polls (?wait) are async and hold none
log = structlog.get_logger("agentfleet.api")


def _sender(settings: Settings) -> Celery:
    """The API's Celery app only sends. No task-sent event: each would publish under Celery's
    process-wide lock on every POST; Flower sees the workers' own events."""
    celery = make_app(settings)
    celery.conf.task_send_sent_event = False
    return celery


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API app; reads settings and API keys now, so a bad setting stops the process at start."""
    settings = settings or get_settings()
    load_plugins(settings.plugins)
    r = redis_for(settings)
    ar = async_redis_for(settings)
    keys = Keys(settings.key_prefix)
    state = AppState(
        settings=settings,
        r=r,
        keys=keys,
        store=RunStore(
            r,
            keys,
            settings.run_ttl_s,
            on_end=end_recorder(r, keys, settings),
            histograms=settings.metrics.histograms,
        ),
        publisher=Publisher(_sender(settings), r),
        tenant_keys=settings.tenant_keys(),
        admin_keys=settings.admin_key_set(),
        policies=PolicyStore(r, keys),
        approvals=Approvals(r, keys, settings.run_ttl_s),
        rollouts=Rollouts(r, keys, settings),
        waiter=EndWaiter(ar, keys.run_ended_channel("*"), keys.run_events_channel("*")),
        ar=ar,
        probe=async_redis_for(settings, timeout_s=1.0),
        wait_slots=WaitSlots(ar, keys, settings.max_waiters_per_tenant),
        metrics_token=settings.metrics_bearer(),
        webhook_tenants=frozenset(settings.tenant_webhook_secrets()),
        history=HistoryDB(settings.history_database_url()),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADPOOL_SIZE
        warning = await capacity_warning(state)
        if warning:
            log.warning("redis capacity", message=warning)
        yield
        await state.waiter.close()
        await state.wait_slots.close()
        state.history.dispose()

    app = FastAPI(
        title="agentfleet",
        version="0.1.0",
        description="Submit, read and cancel agent runs; they execute on Celery workers under budgets.",
        lifespan=lifespan,
        default_response_class=errors.FleetJSONResponse,
    )
    app.state.fleet = state
    errors.install(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(history.router)
    app.include_router(runs.router)
    app.include_router(admin.router)
    app.include_router(approvals.router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    tracing.instrument_api(app)  # a span per request when traces are on (worker/obs/tracing.py)
    return app
