"""Writing ended runs to the run history, reading one back, and purging old ones (SQL only: the
Redis side is worker/history/queue.py, the task worker/history/archiver.py).

What is written is what the API shows: `record` is `public_view` of the run's hash and the steps
are its step log, both already redacted. Every insert is `ON CONFLICT DO NOTHING` on the run id
(and the child tables' keys), so a batch written twice leaves one copy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Engine, Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from worker.history.query import metadata_text
from worker.history.schema import run_metadata, run_steps, run_usage, runs
from worker.run.store import public_view
from worker.tools import MODEL_TOOL
from worker.units import micro_from_usd

METADATA_KEY_MAX = 200  # run_metadata.key; a longer key stays in `record` only
METADATA_VALUE_MAX = 1000  # run_metadata.value (JSON text); a longer value stays in `record` only


@dataclass
class RunRows:
    """One run's rows in the four tables."""

    run: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)
    usage: list[dict[str, Any]] = field(default_factory=list)


def _at(ts: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(ts), tz=UTC) if ts not in (None, "") else None


def rows_for(raw: dict[str, str], steps: list[dict[str, Any]], now: float) -> RunRows:
    """The rows of an ended run from its Redis hash and step log."""
    view = public_view(raw)
    created = _at(raw.get("created_ts")) or datetime.fromtimestamp(now, tz=UTC)
    finished = _at(raw.get("finished_ts")) or created
    usage = view["usage"]
    cost_micro = int(raw.get("cost_micro") or 0)
    run = {
        "id": view["id"],
        "tenant": view["tenant"],
        "agent": view["agent"],
        "version": view["version"],
        "status": view["status"],
        "stop_reason": view["stop_reason"],
        "created_at": created,
        "started_at": _at(raw.get("started_ts")),
        "finished_at": finished,
        "steps": usage["steps"],
        "tool_calls": usage["tool_calls"],
        "seconds": usage["seconds"],
        "tokens": usage["tokens"],
        "cost_micro": cost_micro,
        "record": view,
        "archived_at": datetime.fromtimestamp(now, tz=UTC),
    }
    rows = RunRows(run)
    rows.steps = [{"run_id": view["id"], "position": i, "entry": entry} for i, entry in enumerate(steps)]
    for key, value in (view["metadata"] or {}).items():
        text = metadata_text(value)  # as the metadata filters of GET /v1/runs compare it
        if len(key) <= METADATA_KEY_MAX and len(text) <= METADATA_VALUE_MAX:
            rows.metadata.append(
                {
                    "run_id": view["id"],
                    "key": key,
                    "value": text,
                    "tenant": view["tenant"],
                    "created_at": created,
                }
            )
    rows.usage = usage_rows(view, steps, cost_micro, finished.date())
    return rows


def usage_rows(
    view: dict[str, Any], steps: list[dict[str, Any]], cost_micro: int, day: date
) -> list[dict[str, Any]]:
    """The run's usage ledger: a row per model its steps called (those steps, their tokens and
    cost) and a row with model '' for the rest (the other steps, every tool call, and whatever
    tokens and cost the model steps' entries do not account for, e.g. failed attempts), so the
    rows add up to the run's usage."""
    per_model: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # steps, tokens, micro
    for entry in steps:
        if entry.get("tool") == MODEL_TOOL and entry.get("model"):
            counted = per_model[str(entry["model"])]
            counted[0] += 1
            counted[1] += int(entry.get("tokens") or 0)
            counted[2] += micro_from_usd(float(entry.get("cost_usd") or 0.0))
    usage = view["usage"]
    base = {"run_id": view["id"], "tenant": view["tenant"], "agent": view["agent"], "day": day}
    rows = [
        {**base, "model": model[:200], "steps": n, "tool_calls": 0, "tokens": tokens, "cost_micro": micro}
        for model, (n, tokens, micro) in per_model.items()
    ]
    rest = {
        "steps": max(0, usage["steps"] - sum(r["steps"] for r in rows)),
        "tool_calls": usage["tool_calls"],
        "tokens": max(0, usage["tokens"] - sum(r["tokens"] for r in rows)),
        "cost_micro": max(0, cost_micro - sum(r["cost_micro"] for r in rows)),
    }
    return [*rows, {**base, "model": "", **rest}]


def _insert(engine: Engine, table: Table) -> Insert:
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    stmt: Insert = dialect.insert(table).on_conflict_do_nothing()
    return stmt


def write_batch(engine: Engine, batch: Sequence[RunRows]) -> None:
    """Write a batch of runs in one transaction; runs already there are left as they are."""
    if not batch:
        return
    with engine.begin() as conn:
        conn.execute(_insert(engine, runs), [rows.run for rows in batch])
        for table, children in (
            (run_steps, [row for rows in batch for row in rows.steps]),
            (run_metadata, [row for rows in batch for row in rows.metadata]),
            (run_usage, [row for rows in batch for row in rows.usage]),
        ):
            if children:
                conn.execute(_insert(engine, table), children)


def load_run(
    engine: Engine, run_id: str, with_steps: bool = False
) -> tuple[dict[str, Any], list[Any]] | None:
    """An archived run as GET /v1/runs/{id} shows it, and its step log when asked; None when the
    history has no such run."""
    with engine.connect() as conn:
        record = conn.execute(select(runs.c.record).where(runs.c.id == run_id)).scalar_one_or_none()
        if record is None:
            return None
        steps: list[Any] = []
        if with_steps:
            query = (
                select(run_steps.c.entry).where(run_steps.c.run_id == run_id).order_by(run_steps.c.position)
            )
            steps = list(conn.execute(query).scalars())
    return dict(record), steps


def purge(engine: Engine, before: datetime, batch: int) -> int:
    """Delete the runs that finished before `before`, `batch` runs per transaction (their steps,
    metadata and usage go with them: ON DELETE CASCADE); how many."""
    total = 0
    while True:
        with engine.begin() as conn:
            ids = list(
                conn.execute(select(runs.c.id).where(runs.c.finished_at < before).limit(batch)).scalars()
            )
            if ids:
                conn.execute(delete(runs).where(runs.c.id.in_(ids)))
        total += len(ids)
        if len(ids) < batch:
            return total
