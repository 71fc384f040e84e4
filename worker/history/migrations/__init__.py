"""Alembic migrations of the run history (worker/history/db.py runs them)."""
