"""Alembic's environment: migrate on the connection that worker/history/db.py `upgrade` holds
(its lock is held on that connection)."""

from __future__ import annotations

from alembic import context

from worker.history.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
