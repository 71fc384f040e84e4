"""What the API answers, as typed values: a run, its usage, an event of its stream, a pending approval.

Parsing is lenient: fields the client does not know are ignored (they stay in `raw`), missing
optional fields take their defaults, so a newer fleet never breaks an older client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

TERMINAL_STATUSES = frozenset({"succeeded", "stopped", "failed", "cancelled"})


def _time(value: Any) -> datetime | None:
    """An ISO 8601 time of the API (`2026-11-26T09:14:39.123456Z`) as an aware datetime, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


@dataclass(frozen=True)
class Usage:
    """What a run has spent: steps, tool calls, seconds since it started, model tokens and dollars."""

    steps: int = 0
    tool_calls: int = 0
    seconds: float = 0.0
    tokens: int = 0
    cost_usd: float = 0.0

    @classmethod
    def from_dict(cls, data: Any) -> Usage:
        data = _dict(data)
        return cls(
            steps=_int(data.get("steps")),
            tool_calls=_int(data.get("tool_calls")),
            seconds=_float(data.get("seconds")),
            tokens=_int(data.get("tokens")),
            cost_usd=_float(data.get("cost_usd")),
        )


@dataclass(frozen=True)
class ErrorInfo:
    """Why a run did not succeed: `type` (`killed`, `cancelled`, an agent's error, ...) and a message."""

    type: str
    message: str | None = None

    @classmethod
    def from_dict(cls, data: Any) -> ErrorInfo | None:
        if not isinstance(data, dict):
            return None
        message = data.get("message")
        return cls(type=str(data.get("type") or "error"), message=None if message is None else str(message))


@dataclass(frozen=True)
class Run:
    """A run as `GET /v1/runs/{id}` shows it.

    `status`: queued, running, succeeded, stopped, failed or cancelled. `stop_reason` is None until
    the run ends. Times are aware UTC datetimes, None until they happen. `steps` is the step log
    (only when asked for with `steps=True`), `waiting` what a running run waits for (an approval),
    `raw` the whole body as the API sent it, including fields this client does not know.
    """

    id: str
    agent: str
    tenant: str
    status: str
    stop_reason: str | None = None
    output: Any = None
    error: ErrorInfo | None = None
    usage: Usage = field(default_factory=Usage)
    budgets: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    version: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    steps: list[dict[str, Any]] | None = None
    waiting: dict[str, Any] | None = None
    webhook: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """True once the run has ended (succeeded, stopped, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Run:
        """The run from the API's JSON body; unknown fields are kept in `raw` only."""
        steps = data.get("steps")
        waiting, webhook = data.get("waiting"), data.get("webhook")
        stop_reason, version = data.get("stop_reason"), data.get("version")
        return cls(
            id=str(data["id"]),
            agent=str(data.get("agent", "")),
            tenant=str(data.get("tenant", "")),
            status=str(data["status"]),
            stop_reason=None if stop_reason is None else str(stop_reason),
            output=data.get("output"),
            error=ErrorInfo.from_dict(data.get("error")),
            usage=Usage.from_dict(data.get("usage")),
            budgets=_dict(data.get("budgets")),
            metadata=_dict(data.get("metadata")),
            version=None if version is None else str(version),
            created_at=_time(data.get("created_at")),
            started_at=_time(data.get("started_at")),
            finished_at=_time(data.get("finished_at")),
            steps=[dict(s) for s in steps if isinstance(s, dict)] if isinstance(steps, list) else None,
            waiting=dict(waiting) if isinstance(waiting, dict) else None,
            webhook=dict(webhook) if isinstance(webhook, dict) else None,
            raw=dict(data),
        )


@dataclass(frozen=True)
class Event:
    """One event of a run's stream (`GET /v1/runs/{id}/events`).

    `type`: status, step, approval_requested, approval_decided or end (the last one). `id` resumes
    the stream after this event (`Last-Event-ID`). `data` is the event's data decoded as JSON, or
    the text itself when it is not JSON.
    """

    id: str | None
    type: str
    data: Any

    @classmethod
    def from_sse(cls, id: str | None, type: str, text: str) -> Event:
        try:
            data: Any = json.loads(text)
        except ValueError:
            data = text
        return cls(id=id, type=type, data=data)


@dataclass(frozen=True)
class Approval:
    """A tool call that waits for a human's decision (`GET /v1/approvals`).

    Decide it with `approve(run_id, call_id)` or `deny(run_id, call_id)`. `raw` holds the whole
    entry as the API sent it.
    """

    run_id: str
    call_id: str
    tool: str | None = None
    args: Any = None
    since: str | float | None = None
    agent: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Approval:
        """The approval from one entry of `GET /v1/approvals`: `{"run_id", "call_id", "tool", "args",
        "since", ...}`, or a run whose `waiting` names the call."""
        fields = dict(data)
        waiting = data.get("waiting")
        if isinstance(waiting, dict):
            fields.update(waiting)
            fields["run_id"] = data.get("run_id") or data.get("id")
        tool, agent, since = fields.get("tool"), fields.get("agent"), fields.get("since")
        return cls(
            run_id=str(fields.get("run_id") or fields.get("id") or ""),
            call_id=str(fields.get("call_id") or ""),
            tool=None if tool is None else str(tool),
            args=fields.get("args"),
            since=since if isinstance(since, str | int | float) and not isinstance(since, bool) else None,
            agent=None if agent is None else str(agent),
            raw=dict(data),
        )


@dataclass(frozen=True)
class RunPage:
    """A page of `GET /v1/runs`: ended runs, newest first; `next_cursor` asks for the next page
    (None on the last)."""

    runs: list[Run]
    next_cursor: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunPage:
        runs = data.get("runs")
        cursor = data.get("next_cursor")
        items = runs if isinstance(runs, list) else []
        return cls(
            runs=[Run.from_dict(r) for r in items if isinstance(r, dict) and "id" in r and "status" in r],
            next_cursor=cursor if isinstance(cursor, str) and cursor else None,
        )


@dataclass(frozen=True)
class UsageRow:
    """What one group spent: `key` is the agent, the day (YYYY-MM-DD) or the model ("" for steps
    and tool calls no model made), as `group_by` asked."""

    key: str
    steps: int = 0
    tool_calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0

    @classmethod
    def from_dict(cls, data: Any, group_by: str) -> UsageRow:
        data = _dict(data)
        return cls(
            key=str(data.get(group_by) or ""),
            steps=_int(data.get("steps")),
            tool_calls=_int(data.get("tool_calls")),
            tokens=_int(data.get("tokens")),
            cost_usd=_float(data.get("cost_usd")),
        )


@dataclass(frozen=True)
class UsageReport:
    """`GET /v1/usage`: a tenant's (None: every tenant's) usage over the UTC days [`start`, `end`],
    one row per agent, day or model, and the total (a row with key "total")."""

    tenant: str | None
    start: str
    end: str
    group_by: str
    rows: list[UsageRow]
    total: UsageRow
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UsageReport:
        group_by = str(data.get("group_by") or "agent")
        rows = data.get("usage")
        tenant = data.get("tenant")
        return cls(
            tenant=None if tenant is None else str(tenant),
            start=str(data.get("from") or ""),
            end=str(data.get("to") or ""),
            group_by=group_by,
            rows=[UsageRow.from_dict(row, group_by) for row in (rows if isinstance(rows, list) else [])],
            total=UsageRow.from_dict({**_dict(data.get("total")), group_by: "total"}, group_by),
            raw=dict(data),
        )
