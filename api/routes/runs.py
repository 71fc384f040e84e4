"""/v1/runs: submit, read (with long-poll), stream the events of, and cancel runs."""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any

import anyio.to_thread
import redis
import structlog
from fastapi import APIRouter, Header, Query, Request
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response

from api.deps import AppState, State, Tenant, is_admin_key
from api.errors import ApiError, FleetJSONResponse, validation_message
from api.events import EventStream, archived_end, parse_event_id
from api.idempotency import IdempotencyKey
from api.schemas import ErrorBody, RunOut, RunRequest
from api.waitslots import WaitersFull
from worker.agents import get_agent_class
from worker.celery_app import send_run
from worker.control import killswitch
from worker.history.archive import load_run
from worker.history.db import describe_error
from worker.keys import AGENT_QUEUE
from worker.obs import tracing
from worker.redis_conn import write_durably
from worker.run.events import NAMES as EVENT_NAMES
from worker.run.store import TERMINAL, AdmissionRefused, Budgets, CreateVerdict, public_view
from worker.webhooks import target

router = APIRouter(prefix="/v1/runs", tags=["runs"])
log = structlog.get_logger("agentfleet.api")


def current_trace_id() -> str | None:
    """The request's trace id: OpenTelemetry's when traces are on (the run's spans share it),
    else Sentry's (continued by the run's task) when Sentry is on."""
    import sentry_sdk

    otel = tracing.current_trace_id()
    if otel is not None:
        return otel
    if not sentry_sdk.is_initialized():
        return None
    traceparent = sentry_sdk.get_traceparent() or ""
    return traceparent.split("-")[0] or None


MAX_WAIT_S = 30.0
_RUN_ID_RE = re.compile(r"[0-9a-f]{32}")  # uuid4().hex, as submit_run makes them
WAITERS_RETRY_AFTER_S = 5
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 404, 409, 413, 422, 429, 503)
}


def _budgets(state: AppState, request: RunRequest) -> Budgets:
    """The run's budgets: the fleet's caps, tightened by the request; larger values are a 422."""
    s = state.settings
    caps = {
        "max_steps": (s.max_steps, "AGENT_MAX_STEPS"),
        "max_tool_calls": (s.max_tool_calls, "AGENT_MAX_TOOL_CALLS"),
        "max_seconds": (s.max_seconds, "AGENT_MAX_SECONDS"),
        "max_tokens": (s.max_tokens, "AGENT_MAX_TOKENS"),
        "max_cost_usd": (s.max_cost_usd, "AGENT_MAX_COST_USD"),
    }
    asked = request.budgets.model_dump(exclude_none=True) if request.budgets else {}
    chosen: dict[str, Any] = {}
    for name, (cap, env) in caps.items():
        value = asked.get(name, cap)
        if value > cap:
            raise ApiError(
                422, "invalid_request", f"budgets.{name}: {value} is over the fleet's cap {env}={cap}"
            )
        chosen[name] = value
    return Budgets(**chosen)


def _validate_input(request: RunRequest) -> None:
    agent_cls = get_agent_class(request.agent)
    if agent_cls is None:
        raise ApiError(422, "invalid_request", f"agent: unknown agent {request.agent!r}")
    if agent_cls.input_model is not None:
        try:
            agent_cls.input_model.model_validate(request.input)
        except ValidationError as exc:
            errors = [{**err, "loc": ("input", *err["loc"])} for err in exc.errors()]
            raise ApiError(422, "invalid_request", validation_message(errors)) from None


def _webhook(state: AppState, request: RunRequest, tenant: str) -> str | None:
    """The run's webhook as stored (JSON text), checked against the tenant's allowed hosts and
    secret; a 422 naming the field otherwise."""
    if request.webhook is None:
        return None
    try:
        webhook = request.webhook
        checked = target.check(
            webhook.url, list(webhook.events), tenant, state.settings, state.webhook_tenants
        )
    except target.WebhookRefused as refused:
        raise ApiError(422, "invalid_request", str(refused)) from None
    return checked.to_json()


def _refusal(refused: AdmissionRefused, state: AppState, tenant: str) -> ApiError:
    """503 under a kill switch, 429 with Retry-After when the agents queue or the tenant's share
    of it is full."""
    if refused.reason is CreateVerdict.KILLED:
        message = f"submissions are stopped by a kill switch: {refused.detail}"
        return ApiError(503, "killed", message, {"Retry-After": "30"})
    depth = int(refused.detail)
    retry_after = str(max(1, min(60, depth // 100)))
    if refused.reason is CreateVerdict.TENANT_QUEUE_FULL:
        limit = state.settings.max_queued_per_tenant
        message = f"tenant {tenant} has {depth} runs queued (limit {limit}); retry later"
        return ApiError(429, "tenant_queue_full", message, {"Retry-After": retry_after})
    message = f"{depth} runs are queued (limit {state.settings.max_queued}); retry later"
    return ApiError(429, "queue_full", message, {"Retry-After": retry_after})


def _not_found(run_id: str) -> ApiError:
    # Echo an id only when it has the shape of one: anything else may be large or hostile.
    shown = run_id if _RUN_ID_RE.fullmatch(run_id) else "with that id (run ids are 32 hex characters)"
    return ApiError(404, "not_found", f"no run {shown}")


def _run_response(state: AppState, run_id: str, status_code: int, steps: bool = False) -> FleetJSONResponse:
    raw = state.store.load(run_id)
    if raw is None:
        raise _not_found(run_id)
    body = public_view(raw)
    if steps:
        body["steps"] = state.store.steps(run_id)
    headers = {"Location": f"/v1/runs/{run_id}"} if status_code in (200, 202) else None
    return FleetJSONResponse(body, status_code=status_code, headers=headers)


@router.post("", status_code=202, responses={202: {"model": RunOut}, 200: {"model": RunOut}, **_ERRORS})
def submit_run(
    request: RunRequest,
    state: State,
    tenant: Tenant,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    admin_key: Annotated[str | None, Header(alias="X-Fleet-Admin-Key")] = None,
) -> FleetJSONResponse:
    """Submit a run. With `Idempotency-Key`, a repeat of the same body returns the same run."""
    _validate_input(request)
    budgets = _budgets(state, request)
    webhook = _webhook(state, request, tenant)
    idem = IdempotencyKey.of_request(state.r, state.keys, tenant, idempotency_key, request)
    run_id = uuid.uuid4().hex
    # A repeat of an accepted request gets its run back, even under a kill switch or a full queue.
    if idem is not None and idem.is_claimed():
        return _repeat(state, idem)
    version = _version(state, request, run_id, admin_key)
    if idem is not None and not idem.claim(run_id):
        return _repeat(state, idem)

    switches = killswitch.run_switch_keys(state.keys, tenant, request.agent)
    try:
        record = state.store.create(
            run_id,
            tenant=tenant,
            agent=request.agent,
            input=request.input,
            budgets=budgets,
            metadata=request.metadata,
            version=version,
            trace_id=current_trace_id(),
            traceparent=tracing.current_traceparent(),  # the run's spans are children of this request's
            admission=(AGENT_QUEUE, switches, state.settings.max_queued),  # one round trip
            max_queued_per_tenant=state.settings.max_queued_per_tenant or -1,
            webhook=webhook,
        )
    except AdmissionRefused as refused:
        if idem is not None:
            idem.release()
        raise _refusal(refused, state, tenant) from None
    log.info("run queued", run_id=run_id, tenant=tenant, agent=request.agent, trace_id=record["trace_id"])
    try:
        send_run(state.publisher, run_id, budgets.max_seconds)
    except Exception:
        state.store.finish(
            run_id, "failed", "error", error={"type": "unavailable", "message": "broker unreachable"}
        )
        if idem is not None:
            idem.release()
        raise ApiError(503, "unavailable", "the queue is unreachable; the run was not queued") from None
    _confirm_replicated(state, run_id, idem is not None)
    headers = {"Location": f"/v1/runs/{run_id}"}
    return FleetJSONResponse(public_view(record), status_code=202, headers=headers)  # as written


def _confirm_replicated(state: AppState, run_id: str, keyed: bool) -> None:
    """Wait until `redis.wait_replicas` replicas have the run's record and its queue message (so a
    failover of the primary keeps an accepted run); a 503 with Retry-After when they do not
    confirm within `redis.wait_timeout_ms`. The run stays queued: a retry with the same
    Idempotency-Key gets it back rather than a second run."""
    settings = state.settings
    if settings.wait_replicas <= 0:
        return
    # The write on this connection comes after the message's LPUSH (on Celery's connection), so
    # WAIT covers both; re-setting the run's TTL is a write that changes nothing.
    run_key = state.keys.run(run_id)
    try:
        _, durable = write_durably(
            state.r,
            lambda pipe: pipe.expire(run_key, settings.run_ttl_s),
            settings.wait_replicas,
            settings.redis.wait_timeout_ms,
        )
    except redis.RedisError:
        durable = False
    if durable:
        return
    log.warning("run not confirmed by a replica", run_id=run_id, replicas=settings.wait_replicas)
    retry = "retry with the same Idempotency-Key" if keyed else "retry with an Idempotency-Key"
    message = (
        f"run {run_id} was queued but no replica confirmed it within {settings.redis.wait_timeout_ms} ms, "
        f"so a failover could lose it; {retry}"
    )
    raise ApiError(503, "unavailable", message, {"Retry-After": "1"})


def _version(state: AppState, request: RunRequest, run_id: str, admin_key: str | None) -> str | None:
    """The run's version: pinned by an admin, else the agent's canary split (None: no versions)."""
    if request.version is None:
        return state.rollouts.choose(request.agent, run_id)
    if not is_admin_key(state, admin_key):
        raise ApiError(403, "forbidden", "version: pinning a version needs X-Fleet-Admin-Key")
    if state.rollouts.choose(request.agent, run_id) is None:
        raise ApiError(422, "invalid_request", f"version: agent {request.agent!r} has no versions")
    return request.version


def _repeat(state: AppState, idem: IdempotencyKey) -> FleetJSONResponse:
    """A repeated Idempotency-Key: the same body gets the same run, another body a 409."""
    run_id = idem.earlier_run(lambda earlier: state.store.load(earlier) is not None)
    return _run_response(state, run_id, 200)


def _owned(state: AppState, run_id: str, tenant: str) -> dict[str, str]:
    raw = state.store.load(run_id) if _RUN_ID_RE.fullmatch(run_id) else None
    if raw is None or raw.get("tenant") != tenant:
        raise _not_found(run_id)
    return raw


async def _load_owned(state: AppState, run_id: str, tenant: str) -> dict[str, str]:
    """The run's raw hash, read on the event loop; 404 for a malformed id or another tenant's run.
    (A malformed id never reaches Redis: `<id>:steps` would name the step log, a list.)"""
    raw = await _load_live(state, run_id)
    if raw is None or raw.get("tenant") != tenant:
        raise _not_found(run_id)
    return raw


async def _load_live(state: AppState, run_id: str) -> dict[str, str] | None:
    """The run's raw hash in Redis, or None (a malformed id, or a run Redis no longer holds)."""
    raw = await state.ar.hgetall(state.keys.run(run_id)) if _RUN_ID_RE.fullmatch(run_id) else None
    return {str(k): str(v) for k, v in raw.items()} if raw else None


async def _archived_owned(
    state: AppState, run_id: str, tenant: str, with_steps: bool = False
) -> tuple[dict[str, Any], list[Any]]:
    """A run that Redis no longer holds, from the run history (in a thread: the database driver
    blocks): its record and, when asked, its step log. 404 as for a live run; 503 while the
    history's database does not answer."""
    if not _RUN_ID_RE.fullmatch(run_id):
        raise _not_found(run_id)

    def read() -> tuple[dict[str, Any], list[Any]] | None:
        return load_run(state.history.engine(), run_id, with_steps)

    try:
        found = await anyio.to_thread.run_sync(read)
    except (SQLAlchemyError, OSError) as exc:
        log.warning("run history unreachable", error=describe_error(exc, state.history.url))
        raise ApiError(503, "unavailable", "the run history is unreachable; try again") from None
    if found is None or found[0].get("tenant") != tenant:
        raise _not_found(run_id)
    return found


@router.get("/{run_id}", responses={200: {"model": RunOut}, **_ERRORS})
async def get_run(
    run_id: str,
    request: Request,
    state: State,
    tenant: Tenant,
    wait: Annotated[
        float, Query(ge=0, le=MAX_WAIT_S, description="hold up to S seconds until the run ends")
    ] = 0,
    steps: Annotated[bool, Query(description="include the step log")] = False,
) -> FleetJSONResponse:
    """Read a run; with `?wait=S` the answer waits until the run ends or S seconds pass.

    Async: a wait holds no thread. At most FLEET_MAX_WAITERS_PER_TENANT waits per tenant are open
    at once, fleet-wide; past it, 429 with Retry-After. A run that Redis no longer holds (archived,
    past FLEET_HOT_TTL_S) is read from the run history, at once: it has ended."""
    raw = await _load_live(state, run_id)
    if raw is None:
        record, logged = await _archived_owned(state, run_id, tenant, steps)
        archived = {**record, "steps": logged} if steps else record
        return FleetJSONResponse(archived, status_code=200, headers={"Location": f"/v1/runs/{run_id}"})
    if raw.get("tenant") != tenant:
        raise _not_found(run_id)
    if wait > 0 and raw["status"] not in TERMINAL:
        try:
            async with state.wait_slots.slot(tenant, wait):
                await _wait_for_end(state, request, run_id, wait)
        except WaitersFull as full:
            raise _too_many_waiters(state, tenant, full) from None
        raw = await _load_owned(state, run_id, tenant)
    body = public_view(raw)
    if steps:
        body["steps"] = [
            json.loads(item) for item in await state.ar.lrange(state.keys.run_steps(run_id), 0, -1)
        ]
    return FleetJSONResponse(body, status_code=200, headers={"Location": f"/v1/runs/{run_id}"})


def _too_many_waiters(state: AppState, tenant: str, full: WaitersFull) -> ApiError:
    message = f"tenant {tenant} has {full.held} waits or event streams open (limit {state.wait_slots.limit})"
    return ApiError(429, "too_many_waiters", message, {"Retry-After": str(WAITERS_RETRY_AFTER_S)})


_EVENTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the run's events as Server-Sent Events: `status`, `step`, `approval_requested`, "
        "`approval_decided`, then `end` (the run as GET /v1/runs/{id} shows it), after which it closes",
        # one Server-Sent Event, as a client parses it: `data` is the event's JSON text
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "event": {"type": "string", "enum": sorted(EVENT_NAMES)},
                        "data": {"type": "string"},
                    },
                    "required": ["data"],
                }
            }
        },
    },
    204: {"description": "Last-Event-ID is the run's `end`: there is nothing more (EventSource stops)"},
    # errors are JSON, unlike the stream: name their media type, or FastAPI documents the stream's
    **{
        code: {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
        for code in (401, 404, 422, 429, 503)
    },
}


@router.get("/{run_id}/events", status_code=200, response_class=EventStream, responses=_EVENTS_RESPONSES)
async def run_events(
    run_id: str,
    state: State,
    tenant: Tenant,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", description="resume after this event id")
    ] = None,
) -> Response:
    """Stream the run's events (`text/event-stream`); every event has an `id:`, and a reconnect
    with `Last-Event-ID` gets exactly the events after it.

    Async, like `?wait`: an open stream holds no thread, and counts against
    FLEET_MAX_WAITERS_PER_TENANT with the waits (429 with Retry-After when the tenant's are all
    taken); it frees its slot when it ends or its client disconnects. A run that only the run
    history holds gets its `end` at once (or 204 after it)."""
    raw = await _load_live(state, run_id)
    if raw is None:
        record, _ = await _archived_owned(state, run_id, tenant)
        return archived_end(record, parse_event_id(last_event_id))
    if raw.get("tenant") != tenant:
        raise _not_found(run_id)
    after = parse_event_id(last_event_id)
    try:
        slot = await state.wait_slots.take_kept(tenant)
    except WaitersFull as full:
        raise _too_many_waiters(state, tenant, full) from None
    return EventStream(state, run_id, after, slot)


async def _wait_for_end(state: AppState, request: Request, run_id: str, wait_s: float) -> None:
    """Wait until the run ends, the client goes away (which frees its slot at once) or `wait_s` passes."""
    key = state.keys.run(run_id)

    async def ended() -> bool:
        status = await state.ar.hget(key, "status")
        return status is None or status in TERMINAL

    async def gone() -> None:
        # A GET has no body: what the server receives next is the client's disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    await state.waiter.wait(state.keys.run_ended_channel(run_id), ended, wait_s, gone=gone)


@router.post("/{run_id}/cancel", status_code=202, responses={202: {"model": RunOut}, **_ERRORS})
def cancel_run(run_id: str, state: State, tenant: Tenant) -> FleetJSONResponse:
    """Cancel a run: a queued run ends now; a running one stops at its next check (within 200 ms)."""
    _owned(state, run_id, tenant)
    state.store.cancel(run_id)
    return _run_response(state, run_id, 202)
