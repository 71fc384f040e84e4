"""Rows of the run history built from a run record, for tests and the benchmark.

`make_record` builds a run as `GET /v1/runs/{id}` shows it; `history_rows` turns it into the rows
of `runs`, `run_steps`, `run_metadata` and `run_usage` as the archive writes them; `insert_runs`
inserts many at once through `worker.history.schema`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, insert

from worker.history import schema
from worker.history.query import metadata_text

TABLES = (schema.runs, schema.run_steps, schema.run_metadata, schema.run_usage)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_record(
    tenant: str = "t1",
    agent: str = "scripted",
    *,
    created_at: datetime,
    status: str = "succeeded",
    stop_reason: str | None = "finish",
    metadata: Mapping[str, Any] | None = None,
    steps: int = 1,
    tool_calls: int = 0,
    tokens: int = 0,
    cost_usd: float = 0.0,
    run_id: str | None = None,
    seconds: float = 0.5,
) -> dict[str, Any]:
    """An ended run as the API shows it."""
    started = created_at + timedelta(milliseconds=10)
    return {
        "id": run_id or uuid.uuid4().hex,
        "agent": agent,
        "tenant": tenant,
        "version": None,
        "status": status,
        "stop_reason": stop_reason,
        "output": "ok" if status == "succeeded" else None,
        "error": None,
        "usage": {"steps": steps, "tool_calls": tool_calls, "seconds": seconds, "tokens": tokens,
                  "cost_usd": cost_usd},
        "budgets": {"max_steps": 25, "max_tool_calls": 12, "max_seconds": 60.0, "max_tokens": 0,
                    "max_cost_usd": 0.0},
        "metadata": dict(metadata or {}),
        "waiting": None,
        "created_at": iso(created_at),
        "started_at": iso(started),
        "finished_at": iso(started + timedelta(seconds=seconds)),
    }  # fmt: skip


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def history_rows(
    record: Mapping[str, Any],
    step_log: Iterable[Mapping[str, Any]] = (),
    models: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The rows of each table for one ended run. `models`: model -> (tokens, cost in micro-USD);
    the run's steps and tool calls go to the row of model `""`, and, without `models`, its tokens
    and cost too."""
    usage = record["usage"]
    created_at = _time(record["created_at"])
    finished_at = _time(record["finished_at"]) or created_at
    assert created_at is not None and finished_at is not None
    tenant, run_id = record["tenant"], record["id"]
    cost_micro = round(usage["cost_usd"] * 1_000_000)
    per_model = dict(models) if models is not None else {"": (usage["tokens"], cost_micro)}
    ledger = {"": (0, 0), **per_model}
    common = {"run_id": run_id, "tenant": tenant}
    return {
        "runs": [
            {
                "id": run_id,
                "tenant": tenant,
                "agent": record["agent"],
                "version": record["version"],
                "status": record["status"],
                "stop_reason": record["stop_reason"],
                "created_at": created_at,
                "started_at": _time(record["started_at"]),
                "finished_at": finished_at,
                "steps": usage["steps"],
                "tool_calls": usage["tool_calls"],
                "seconds": usage["seconds"],
                "tokens": usage["tokens"],
                "cost_micro": cost_micro,
                "record": dict(record),
                "archived_at": datetime.now(UTC),
            }
        ],
        "run_steps": [{"run_id": run_id, "position": i, "entry": dict(e)} for i, e in enumerate(step_log)],
        "run_metadata": [
            {**common, "key": key, "value": metadata_text(value), "created_at": created_at}
            for key, value in record["metadata"].items()
        ],
        "run_usage": [
            {
                **common,
                "model": model,
                "agent": record["agent"],
                "day": finished_at.date(),
                "steps": usage["steps"] if model == "" else 0,
                "tool_calls": usage["tool_calls"] if model == "" else 0,
                "tokens": tokens,
                "cost_micro": micro,
            }
            for model, (tokens, micro) in ledger.items()
        ],
    }


def insert_rows(conn: Connection, batches: Iterable[dict[str, list[dict[str, Any]]]]) -> None:
    """Insert the rows of many runs, one executemany per table (runs first: the keys point at it)."""
    merged: dict[str, list[dict[str, Any]]] = {table.name: [] for table in TABLES}
    for rows in batches:
        for name, items in rows.items():
            merged[name].extend(items)
    for table in TABLES:
        if merged[table.name]:
            conn.execute(insert(table), merged[table.name])


def insert_runs(engine: Engine, records: Iterable[Mapping[str, Any]]) -> None:
    """Archive these records (no step log, usage on model `""`) in one transaction."""
    with engine.begin() as conn:
        insert_rows(conn, (history_rows(record) for record in records))
