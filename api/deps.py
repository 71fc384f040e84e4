"""What the routes depend on, as `Annotated` aliases: settings, the store, the caller's tenant."""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass, field
from typing import Annotated

import redis
import redis.asyncio
from fastapi import Depends, Header, Request

from api.errors import ApiError
from api.waiter import EndWaiter
from api.waitslots import WaitSlots
from worker.capacity import ArchiveRate
from worker.control.approvals import Approvals
from worker.control.policy import PolicyStore
from worker.control.rollout import Rollouts
from worker.history.db import HistoryDB
from worker.keys import Keys
from worker.publish import Publisher
from worker.run.store import RunStore
from worker.settings import Settings


@dataclass
class AppState:
    """Built once at start (api.main.create_app) and shared by every request."""

    settings: Settings
    r: redis.Redis
    keys: Keys
    store: RunStore
    publisher: Publisher  # sends runs to the agents queue (worker/publish.py)
    tenant_keys: dict[str, str]  # api key -> tenant
    admin_keys: frozenset[str]
    policies: PolicyStore
    approvals: Approvals
    rollouts: Rollouts
    waiter: EndWaiter
    ar: redis.asyncio.Redis  # the event loop's client: waits, and reads of the async routes
    probe: redis.asyncio.Redis  # /readyz: short timeouts, its own connections
    wait_slots: WaitSlots
    metrics_token: str | None
    webhook_tenants: frozenset[str]  # tenants with a webhook secret (FLEET_WEBHOOK_SECRETS)
    history: HistoryDB  # archived runs (worker/history/): read when Redis no longer holds a run
    closing: asyncio.Event = field(default_factory=asyncio.Event)  # set when the server stops
    archive_rate: ArchiveRate = field(default_factory=ArchiveRate)  # the hot set's estimate (/readyz)

    def close_streams(self) -> None:
        """The server stops: end every event stream now (each client resumes with Last-Event-ID
        elsewhere) and answer every long-poll with the run as it is."""
        self.closing.set()
        self.waiter.wake_all()


async def _state(request: Request) -> AppState:  # async: no I/O, so no thread-pool hop
    state: AppState = request.app.state.fleet
    return state


State = Annotated[AppState, Depends(_state)]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme in any case, the token
    stripped), or None when the header is missing, empty or of another form."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def unauthorized(message: str) -> ApiError:
    """A 401 that asks for a bearer token (`WWW-Authenticate: Bearer`)."""
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def _bearer(authorization: str | None) -> str:
    """The request's bearer token; a 401 when it has none."""
    token = bearer_token(authorization)
    if token is None:
        raise unauthorized("use Authorization: Bearer <key>")
    return token


async def _tenant(state: State, authorization: Annotated[str | None, Header()] = None) -> str:
    """The tenant whose API key the request carries; a 401 without one."""
    if not authorization:
        raise unauthorized("missing Authorization: Bearer <key>")
    tenant = _tenant_of(state, _bearer(authorization))
    if tenant is None:
        raise unauthorized("unknown API key")
    return tenant


def _tenant_of(state: AppState, token: str) -> str | None:
    """The tenant whose key `token` is, or None."""
    tenant = None
    for key, owner in state.tenant_keys.items():  # compare every key, in constant time each
        if hmac.compare_digest(key.encode(), token.encode()):
            tenant = owner
    return tenant


Tenant = Annotated[str, Depends(_tenant)]


@dataclass(frozen=True)
class Caller:
    """Who calls a route that tenants and admins share: a tenant's key, or (tenant None) an
    admin key of FLEET_ADMIN_KEYS."""

    tenant: str | None


async def _caller(state: State, authorization: Annotated[str | None, Header()] = None) -> Caller:
    token = _bearer(authorization)
    if is_admin_key(state, token):
        return Caller(None)
    tenant = _tenant_of(state, token)
    if tenant is None:
        raise unauthorized("unknown API key")
    return Caller(tenant)


CallerOf = Annotated[Caller, Depends(_caller)]


async def _admin(state: State, authorization: Annotated[str | None, Header()] = None) -> None:
    token = _bearer(authorization).encode()
    if not any(hmac.compare_digest(key.encode(), token) for key in state.admin_keys):
        raise unauthorized("an admin key is required")


Admin = Annotated[None, Depends(_admin)]


def is_admin_key(state: AppState, key: str | None) -> bool:
    """True when `key` is one of FLEET_ADMIN_KEYS (compared in constant time)."""
    token = (key or "").encode()
    return bool(token) and any(hmac.compare_digest(k.encode(), token) for k in state.admin_keys)
