"""Reading the run history: a tenant's runs, newest first and paged by keyset; the usage ledger
summed by agent, day or model; the deletion of one run.

Pure functions over a SQLAlchemy `Engine` (no Redis), on PostgreSQL and SQLite alike. Each list
query walks one index of `schema` in order and stops after `limit + 1` rows, so a page costs the
same on page 1 and page 10,000:

- no metadata filter: `runs_tenant_agent_created`, `runs_tenant_status_created` or
  `runs_tenant_created` (the planner picks; `stop_reason` is checked on the rows it reads);
- a `metadata.<key>=<value>` filter alone: `run_metadata_lookup` drives, in (created_at, id)
  order, joined to `runs` by primary key; further metadata filters are checked per row;
- metadata with an agent or status filter: the planner picks the rarer side (`_runs_query`).

Times are compared in UTC. A bad input raises `QueryError` naming the parameter.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, Engine, Select, delete, exists, func, select, tuple_
from sqlalchemy.orm import aliased

from worker.history import schema
from worker.units import usd_from_micro

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_METADATA_FILTERS = 10
MAX_METADATA_KEY = 200  # schema.NAME
MAX_METADATA_VALUE = 1000  # run_metadata.value
GroupBy = Literal["agent", "day", "model"]
GROUP_BY: tuple[GroupBy, ...] = ("agent", "day", "model")
_RUN_ID = re.compile(r"[0-9a-f]{32}")


class QueryError(ValueError):
    """An input the history cannot be asked with; `param` names it (the API's 422 names it too)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


# -- values ---------------------------------------------------------------------------------------


def metadata_text(value: Any) -> str:
    """A metadata value as `run_metadata.value` holds it: compact JSON, keys sorted, non-ASCII
    escaped (the archive writes it with this function, so equal values compare equal)."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=True)


def metadata_match(text: str) -> str:
    """The `run_metadata.value` a query value `metadata.<key>=<text>` matches: `text` read as JSON
    when it parses (`5`, `true`, `null`, `"5"`, `{"a":1}`), else as a string (`acme`). So
    `metadata.tier=gold` and `metadata.tier="gold"` both find `{"tier": "gold"}`,
    `metadata.priority=2` finds `{"priority": 2}`, and `metadata.zip="01234"` finds the string."""
    try:
        return metadata_text(json.loads(text))
    except ValueError:
        return metadata_text(text)


def utc(moment: datetime) -> datetime:
    """`moment` in UTC (a time without a zone is taken as UTC, as SQLite returns them); clamped to
    the representable range, so an extreme input compares instead of overflowing. Every bound time
    goes through it: SQLite stores the wall clock, so UTC it must be."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        edge = datetime.max if moment.year > 1 else datetime.min
        return edge.replace(tzinfo=UTC)


# -- the cursor -----------------------------------------------------------------------------------


def encode_cursor(created_at: datetime, run_id: str) -> str:
    """The opaque position after a run: urlsafe base64 of `["<created_at, UTC>", "<id>"]`."""
    stamp = utc(created_at).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    raw = json.dumps([stamp, run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a cursor of `encode_cursor` names; `QueryError("cursor")` otherwise."""
    problem = QueryError("cursor", "not a cursor this API gave out (use next_cursor as it is)")
    if len(cursor) > 200:
        raise problem
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, run_id = json.loads(raw)
        created_at = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except (binascii.Error, ValueError, TypeError):
        raise problem from None
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise problem
    return created_at, run_id


# -- runs -----------------------------------------------------------------------------------------


def check_metadata(filters: Mapping[str, str]) -> dict[str, str]:
    """`metadata.<key>=<value>` filters as (key -> the JSON text they match), checked."""
    if len(filters) > MAX_METADATA_FILTERS:
        raise QueryError("metadata", f"at most {MAX_METADATA_FILTERS} metadata filters")
    checked = {}
    for key, value in filters.items():
        if not 1 <= len(key) <= MAX_METADATA_KEY:
            raise QueryError(f"metadata.{key[:40]}", f"a metadata key has 1-{MAX_METADATA_KEY} characters")
        match = metadata_match(value)
        if len(match) > MAX_METADATA_VALUE:
            raise QueryError(f"metadata.{key}", f"longer than {MAX_METADATA_VALUE} characters as JSON")
        checked[key] = match
    return checked


def list_runs(
    engine: Engine,
    tenant: str,
    *,
    agent: str | None = None,
    status: str | None = None,
    stop_reason: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    metadata: Mapping[str, str] | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """The tenant's ended runs, newest first (created_at, then id, descending), as the API shows
    them, and the cursor of the next page (None on the last page).

    Filters combine with AND: `since` <= created_at < `until`; `metadata` maps keys to query
    values (`metadata_match`). `limit`: 1..1000. `cursor`: a `next_cursor` from an earlier page.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError("limit", f"between 1 and {MAX_LIMIT}")
    after = decode_cursor(cursor) if cursor is not None else None
    matches = check_metadata(metadata or {})
    query, created, ident = _runs_query(tenant, matches, drive=agent is None and status is None)
    runs = schema.runs
    for column, value in ((runs.c.agent, agent), (runs.c.status, status), (runs.c.stop_reason, stop_reason)):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(created >= utc(since))
    if until is not None:
        query = query.where(created < utc(until))
    if after is not None:
        query = query.where(tuple_(created, ident) < tuple_(utc(after[0]), after[1]))
    query = query.order_by(created.desc(), ident.desc()).limit(limit + 1)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    records = [_record(row.record) for row in rows[:limit]]
    if len(rows) <= limit:
        return records, None
    last = rows[limit - 1]
    return records, encode_cursor(last.created_at, last.run_id)


def _runs_query(
    tenant: str, matches: dict[str, str], *, drive: bool
) -> tuple[Select[Any], ColumnElement[datetime], ColumnElement[str]]:
    """The select of a page before the other filters, with the (created_at, id) columns it is
    ordered by. With `drive`, the first metadata filter's rows of `run_metadata_lookup` lead, in
    order, joined to `runs`: a page of a rare value or a common one reads about `limit` rows.
    Without it (an agent or status filter is given too), every metadata filter is an EXISTS, so
    the planner may lead with whichever side its statistics say is rarer."""
    runs = schema.runs
    query = select(runs.c.record, runs.c.created_at, runs.c.id.label("run_id")).where(runs.c.tenant == tenant)
    created, ident = runs.c.created_at, runs.c.id
    if drive and matches:
        (key, value), *rest = matches.items()
        lookup = schema.run_metadata
        created, ident = lookup.c.created_at, lookup.c.run_id
        query = (
            select(runs.c.record, created, ident)
            .select_from(lookup.join(runs, runs.c.id == lookup.c.run_id))
            .where(lookup.c.tenant == tenant, lookup.c.key == key, lookup.c.value == value)
            .where(runs.c.tenant == tenant)
        )
        matches = dict(rest)
    for key, value in matches.items():
        other = aliased(schema.run_metadata)
        query = query.where(
            exists().where(other.c.run_id == runs.c.id, other.c.key == key, other.c.value == value)
        )
    return query, created, ident


def _record(value: Any) -> dict[str, Any]:
    """The `record` column as a dict (a JSON column; text where a driver hands back text)."""
    record: dict[str, Any] = json.loads(value) if isinstance(value, str) else dict(value)
    return record


# -- usage ----------------------------------------------------------------------------------------


def usage(
    engine: Engine, tenant: str | None, *, start: date, end: date, group_by: str
) -> list[dict[str, Any]]:
    """Steps, tool calls, tokens and cost in USD from `run_usage` over the UTC days
    [`start`, `end`] (the day a run ended), one row per agent, day (`YYYY-MM-DD`) or model
    (`""`: what no model spent, i.e. steps and tool calls), in that value's order.
    `tenant` None: every tenant's (an admin's question)."""
    if group_by not in GROUP_BY:
        raise QueryError("group_by", "one of agent, day, model")
    ledger = schema.run_usage
    column = ledger.c[group_by]
    query = (
        select(
            column.label("value"),
            func.coalesce(func.sum(ledger.c.steps), 0).label("steps"),
            func.coalesce(func.sum(ledger.c.tool_calls), 0).label("tool_calls"),
            func.coalesce(func.sum(ledger.c.tokens), 0).label("tokens"),
            func.coalesce(func.sum(ledger.c.cost_micro), 0).label("cost_micro"),
        )
        .where(ledger.c.day >= start, ledger.c.day <= end)
        .group_by(column)
        .order_by(column)
    )
    if tenant is not None:
        query = query.where(ledger.c.tenant == tenant)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        {
            group_by: row.value.isoformat() if isinstance(row.value, date) else str(row.value),
            "steps": int(row.steps),
            "tool_calls": int(row.tool_calls),
            "tokens": int(row.tokens),
            "cost_usd": usd_from_micro(int(row.cost_micro)),
        }
        for row in rows
    ]


# -- deletion -------------------------------------------------------------------------------------


def delete_run(engine: Engine, run_id: str, tenant: str | None = None) -> bool:
    """Delete a run with its steps, metadata and usage rows, in one transaction (explicitly, so it
    holds on SQLite without foreign keys switched on); with `tenant`, only that tenant's run.
    True when a run was deleted."""
    runs = schema.runs
    with engine.begin() as conn:
        owned = runs.c.id == run_id if tenant is None else (runs.c.id == run_id) & (runs.c.tenant == tenant)
        if conn.execute(select(runs.c.id).where(owned)).first() is None:
            return False
        for table in (schema.run_steps, schema.run_metadata, schema.run_usage):
            conn.execute(delete(table).where(table.c.run_id == run_id))
        return bool(conn.execute(delete(runs).where(owned)).rowcount)
