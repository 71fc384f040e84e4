"""The archive task's work and the daily purge, in plain functions (worker/tasks.py calls them).

`archive_runs` reads a claimed batch from Redis (each run's hash and step log, one round trip),
writes it to the history in one transaction, and only then settles it in Redis (the short hot
TTL). A database error leaves the runs in Redis with their full TTL and makes them due again
after a backoff (worker/history/queue.py); nothing is lost while the database is away.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
import structlog
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from worker.history import archive, query
from worker.history.db import HistoryDB, describe_error
from worker.history.queue import ArchiveQueue, hot_keys
from worker.keys import Keys
from worker.run.store import STEP_LOG_MAX, TERMINAL
from worker.settings import Settings

log = structlog.get_logger("agentfleet.history")


@dataclass(frozen=True)
class Archiver:
    """Moves ended runs from Redis to the history database."""

    r: redis.Redis
    keys: Keys
    queue: ArchiveQueue
    db: HistoryDB
    settings: Settings

    def archive_runs(self, run_ids: Sequence[str]) -> int:
        """Archive a claimed batch; how many runs it wrote (0 when the database refused it)."""
        pipe = self.r.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hgetall(self.keys.run(run_id))
            pipe.lrange(self.keys.run_steps(run_id), 0, -1)
        found = pipe.execute()
        now = time.time()
        batch: list[archive.RunRows] = []
        lost: list[tuple[str, str, list[str]]] = []
        for i, run_id in enumerate(run_ids):
            raw = {str(k): str(v) for k, v in found[2 * i].items()}
            if not raw or raw.get("status") not in TERMINAL:
                lost.append((run_id, "lost", []))  # its record expired before it could be archived
                continue
            steps = [json.loads(item) for item in found[2 * i + 1]]
            batch.append(archive.rows_for(raw, steps, now))
        if lost:
            log.warning("runs lost before they were archived", runs=len(lost))
            self.queue.settle(lost, self.settings.hot_ttl_s)
        if not batch:
            return 0
        try:
            written, refused = self._write(batch)
        except (SQLAlchemyError, OSError) as exc:
            written, refused = [], batch
            log.warning(
                "archive batch failed; retried later",
                runs=len(batch),
                database=self.db.display_url,
                error=describe_error(exc, self.db.url),
            )
        if refused:
            section = self.settings.archive
            self.queue.retry([rows.run["id"] for rows in refused], section.retry_min_s, section.retry_max_s)
        if not written:
            return 0
        absent = self.queue.settle(
            [
                (
                    rows.run["id"],
                    "archived",
                    hot_keys(self.keys, rows.run["id"], min(rows.run["steps"], STEP_LOG_MAX)),
                )
                for rows in written
            ],
            self.settings.hot_ttl_s,
        )
        self._forget_erased(absent)
        return len(written)

    def _forget_erased(self, run_ids: list[str]) -> None:
        """Delete the rows just written of runs that DELETE /v1/runs/{id} erased while this batch
        was in flight (their record is gone from Redis; a run another batch settled still has it)."""
        if not run_ids:
            return
        pipe = self.r.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.exists(self.keys.run(run_id))
        erased = [run_id for run_id, exists in zip(run_ids, pipe.execute(), strict=True) if not exists]
        for run_id in erased:
            query.delete_run(self.db.engine(), run_id)
        if erased:
            log.info("rows of runs erased while archived deleted", runs=len(erased))

    def _write(self, batch: list[archive.RunRows]) -> tuple[list[archive.RunRows], list[archive.RunRows]]:
        """Write the batch in one transaction: (written, refused). When the database refuses the
        batch's data (not its connection), each run is written alone, so one run it cannot take
        does not hold back the others; the runs it refuses are retried like a failed batch."""
        engine = self.db.engine()
        try:
            archive.write_batch(engine, batch)
            return batch, []
        except (DataError, IntegrityError) as exc:
            log.warning(
                "archive batch refused; writing its runs one by one", error=describe_error(exc, self.db.url)
            )
        written, refused = [], []
        for rows in batch:
            try:
                archive.write_batch(engine, [rows])
                written.append(rows)
            except (DataError, IntegrityError) as exc:
                refused.append(rows)
                log.warning(
                    "run refused by the run history",
                    run_id=rows.run["id"],
                    error=describe_error(exc, self.db.url),
                )
        return written, refused

    def purge_due(self, holder: str) -> int | None:
        """The daily purge, done by one agent worker: the one that takes the purge lock (for
        `archive.purge_every_s`). Deletes the runs that finished more than
        FLEET_HISTORY_RETENTION_DAYS ago; None when another holds the lock. A failed purge lets
        the lock lapse after `archive.retry_max_s`, so it is tried again soon."""
        section = self.settings.archive
        lock = self.keys.history_purge_lock()
        if not self.r.set(lock, holder, nx=True, ex=section.purge_every_s):
            return None
        before = datetime.now(UTC) - timedelta(days=self.settings.history_retention_days)
        try:
            deleted = archive.purge(self.db.engine(), before, section.purge_batch)
        except (SQLAlchemyError, OSError) as exc:
            self.r.expire(lock, max(1, int(section.retry_max_s)))
            log.warning(
                "history purge failed", database=self.db.display_url, error=describe_error(exc, self.db.url)
            )
            return None
        log.info("history purged", runs=deleted, before=before.isoformat())
        return deleted
