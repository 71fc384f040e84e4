"""The run history's database engine: FLEET_DATABASE_URL, else an SQLite file.

`FLEET_DATABASE_URL` comes from the environment or the secret file
`/run/secrets/fleet_database_url` (a SQLAlchemy URL: `postgresql+psycopg://user:pass@host/db` in
production). Without it the history is the SQLite file `fleet-history.db` in the working
directory, so a single machine needs nothing else. The engine connects lazily: a process that
never reads the history never opens it.
"""

from __future__ import annotations

from sqlalchemy import Engine, create_engine

from worker.settings import Settings

DEFAULT_DATABASE_URL = "sqlite:///fleet-history.db"


def database_url(settings: Settings) -> str:
    """FLEET_DATABASE_URL (environment or /run/secrets/fleet_database_url), else the SQLite default."""
    return settings.secret("FLEET_DATABASE_URL") or DEFAULT_DATABASE_URL


def engine_for(url: str) -> Engine:
    """An engine for `url`; connections are checked before use, so a restarted database heals."""
    return create_engine(url, pool_pre_ping=True)
