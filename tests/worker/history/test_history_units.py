"""The run history's parts without a fleet: the archive queue's scripts (fakeredis[lua]), the
rows written per run, the retention purge on SQLite, the migrations against `schema.metadata`
on SQLite and on a real PostgreSQL (tests/pg.py), the database URL and its masking, and the
alert rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import yaml
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, func, select

from tests.harness import ROOT, RedisServer
from tests.pg import PostgresServer
from worker.history import archive
from worker.history.db import HistoryDB, describe_error, make_engine, masked, parse_url, upgrade
from worker.history.queue import ArchiveQueue, Scheduler, hot_keys
from worker.history.schema import metadata, run_metadata, run_steps, run_usage, runs
from worker.keys import Keys
from worker.settings import Settings

KEYS = Keys("fleet")


@pytest.fixture
def r() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis(decode_responses=True)
    yield client
    client.close()


def _ended(r: fakeredis.FakeRedis, run_id: str, now: float) -> None:
    """What the end script writes: the run in both archive zsets, its keys with the full TTL."""
    r.zadd(KEYS.archive_due(), {run_id: now})
    r.zadd(KEYS.archive_ended(), {run_id: now})
    r.hset(KEYS.run(run_id), mapping={"status": "succeeded"})
    r.expire(KEYS.run(run_id), 7 * 86400)
    r.rpush(KEYS.run_steps(run_id), "{}")
    r.expire(KEYS.run_steps(run_id), 7 * 86400)


# -- the archive queue (Lua) --------------------------------------------------------------------


def test_claim_takes_due_runs_and_moves_them_ahead(r: fakeredis.FakeRedis) -> None:
    queue = ArchiveQueue(r, KEYS)
    for i in range(5):
        _ended(r, f"run{i}", 100.0 + i)
    assert queue.claim_due(3, now=103.0, claim_s=60) == ["run0", "run1", "run2"]
    assert queue.claim_due(10, now=103.0, claim_s=60) == ["run3"], "claimed runs are not due again"
    assert r.zscore(KEYS.archive_due(), "run0") == pytest.approx(163.0)
    assert sorted(queue.claim_due(10, now=170.0, claim_s=60)) == ["run0", "run1", "run2", "run3", "run4"], (
        "a claim that lapsed (its batch was lost) is claimed again"
    )
    assert r.zcard(KEYS.archive_ended()) == 5, "a claim leaves the lag's zset alone"


def test_settle_gives_hot_ttl_once_and_counts_once(r: fakeredis.FakeRedis) -> None:
    queue = ArchiveQueue(r, KEYS)
    _ended(r, "run0", 100.0)
    r.set(KEYS.run_cancel("run0"), "x", ex=60)  # already shorter than the hot TTL: left alone
    run_keys = [KEYS.run("run0"), KEYS.run_steps("run0"), KEYS.run_cancel("run0"), KEYS.run_events("run0")]
    assert queue.settle([("run0", "archived", run_keys)], hot_ttl_s=300) == []
    assert 0 < r.ttl(KEYS.run("run0")) <= 300 and 0 < r.ttl(KEYS.run_steps("run0")) <= 300
    assert r.ttl(KEYS.run_cancel("run0")) <= 60
    assert not r.exists(KEYS.run_events("run0")), "a missing key is not created"
    assert r.zcard(KEYS.archive_due()) == 0 and r.zcard(KEYS.archive_ended()) == 0
    assert queue.settle([("run0", "archived", run_keys)], hot_ttl_s=300) == ["run0"], "a second batch with it"
    assert queue.counts() == {"archived": 1, "lost": 0, "failed": 0}


def test_settle_of_a_lost_run_drops_it_and_counts_it(r: fakeredis.FakeRedis) -> None:
    queue = ArchiveQueue(r, KEYS)
    r.zadd(KEYS.archive_due(), {"gone": 1.0})
    r.zadd(KEYS.archive_ended(), {"gone": 1.0})
    assert queue.settle([("gone", "lost", [])], hot_ttl_s=300) == []
    assert queue.backlog(now=10.0) == (0, 0.0)
    assert queue.counts()["lost"] == 1


def test_retry_backs_off_exponentially_up_to_the_cap(r: fakeredis.FakeRedis) -> None:
    queue = ArchiveQueue(r, KEYS)
    _ended(r, "run0", 100.0)
    delays = []
    for _ in range(9):
        queue.retry(["run0", "settled-meanwhile"], first_s=1.0, longest_s=60.0, now=1000.0)
        delays.append(r.zscore(KEYS.archive_due(), "run0") - 1000.0)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert r.zscore(KEYS.archive_due(), "settled-meanwhile") is None, "a settled run is not re-added"
    assert queue.counts()["failed"] == 9
    assert r.ttl(KEYS.run("run0")) > 6 * 86400, "the run keeps its full TTL until archived"
    queue.settle([("run0", "archived", [])], hot_ttl_s=300)
    assert not r.hexists(KEYS.archive_failures(), "run0"), "the failure count goes with the run"


def test_backlog_is_the_pending_count_and_the_oldest_end(r: fakeredis.FakeRedis) -> None:
    queue = ArchiveQueue(r, KEYS)
    assert queue.backlog(now=50.0) == (0, 0.0)
    _ended(r, "a", 10.0)
    _ended(r, "b", 30.0)
    queue.claim_due(10, now=40.0)  # a claim does not make the lag look smaller
    assert queue.backlog(now=50.0) == (2, 40.0)


def test_scheduler_sends_full_batches_until_none_is_due(r: fakeredis.FakeRedis) -> None:
    for i in range(7):
        _ended(r, f"run{i}", 1.0)
    sent: list[list[str]] = []
    assert Scheduler(ArchiveQueue(r, KEYS), sent.append, batch=3).tick() == 7
    assert [len(b) for b in sent] == [3, 3, 1]


def test_end_script_enqueues_the_run_for_the_archive(r: fakeredis.FakeRedis) -> None:
    from worker.run.store import Budgets, RunStore

    store = RunStore(r, KEYS, ttl_s=3600)
    for run_id in ("done", "cancelled"):
        store.create(run_id, tenant="t1", agent="scripted", input={}, budgets=Budgets(5, 5, 5), metadata={})
    assert store.finish("done", "succeeded", "finish", output="ok")
    assert store.cancel("cancelled") == "queued"
    assert not store.finish("done", "failed", "error"), "a run ends once"
    assert sorted(r.zrange(KEYS.archive_due(), 0, -1)) == ["cancelled", "done"]
    assert r.zcard(KEYS.archive_ended()) == 2


def test_hot_keys_name_the_run_and_its_calls() -> None:
    found = hot_keys(KEYS, "abc", steps=2)
    assert {KEYS.run("abc"), KEYS.run_steps("abc"), KEYS.run_events("abc")} <= set(found)
    assert KEYS.call("abc:1:0") in found and KEYS.call("abc:2:0") in found


# -- the rows of a run ----------------------------------------------------------------------------


def raw_run(run_id: str = "a" * 32, **extra: Any) -> dict[str, str]:
    fields = {
        "id": run_id,
        "tenant": "t1",
        "agent": "llm",
        "status": "succeeded",
        "stop_reason": "finish",
        "input": "{}",
        "output": json.dumps("done"),
        "budgets": json.dumps({"max_steps": 5}),
        "metadata": json.dumps({"order": "o-1", "n": 3, "long": "x" * 2000}),
        "created_ts": "1796000000.0",
        "started_ts": "1796000001.0",
        "finished_ts": "1796000003.5",
        "steps": "3",
        "tool_calls": "1",
        "tokens": "150",
        "cost_micro": "900",
    }
    return {**fields, **extra}


STEPS = [
    {
        "step": 1,
        "action": "model",
        "tool": "llm",
        "ok": True,
        "model": "m-1",
        "tokens": 100,
        "cost_usd": 0.0006,
    },
    {"step": 2, "action": "tool", "tool": "echo", "ok": True, "decision": {"outcome": "allowed"}},
    {
        "step": 3,
        "action": "model",
        "tool": "llm",
        "ok": True,
        "model": "m-1",
        "tokens": 30,
        "cost_usd": 0.0002,
    },
]


def test_rows_hold_what_the_api_shows() -> None:
    from worker.run.store import public_view

    rows = archive.rows_for(raw_run(), STEPS, now=1796000010.0)
    assert rows.run["record"] == public_view(raw_run())
    assert rows.run["finished_at"] == datetime.fromtimestamp(1796000003.5, tz=UTC)
    assert [s["entry"] for s in rows.steps] == STEPS and [s["position"] for s in rows.steps] == [0, 1, 2]
    assert {m["key"]: m["value"] for m in rows.metadata} == {"order": '"o-1"', "n": "3"}, (
        "a value longer than the column stays in the record only"
    )


def test_usage_has_a_row_per_model_and_the_rest_under_the_empty_model() -> None:
    rows = archive.rows_for(raw_run(), STEPS, now=1796000010.0)
    by_model = {u["model"]: u for u in rows.usage}
    assert by_model["m-1"]["steps"] == 2 and by_model["m-1"]["tokens"] == 130
    assert by_model["m-1"]["cost_micro"] == 800
    assert by_model[""] | {"run_id": None} == by_model[""] | {
        "run_id": None,
        "steps": 1,
        "tool_calls": 1,
        "tokens": 20,
        "cost_micro": 100,
    }
    assert sum(u["tokens"] for u in rows.usage) == 150 and sum(u["cost_micro"] for u in rows.usage) == 900
    assert sum(u["steps"] for u in rows.usage) == 3


# -- the database ---------------------------------------------------------------------------------


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'history.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def _schema_differences(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def test_migrations_make_exactly_the_schema_on_sqlite(sqlite_engine: Engine) -> None:
    upgrade(sqlite_engine)  # a second upgrade is a no-op
    assert _schema_differences(sqlite_engine) == []
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.close()


def test_migrations_make_exactly_the_schema_on_postgresql(pg: PostgresServer) -> None:
    engine = make_engine(pg.url)
    upgrade(engine)
    upgrade(engine)
    assert _schema_differences(engine) == []
    engine.dispose()


def test_a_run_the_database_refuses_does_not_hold_back_its_batch(
    r: fakeredis.FakeRedis, pg: PostgresServer
) -> None:
    from worker.history.archiver import Archiver

    good, bad = "b" * 32, "c" * 32
    for run_id, tenant in ((good, "t1"), (bad, "t" * 300)):  # run tenants are 200 characters at most
        r.hset(KEYS.run(run_id), mapping=raw_run(run_id, tenant=tenant))
        r.expire(KEYS.run(run_id), 7 * 86400)
        r.zadd(KEYS.archive_due(), {run_id: 1.0})
        r.zadd(KEYS.archive_ended(), {run_id: 1.0})
    db = HistoryDB(pg.url)
    archiver = Archiver(r, KEYS, ArchiveQueue(r, KEYS), db, Settings(hot_ttl_s=300))
    assert archiver.archive_runs([good, bad]) == 1
    assert archive.load_run(db.engine(), good) is not None and archive.load_run(db.engine(), bad) is None
    assert 0 < r.ttl(KEYS.run(good)) <= 300 and r.ttl(KEYS.run(bad)) > 300
    assert r.zrange(KEYS.archive_ended(), 0, -1) == [bad], "the refused run waits for a retry"
    assert r.zscore(KEYS.archive_due(), bad) > 1.0, "after a backoff"
    db.dispose()


def test_a_batch_written_twice_is_stored_once(sqlite_engine: Engine) -> None:
    batch = [archive.rows_for(raw_run(), STEPS, now=1796000010.0)]
    archive.write_batch(sqlite_engine, batch)
    archive.write_batch(sqlite_engine, batch)
    with sqlite_engine.connect() as conn:
        counts = [
            conn.execute(select(func.count()).select_from(t)).scalar() for t in (runs, run_steps, run_usage)
        ]
    assert counts == [1, 3, 2]
    record, steps = archive.load_run(sqlite_engine, "a" * 32, with_steps=True) or ({}, [])
    assert record["output"] == "done" and steps == STEPS


def test_purge_deletes_old_runs_only_in_batches(sqlite_engine: Engine) -> None:
    now = datetime.now(UTC).timestamp()
    old = [raw_run(f"{i:032x}", finished_ts=repr(now - 100 * 86400)) for i in range(25)]
    new = [raw_run(f"{i + 100:032x}", finished_ts=repr(now - 10 * 86400)) for i in range(5)]
    archive.write_batch(sqlite_engine, [archive.rows_for(raw, STEPS, now) for raw in old + new])
    statements: list[str] = []

    from sqlalchemy import event

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("DELETE FROM runs"):
            statements.append(statement)

    event.listen(sqlite_engine, "before_cursor_execute", count)
    deleted = archive.purge(sqlite_engine, datetime.now(UTC) - timedelta(days=90), batch=10)
    event.remove(sqlite_engine, "before_cursor_execute", count)
    assert deleted == 25
    assert len(statements) == 3, "10 + 10 + 5 runs, one transaction each"
    with sqlite_engine.connect() as conn:
        left = set(conn.execute(select(runs.c.id)).scalars())
        children = {
            t.name: set(conn.execute(select(t.c.run_id)).scalars())
            for t in (run_steps, run_usage, run_metadata)
        }
    assert left == {raw["id"] for raw in new}
    assert all(ids == left for ids in children.values()), "steps, usage and metadata go with their run"


def test_history_db_migrates_on_first_use_and_retries_after_a_failure(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the database's folder should be
    db = HistoryDB(f"sqlite:///{blocked / 'history.db'}")
    with pytest.raises(OSError):  # the folder cannot be made
        db.engine()
    blocked.unlink()
    assert _schema_differences(db.engine()) == []


# -- the URL ----------------------------------------------------------------------------------------


def test_database_url_comes_from_env_file_or_the_sqlite_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("FLEET_DATABASE_URL", "FLEET_DATABASE_URL_FILE", "FLEET_DATA_DIR", "FLEET_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLEET_DATA_DIR", str(tmp_path))
    assert Settings().history_database_url() == f"sqlite:///{tmp_path / 'history.db'}"
    secret = tmp_path / "db_url"
    secret.write_text("postgresql://fleet:s3cr3t-pw@db:5432/fleet\n")
    monkeypatch.setenv("FLEET_DATABASE_URL_FILE", str(secret))
    assert Settings().history_database_url() == "postgresql://fleet:s3cr3t-pw@db:5432/fleet"
    monkeypatch.setenv("FLEET_DATABASE_URL", "sqlite:///x.db")
    assert Settings().history_database_url() == "sqlite:///x.db"


def test_the_password_is_never_shown() -> None:
    url = "postgresql://fleet:s3cr3t-pw@db:5432/fleet"
    assert "s3cr3t-pw" not in masked(url) and "***" in masked(url) and "db:5432" in masked(url)
    assert parse_url(url).drivername == "postgresql+psycopg"
    assert "s3cr3t-pw" not in describe_error(RuntimeError(f"failed for {url}"), url)
    with pytest.raises(ValueError) as refused:
        parse_url("mysql://u:s3cr3t-pw@h/db")
    assert "s3cr3t-pw" not in str(refused.value)


def test_fleet_config_masks_the_database_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fleetcli.main import main

    monkeypatch.delenv("FLEET_CONFIG", raising=False)
    monkeypatch.setenv("FLEET_DATABASE_URL", "postgresql+psycopg://fleet:s3cr3t-pw@db:5432/fleet")
    assert main(["config"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["database_url"] == "postgresql+psycopg://fleet:***@db:5432/fleet"


# -- alerts ---------------------------------------------------------------------------------------


def test_alerts_use_only_metrics_the_api_exports() -> None:
    import re

    from api.metrics import FleetCollector

    rules = yaml.safe_load((ROOT / "ops" / "prometheus" / "alerts.yml").read_text())
    server = RedisServer()  # INFO memory: fakeredis has no INFO
    try:
        exported = set()
        for family in FleetCollector(
            server.client(), KEYS, max_seconds=60
        ).collect():  # as /metrics builds it
            # the series names a family exposes, whether or not it has samples on an empty fleet
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(
                family.type, [""]
            )
            exported |= {family.name + suffix for suffix in suffixes}
    finally:
        server.close()
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert {"FleetArchiveLagging", "FleetRedisMemoryHigh"} <= set(alerts)
    for rule in alerts.values():
        names = set(re.findall(r"\bfleet_[a-z_]+", rule["expr"]))
        assert names and names <= exported, f"{rule['alert']}: {names - exported} not exported"
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]


def test_a_run_erased_while_its_batch_is_written_is_not_left_in_the_history(
    r: fakeredis.FakeRedis, tmp_path: Path
) -> None:
    from worker.history.archiver import Archiver
    from worker.run.erase import erase_run

    erased, kept = "d" * 32, "e" * 32
    for run_id in (erased, kept):
        r.hset(KEYS.run(run_id), mapping=raw_run(run_id))
        r.zadd(KEYS.archive_due(), {run_id: 1.0})
        r.zadd(KEYS.archive_ended(), {run_id: 1.0})

    class ErasedMeanwhile(ArchiveQueue):
        def settle(self, outcomes: Any, hot_ttl_s: int) -> list[str]:
            erase_run(r, KEYS, erased)  # DELETE /v1/runs/{id} between the batch's write and its settle
            return super().settle(outcomes, hot_ttl_s)

    db = HistoryDB(f"sqlite:///{tmp_path / 'history.db'}")
    assert (
        Archiver(r, KEYS, ErasedMeanwhile(r, KEYS), db, Settings(hot_ttl_s=300)).archive_runs([erased, kept])
        == 2
    )
    assert archive.load_run(db.engine(), erased) is None, "an erased run came back into the history"
    assert archive.load_run(db.engine(), kept) is not None
    # a second batch of a run already settled (a claim that lapsed) keeps its rows
    assert Archiver(r, KEYS, ArchiveQueue(r, KEYS), db, Settings(hot_ttl_s=300)).archive_runs([kept]) == 1
    assert archive.load_run(db.engine(), kept) is not None
    db.dispose()


def test_the_daily_purge_applies_the_retention_setting_once_per_period(
    r: fakeredis.FakeRedis, tmp_path: Path
) -> None:
    from worker.history.archiver import Archiver

    now = datetime.now(UTC).timestamp()
    db = HistoryDB(f"sqlite:///{tmp_path / 'history.db'}")
    old, recent = (
        raw_run("f" * 32, finished_ts=repr(now - 40 * 86400)),
        raw_run("0" * 32, finished_ts=repr(now)),
    )
    archive.write_batch(db.engine(), [archive.rows_for(raw, STEPS, now) for raw in (old, recent)])
    settings = Settings(history_retention_days=30)
    first = Archiver(r, KEYS, ArchiveQueue(r, KEYS), db, settings)
    assert first.purge_due("worker-a") == 1
    assert archive.load_run(db.engine(), old["id"]) is None and archive.load_run(db.engine(), recent["id"])
    # another agent worker in the same period finds the purge done: it does not purge again
    assert Archiver(r, KEYS, ArchiveQueue(r, KEYS), db, settings).purge_due("worker-b") is None
    assert 0 < r.ttl(KEYS.history_purge_lock()) <= settings.archive.purge_every_s
    db.dispose()
