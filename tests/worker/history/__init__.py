"""Tests of the run history (worker/history/): archive queue, SQLite, PostgreSQL, queries."""
