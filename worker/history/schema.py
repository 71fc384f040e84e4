"""The run history's tables (SQLAlchemy Core): ended runs, archived from Redis.

One row per ended run in `runs`, its step log in `run_steps`, its metadata as key/value rows in
`run_metadata` (so `metadata.<key>=<value>` filters use an index on every database), and its usage
per model in `run_usage` (the ledger `GET /v1/usage` sums). Everything here is what the API shows
(`record` is the run exactly as `GET /v1/runs/{id}` answers it), so it is already redacted.

The indexes serve the queries of `GET /v1/runs`: a tenant's runs newest first, optionally of one
agent, status or metadata value, paged by keyset on (created_at, id).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)

metadata = MetaData()

RUN_ID = String(32)
NAME = String(200)  # tenants, agents, tools, models, metadata keys: 1-200 characters

runs = Table(
    "runs",
    metadata,
    Column("id", RUN_ID, primary_key=True),
    Column("tenant", NAME, nullable=False),
    Column("agent", NAME, nullable=False),
    Column("version", String(20)),
    Column("status", String(20), nullable=False),
    Column("stop_reason", String(40)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("steps", Integer, nullable=False, default=0),
    Column("tool_calls", Integer, nullable=False, default=0),
    Column("seconds", Float, nullable=False, default=0.0),
    Column("tokens", BigInteger, nullable=False, default=0),
    Column("cost_micro", BigInteger, nullable=False, default=0),  # USD * 1e6, summed exactly
    Column("record", JSON, nullable=False),  # the run as GET /v1/runs/{id} shows it
    Column("archived_at", DateTime(timezone=True), nullable=False),
)
Index("runs_tenant_created", runs.c.tenant, runs.c.created_at.desc(), runs.c.id.desc())
Index("runs_tenant_agent_created", runs.c.tenant, runs.c.agent, runs.c.created_at.desc(), runs.c.id.desc())
Index("runs_tenant_status_created", runs.c.tenant, runs.c.status, runs.c.created_at.desc(), runs.c.id.desc())
Index("runs_finished", runs.c.finished_at)  # the retention purge

run_steps = Table(
    "run_steps",
    metadata,
    Column("run_id", RUN_ID, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, primary_key=True),  # 0-based, the step log's order
    Column("entry", JSON, nullable=False),  # the step's entry as the step log holds it
)

run_metadata = Table(
    "run_metadata",
    metadata,
    Column("run_id", RUN_ID, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("key", NAME, primary_key=True),
    Column("value", String(1000), nullable=False),  # the value as JSON text (a string: "\"x\"")
    Column("tenant", NAME, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index(
    "run_metadata_lookup",
    run_metadata.c.tenant,
    run_metadata.c.key,
    run_metadata.c.value,
    run_metadata.c.created_at.desc(),
    run_metadata.c.run_id.desc(),
)

run_usage = Table(
    "run_usage",
    metadata,
    Column("run_id", RUN_ID, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("model", NAME, primary_key=True),  # '' for what no model spent (steps, tool calls)
    Column("tenant", NAME, nullable=False),
    Column("agent", NAME, nullable=False),
    Column("day", Date, nullable=False),  # the UTC day the run ended
    Column("steps", Integer, nullable=False, default=0),
    Column("tool_calls", Integer, nullable=False, default=0),
    Column("tokens", BigInteger, nullable=False, default=0),
    Column("cost_micro", BigInteger, nullable=False, default=0),
)
Index("run_usage_tenant_day", run_usage.c.tenant, run_usage.c.day)
