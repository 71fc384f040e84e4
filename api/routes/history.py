"""The run history: list a tenant's ended runs (`GET /v1/runs`), sum its usage (`GET /v1/usage`)
and delete a run for good (`DELETE /v1/runs/{id}`). The queries: worker/history/query.py."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, BeforeValidator, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import QueryParams

from api.deps import CallerOf, State, Tenant
from api.errors import ApiError, FleetJSONResponse
from api.routes.runs import _ERRORS, _RUN_ID_RE, _not_found
from api.schemas import ErrorBody, RunOut
from worker.history import query
from worker.run.erase import erase_run
from worker.run.store import TERMINAL

router = APIRouter(tags=["history"])

EndedStatus = Literal["succeeded", "stopped", "failed", "cancelled"]
StopReason = Literal[
    "finish",
    "max_steps",
    "max_tool_calls",
    "max_seconds",
    "max_tokens",
    "max_cost",
    "killed",
    "cancelled",
    "error",
]


def _iso_day(value: Any) -> Any:
    """Only `YYYY-MM-DD` is a day here (pydantic would also take unix seconds, which the schema
    does not promise)."""
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("a UTC day as YYYY-MM-DD")
    return value


IsoDay = Annotated[date, BeforeValidator(_iso_day)]
# ISO 8601 with a zone, or unix seconds (pydantic reads most numbers as a datetime already; a float
# it could not, such as 1e5, arrives as a float).
Moment = AwareDatetime | float
METADATA_PREFIX = "metadata."
USAGE_DAYS = 30  # the default span of GET /v1/usage, ending today (UTC)
_NAME = r"^[A-Za-z0-9_.:-]{1,200}$"
_HISTORY_ERRORS: dict[int | str, dict[str, Any]] = {
    **{code: spec for code, spec in _ERRORS.items() if code in (401, 422)},
    503: {"model": ErrorBody, "description": "the run history's database is unreachable"},
}


class RunsPage(BaseModel):
    """A page of the tenant's ended runs, newest first."""

    runs: list[RunOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last")


class UsageRow(BaseModel):
    """What one agent, day or model (the field named by group_by) spent."""

    agent: str | None = None
    day: str | None = Field(None, description="YYYY-MM-DD, the UTC day the runs ended")
    model: str | None = Field(None, description='"" is what no model spent: steps and tool calls')
    steps: int
    tool_calls: int
    tokens: int
    cost_usd: float


class UsageTotal(BaseModel):
    steps: int
    tool_calls: int
    tokens: int
    cost_usd: float


class UsageOut(BaseModel):
    tenant: str | None = Field(description="null: every tenant's (an admin key without ?tenant=)")
    from_: date = Field(alias="from")
    to: date
    group_by: Literal["agent", "day", "model"]
    usage: list[UsageRow]
    total: UsageTotal


def _unavailable() -> ApiError:
    return ApiError(503, "unavailable", "the run history is unreachable; try again", {"Retry-After": "5"})


def _metadata_filters(params: QueryParams) -> dict[str, str]:
    """The `metadata.<key>=<value>` query parameters as key -> value; a key given twice, or a bare
    `metadata`, is a 422 naming it."""
    filters: dict[str, str] = {}
    for name, value in params.multi_items():
        if name == "metadata":
            raise ApiError(422, "invalid_request", "metadata: filter with metadata.<key>=<value>")
        if not name.startswith(METADATA_PREFIX):
            continue
        key = name[len(METADATA_PREFIX) :]
        if key in filters:
            raise ApiError(422, "invalid_request", f"{name[:50]}: given twice; a key has one value")
        filters[key] = value
    return filters


def _instant(value: datetime | float | None, param: str) -> datetime | None:
    """A `since` / `until` as a datetime; unix seconds out of range are a 422 naming it."""
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise ApiError(422, "invalid_request", f"{param}: unix seconds out of range") from None


@router.get("/v1/runs", responses={200: {"model": RunsPage}, **_HISTORY_ERRORS})
def list_runs(
    request: Request,
    state: State,
    tenant: Tenant,
    agent: Annotated[str | None, Query(pattern=_NAME, description="runs of this agent")] = None,
    status: Annotated[EndedStatus | None, Query(description="runs that ended so")] = None,
    stop_reason: Annotated[StopReason | None, Query(description="runs that stopped for this reason")] = None,
    since: Annotated[
        Moment | None, Query(description="created at or after: ISO 8601 with a zone, or unix seconds")
    ] = None,
    until: Annotated[
        Moment | None, Query(description="created before: ISO 8601 with a zone, or unix seconds")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=query.MAX_LIMIT, description="runs per page")] = query.DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the page before")] = None,
) -> FleetJSONResponse:
    """The tenant's ended runs, newest first, as `GET /v1/runs/{id}` shows them, a page at a time.

    A run is listed once it has ended and been archived (within seconds of its end); queued and
    running runs are not. Filters combine with AND. `metadata.<key>=<value>` (any number, up to
    10) matches the run's metadata value: `<value>` read as JSON when it parses (`2`, `true`,
    `"2"`), else as a string (`gold` matches `"gold"`). Unix seconds above 2e10 are read as
    milliseconds. A cursor not from this API is a 422."""
    try:
        records, next_cursor = query.list_runs(
            state.history.engine(),
            tenant,
            agent=agent,
            status=status,
            stop_reason=stop_reason,
            since=_instant(since, "since"),
            until=_instant(until, "until"),
            metadata=_metadata_filters(request.query_params),
            limit=limit,
            cursor=cursor,
        )
    except query.QueryError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    except SQLAlchemyError:
        raise _unavailable() from None
    return FleetJSONResponse({"runs": records, "next_cursor": next_cursor})


def _usage_days(from_: date | None, to: date | None) -> tuple[date, date]:
    """The days asked, with the defaults: to today (UTC), from USAGE_DAYS days before `to`."""
    end = to or datetime.now(UTC).date()
    if from_ is not None:
        return from_, end
    span = timedelta(days=USAGE_DAYS - 1)
    return (end - span if end - date.min > span else date.min), end


@router.get("/v1/usage", responses={200: {"model": UsageOut}, 403: {"model": ErrorBody}, **_HISTORY_ERRORS})
def usage(
    state: State,
    caller: CallerOf,
    from_: Annotated[
        IsoDay | None, Query(alias="from", description=f"first UTC day (default: {USAGE_DAYS} days to `to`)")
    ] = None,
    to: Annotated[IsoDay | None, Query(description="last UTC day, included (default: today)")] = None,
    group_by: Literal["agent", "day", "model"] = "agent",
    tenant: Annotated[
        str | None, Query(pattern=_NAME, description="admin keys: whose usage (default: every tenant's)")
    ] = None,
) -> FleetJSONResponse:
    """Steps, tool calls, tokens and cost in USD of the tenant's ended runs over the days
    [`from`, `to`] (the UTC day each run ended), per agent, day or model, and in total.

    A tenant key reads its own tenant's usage; `?tenant=` naming another is a 403. An admin key
    (FLEET_ADMIN_KEYS) reads any tenant's with `?tenant=`, or every tenant's together without it.
    `from` after `to` is an empty range."""
    if caller.tenant is not None and tenant not in (None, caller.tenant):
        raise ApiError(403, "forbidden", "tenant: a tenant key reads its own usage; use an admin key")
    whose = caller.tenant if caller.tenant is not None else tenant
    start, end = _usage_days(from_, to)
    try:
        rows = query.usage(state.history.engine(), whose, start=start, end=end, group_by=group_by)
    except SQLAlchemyError:
        raise _unavailable() from None
    total = {
        "steps": sum(row["steps"] for row in rows),
        "tool_calls": sum(row["tool_calls"] for row in rows),
        "tokens": sum(row["tokens"] for row in rows),
        "cost_usd": round(sum(row["cost_usd"] for row in rows), 6),
    }
    body = {"tenant": whose, "from": start.isoformat(), "to": end.isoformat(), "group_by": group_by}
    return FleetJSONResponse({**body, "usage": rows, "total": total})


@router.delete(
    "/v1/runs/{run_id}",
    status_code=204,
    response_class=Response,
    responses={
        204: {"description": "the run is gone from Redis and the history"},
        **{code: spec for code, spec in _ERRORS.items() if code in (401, 404, 409)},
        503: {"model": ErrorBody},
    },
)
def delete_run(run_id: str, state: State, tenant: Tenant) -> Response:
    """Delete an ended run for good, for a data subject's request: its record, step log, events
    and calls in Redis, and its rows in the history (usage included). A queued or running run is
    a 409 (cancel it first); an unknown run, or another tenant's, a 404."""
    if not _RUN_ID_RE.fullmatch(run_id):
        raise _not_found(run_id)
    raw = state.store.load(run_id)
    if raw is not None and raw.get("tenant") != tenant:
        raise _not_found(run_id)
    if raw is not None and raw.get("status") not in TERMINAL:
        raise ApiError(409, "conflict", f"run {run_id} is {raw.get('status')}; cancel it, then delete it")
    try:  # the database first: when it is down, nothing is gone and a retry does it all
        archived = query.delete_run(state.history.engine(), run_id, tenant)
    except SQLAlchemyError:
        raise _unavailable() from None
    if raw is None and not archived:
        raise _not_found(run_id)
    erase_run(state.r, state.keys, run_id)  # the calls' keys may outlive the run's hash
    return Response(status_code=204)
