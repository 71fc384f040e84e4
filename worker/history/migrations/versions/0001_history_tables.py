"""The run history's tables: runs, run_steps, run_metadata, run_usage (worker/history/schema.py).

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

RUN_ID = sa.String(32)
NAME = sa.String(200)


def _run_fk() -> sa.Column[str]:
    return sa.Column("run_id", RUN_ID, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", RUN_ID, primary_key=True),
        sa.Column("tenant", NAME, nullable=False),
        sa.Column("agent", NAME, nullable=False),
        sa.Column("version", sa.String(20)),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("stop_reason", sa.String(40)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("tool_calls", sa.Integer, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_micro", sa.BigInteger, nullable=False),
        sa.Column("record", sa.JSON, nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
    )
    newest = [sa.text("created_at DESC"), sa.text("id DESC")]
    op.create_index("runs_tenant_created", "runs", ["tenant", *newest])
    op.create_index("runs_tenant_agent_created", "runs", ["tenant", "agent", *newest])
    op.create_index("runs_tenant_status_created", "runs", ["tenant", "status", *newest])
    op.create_index("runs_finished", "runs", ["finished_at"])

    op.create_table(
        "run_steps",
        _run_fk(),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("entry", sa.JSON, nullable=False),
    )

    op.create_table(
        "run_metadata",
        _run_fk(),
        sa.Column("key", NAME, primary_key=True),
        sa.Column("value", sa.String(1000), nullable=False),
        sa.Column("tenant", NAME, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "run_metadata_lookup",
        "run_metadata",
        ["tenant", "key", "value", sa.text("created_at DESC"), sa.text("run_id DESC")],
    )

    op.create_table(
        "run_usage",
        _run_fk(),
        sa.Column("model", NAME, primary_key=True),
        sa.Column("tenant", NAME, nullable=False),
        sa.Column("agent", NAME, nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("tool_calls", sa.Integer, nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_micro", sa.BigInteger, nullable=False),
    )
    op.create_index("run_usage_tenant_day", "run_usage", ["tenant", "day"])


def downgrade() -> None:
    for table in ("run_usage", "run_metadata", "run_steps", "runs"):
        op.drop_table(table)
