"""The run history's database: an engine for FLEET_DATABASE_URL, migrated to the newest schema.

PostgreSQL (psycopg 3) in production; SQLite (a file in `data_dir`) when no URL is set, so one
machine needs nothing else. Every process that uses the database upgrades it to the newest Alembic
revision on its first use (worker/history/migrations/): under a PostgreSQL advisory lock, or a
file lock beside the SQLite file, so processes starting together migrate once. A process whose
database is away at start goes on; its first use after the database is back migrates.

The URL holds a password: show it only through `masked`; errors name the database's host, never
the URL (the engine hides statement parameters too).
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
ADVISORY_LOCK_ID = 0x666C656574  # "fleet": the PostgreSQL advisory lock of a migration
CONNECT_TIMEOUT_S = 5  # a database that does not answer fails the batch soon; it is retried
SQLITE_BUSY_TIMEOUT_S = 30.0


def parse_url(url: str) -> URL:
    """The URL as SQLAlchemy reads it; `postgres://` and `postgresql://` use psycopg 3 (the driver
    the fleet installs). A URL that does not parse is a ValueError that shows no part of it."""
    try:
        parsed = make_url(url)
    except Exception:
        raise ValueError("FLEET_DATABASE_URL is not a database URL (e.g. postgresql+psycopg://...)") from None
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise ValueError(
            f"FLEET_DATABASE_URL: {parsed.get_backend_name()!r} is not supported (postgresql, sqlite)"
        )
    return parsed


def masked(url: str) -> str:
    """The URL with its password replaced by ***."""
    try:
        return parse_url(url).render_as_string(hide_password=True)
    except ValueError as exc:
        return f"<{exc}>"


def make_engine(url: str) -> Engine:
    """An engine for the history. SQLite: the file's folder is created, WAL mode (readers do not
    block the writer) and foreign keys on (the purge's cascades need them)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, hide_parameters=True, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        parsed,
        hide_parameters=True,
        pool_pre_ping=True,  # a connection the server dropped (a restart) is replaced, not used
        pool_size=4,
        max_overflow=4,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def upgrade(engine: Engine) -> None:
    """Migrate the database to the newest revision, one process at a time."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with _sqlite_file_lock(engine), engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": ADVISORY_LOCK_ID})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """An exclusive lock on `<database file>.lock` while an SQLite database migrates."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(f"{database}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class HistoryDB:
    """The process's history database: the engine is made, and the schema migrated, on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._ready = False
        self._lock = threading.Lock()

    @property
    def display_url(self) -> str:
        return masked(self.url)

    def engine(self) -> Engine:
        """The engine, with the schema at the newest revision; raises (and retries at the next
        call) while the database is unreachable."""
        if self._ready and self._engine is not None:
            return self._engine
        with self._lock:
            if self._engine is None:
                self._engine = make_engine(self.url)
            if not self._ready:
                upgrade(self._engine)
                self._ready = True
            return self._engine

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def describe_error(exc: BaseException, url: str) -> str:
    """A database error for a log line: its type and first line, with the URL's password (if it
    appears at all) replaced."""
    message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    with contextlib.suppress(ValueError):
        password = parse_url(url).password
        if password:
            message = message.replace(str(password), "***")
    return message
