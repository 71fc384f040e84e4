"""worker/history/query.py against SQLite and a real PostgreSQL (tests/pg.py): the list of a tenant's
runs (filters, order, keyset pages), the usage ledger and the deletion of a run."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, select, text

from tests.history_rows import history_rows, insert_rows, insert_runs, make_record
from tests.pg import PostgresServer
from worker.history import query, schema

T0 = datetime(2026, 11, 26, 9, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty history (the tables of `schema`) on each database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'history.db'}"
    else:
        url = request.getfixturevalue("postgres").url
    engine = create_engine(url)
    schema.metadata.drop_all(engine)
    schema.metadata.create_all(engine)
    yield engine
    engine.dispose()


def ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in records]


def all_pages(engine: Engine, tenant: str, limit: int, **filters: Any) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        records, cursor = query.list_runs(engine, tenant, limit=limit, cursor=cursor, **filters)
        pages.append(ids(records))
        if cursor is None:
            return pages


def test_runs_come_newest_first_as_the_api_shows_them_and_only_the_tenants(engine: Engine) -> None:
    mine = [make_record("t1", created_at=T0 + timedelta(seconds=i)) for i in range(5)]
    theirs = [make_record("t2", created_at=T0 + timedelta(seconds=i)) for i in range(3)]
    insert_runs(engine, mine + theirs)
    records, cursor = query.list_runs(engine, "t1")
    assert records == list(reversed(mine))
    assert cursor is None
    assert ids(query.list_runs(engine, "t2")[0]) == ids(list(reversed(theirs)))
    assert query.list_runs(engine, "t3") == ([], None)


def test_pages_lose_and_repeat_nothing_when_many_runs_share_a_created_at(engine: Engine) -> None:
    same = [make_record(created_at=T0) for _ in range(23)]
    around = [make_record(created_at=T0 + timedelta(microseconds=d)) for d in (-1, 1, 2)]
    insert_runs(engine, same + around)
    pages = all_pages(engine, "t1", limit=5)
    seen = [run_id for page in pages for run_id in page]
    assert len(seen) == len(set(seen)) == 26
    assert [len(p) for p in pages] == [5, 5, 5, 5, 5, 1]
    expected = sorted(same + around, key=lambda r: (r["created_at"], r["id"]), reverse=True)
    assert seen == ids(expected)


def test_a_page_that_ends_exactly_at_the_last_run_has_no_next_cursor(engine: Engine) -> None:
    insert_runs(engine, [make_record(created_at=T0 + timedelta(seconds=i)) for i in range(4)])
    assert all_pages(engine, "t1", limit=2)[-1] != []
    assert len(all_pages(engine, "t1", limit=2)) == 2
    assert query.list_runs(engine, "t1", limit=4)[1] is None


def test_each_filter_and_their_combination(engine: Engine) -> None:
    def run(i: int, **kw: Any) -> dict[str, Any]:
        return make_record(created_at=T0 + timedelta(minutes=i), **kw)

    a = run(0, agent="alpha", metadata={"tier": "gold", "priority": 2})
    b = run(1, agent="beta", status="failed", stop_reason="error", metadata={"tier": "gold"})
    c = run(2, agent="alpha", status="stopped", stop_reason="max_steps", metadata={"tier": "silver"})
    d = run(3, agent="alpha", metadata={"tier": "gold", "priority": "2", "zip": "01234"})
    other = make_record("t2", "alpha", created_at=T0, metadata={"tier": "gold"})
    insert_runs(engine, [a, b, c, d, other])

    def found(**filters: Any) -> list[str]:
        return ids(query.list_runs(engine, "t1", **filters)[0])

    assert found(agent="alpha") == ids([d, c, a])
    assert found(status="failed") == ids([b])
    assert found(stop_reason="max_steps") == ids([c])
    assert found(since=T0 + timedelta(minutes=1)) == ids([d, c, b])  # since is inclusive
    assert found(until=T0 + timedelta(minutes=1)) == ids([a])  # until is exclusive
    assert found(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3)) == ids([c, b])
    assert found(metadata={"tier": "gold"}) == ids([d, b, a])
    assert found(metadata={"tier": '"gold"'}) == ids([d, b, a])  # the same, as a JSON string
    assert found(metadata={"priority": "2"}) == ids([a])  # JSON: the number 2
    assert found(metadata={"priority": '"2"'}) == ids([d])  # the string "2"
    assert found(metadata={"zip": '"01234"'}) == ids([d])
    assert found(metadata={"tier": "gold", "priority": "2"}) == ids([a])
    assert found(metadata={"tier": "gold"}, agent="alpha") == ids([d, a])
    assert found(
        metadata={"tier": "gold"}, agent="alpha", status="succeeded", until=T0 + timedelta(minutes=3)
    ) == ids([a])
    assert found(metadata={"tier": "bronze"}) == []
    assert found(agent="alpha", status="failed") == []


def test_metadata_pages_follow_the_cursor_across_equal_created_at(engine: Engine) -> None:
    tagged = [make_record(created_at=T0, metadata={"batch": 7}) for _ in range(7)]
    insert_runs(engine, tagged + [make_record(created_at=T0, metadata={"batch": 8}) for _ in range(5)])
    pages = all_pages(engine, "t1", limit=3, metadata={"batch": "7"})
    assert [run_id for page in pages for run_id in page] == sorted(ids(tagged), reverse=True)


def test_times_in_any_zone_compare_as_the_same_instant(engine: Engine) -> None:
    insert_runs(engine, [make_record(created_at=T0 + timedelta(hours=i)) for i in range(3)])
    plus_two = T0.astimezone(UTC).replace(tzinfo=None)
    from datetime import timezone

    since = (plus_two + timedelta(hours=3)).replace(tzinfo=timezone(timedelta(hours=2)))  # = T0 + 1 h
    assert len(query.list_runs(engine, "t1", since=since)[0]) == 2
    far = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))  # before year 1 in UTC: clamped
    assert len(query.list_runs(engine, "t1", since=far)[0]) == 3


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "WyJ4IiwieSJd"}, "cursor"),  # ["x","y"]
        ({"cursor": query.encode_cursor(T0, "nothex")}, "cursor"),
        ({"cursor": "x" * 201}, "cursor"),
        ({"metadata": {"": "v"}}, "metadata."),
        ({"metadata": {"k" * 201: "v"}}, "metadata." + "k" * 40),
        ({"metadata": {"k": "v" * 1000}}, "metadata.k"),
        ({"metadata": {f"k{i}": "v" for i in range(11)}}, "metadata"),
    ],
)
def test_bad_inputs_raise_a_query_error_naming_the_parameter(
    engine: Engine, kwargs: dict[str, Any], param: str
) -> None:
    with pytest.raises(query.QueryError) as raised:
        query.list_runs(engine, "t1", **kwargs)
    assert raised.value.param == param


def test_a_cursor_round_trips_and_is_url_safe() -> None:
    cursor = query.encode_cursor(T0 + timedelta(microseconds=7), "ab" * 16)
    assert cursor.replace("-", "").replace("_", "").isalnum()
    assert query.decode_cursor(cursor) == (T0 + timedelta(microseconds=7), "ab" * 16)


def _ledger(engine: Engine) -> None:
    day1, day2 = T0, T0 + timedelta(days=1)
    runs = [
        (make_record("t1", "alpha", created_at=day1, steps=3, tool_calls=2), None),
        (make_record("t1", "beta", created_at=day1, steps=1, tokens=300, cost_usd=0.0012),
         {"gpt-4o-mini": (300, 1200)}),
        (make_record("t1", "alpha", created_at=day2, steps=2, tool_calls=1, tokens=50, cost_usd=0.5),
         {"gpt-4o-mini": (20, 100_000), "gpt-4o": (30, 400_000)}),
        (make_record("t2", "alpha", created_at=day1, steps=9, tool_calls=9), None),
    ]  # fmt: skip
    with engine.begin() as conn:
        insert_rows(conn, (history_rows(record, models=models) for record, models in runs))


def test_usage_groups_by_agent_day_and_model_within_the_days_asked(engine: Engine) -> None:
    _ledger(engine)
    d1, d2 = T0.date(), T0.date() + timedelta(days=1)
    by_agent = query.usage(engine, "t1", start=d1, end=d2, group_by="agent")
    assert by_agent == [
        {"agent": "alpha", "steps": 5, "tool_calls": 3, "tokens": 50, "cost_usd": 0.5},
        {"agent": "beta", "steps": 1, "tool_calls": 0, "tokens": 300, "cost_usd": 0.0012},
    ]
    by_day = query.usage(engine, "t1", start=d1, end=d2, group_by="day")
    assert by_day == [
        {"day": d1.isoformat(), "steps": 4, "tool_calls": 2, "tokens": 300, "cost_usd": 0.0012},
        {"day": d2.isoformat(), "steps": 2, "tool_calls": 1, "tokens": 50, "cost_usd": 0.5},
    ]
    by_model = query.usage(engine, "t1", start=d1, end=d2, group_by="model")
    assert by_model == [
        {"model": "", "steps": 6, "tool_calls": 3, "tokens": 0, "cost_usd": 0.0},
        {"model": "gpt-4o", "steps": 0, "tool_calls": 0, "tokens": 30, "cost_usd": 0.4},
        {"model": "gpt-4o-mini", "steps": 0, "tool_calls": 0, "tokens": 320, "cost_usd": 0.1012},
    ]
    assert query.usage(engine, "t1", start=d2, end=d2, group_by="agent") == [
        {"agent": "alpha", "steps": 2, "tool_calls": 1, "tokens": 50, "cost_usd": 0.5}
    ]
    every_tenant = query.usage(engine, None, start=d1, end=d1, group_by="agent")
    assert every_tenant[0] == {"agent": "alpha", "steps": 12, "tool_calls": 11, "tokens": 0, "cost_usd": 0.0}
    assert query.usage(engine, "t1", start=d2, end=d1, group_by="day") == []
    assert query.usage(engine, "t1", start=date(2000, 1, 1), end=date(2000, 1, 2), group_by="day") == []
    with pytest.raises(query.QueryError, match="group_by"):
        query.usage(engine, "t1", start=d1, end=d2, group_by="tenant")


def test_delete_removes_the_run_and_all_its_rows_and_only_the_owners(engine: Engine) -> None:
    record = make_record(created_at=T0, metadata={"k": "v"})
    kept = make_record(created_at=T0, metadata={"k": "v"})
    with engine.begin() as conn:
        insert_rows(
            conn, [history_rows(record, [{"step": 1}, {"step": 2}]), history_rows(kept, [{"step": 1}])]
        )
    assert query.delete_run(engine, record["id"], tenant="t2") is False
    assert query.delete_run(engine, record["id"], tenant="t1") is True
    assert query.delete_run(engine, record["id"]) is False
    with engine.connect() as conn:
        for table in (schema.run_steps, schema.run_metadata, schema.run_usage):
            left = conn.execute(select(table.c.run_id).distinct()).scalars().all()
            assert left == [kept["id"]], table.name
        assert conn.execute(select(func.count()).select_from(schema.runs)).scalar() == 1
    assert ids(query.list_runs(engine, "t1")[0]) == [kept["id"]]


def test_postgres_pages_walk_an_index_and_sort_nothing(postgres: PostgresServer) -> None:
    """EXPLAIN of a deep page, unfiltered, by agent, by status and by metadata: each walks its index
    (no Seq Scan), in the page's order where the rows are many. 20,000 runs, so the planner
    prefers indexes as it would on a full table (bench/bench_history_query.py times 1,000,000)."""
    engine = create_engine(postgres.url)
    schema.metadata.drop_all(engine)
    schema.metadata.create_all(engine)
    agents, statuses = ["alpha", "beta", "gamma", "delta"], ["succeeded", "failed", "stopped"]
    with engine.begin() as conn:
        insert_rows(conn, (
            history_rows(make_record(
                f"t{i % 5}", agents[i % 4], created_at=T0 + timedelta(seconds=i), status=statuses[i % 3],
                metadata={"customer": f"c{i % 200}"},
            ))
            for i in range(20_000)
        ))  # fmt: skip
        conn.execute(text("ANALYZE"))
    cursor = query.encode_cursor(T0 + timedelta(seconds=15_000), "f" * 32)
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "runs_tenant_created"),
        ({"agent": "beta"}, "runs_tenant_agent_created"),
        ({"status": "failed"}, "runs_tenant_status_created"),
        ({"metadata": {"customer": "c1"}}, "run_metadata_lookup"),
    ]
    try:
        for filters, index in cases:
            plan = explain(engine, "t1", cursor, filters)
            assert index in plan and "Seq Scan" not in plan, (filters, plan)
            # A sort may only order the few rows of one metadata value, never a tenant's runs.
            assert "Sort" not in plan or "metadata" in filters, (filters, plan)
    finally:
        engine.dispose()


def explain(engine: Engine, tenant: str, cursor: str, filters: dict[str, Any]) -> str:
    """The plan PostgreSQL picks for `list_runs`'s query (captured as it is sent)."""
    from sqlalchemy import event

    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor_: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and not captured:
            captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        query.list_runs(engine, tenant, cursor=cursor, **filters)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = captured[0]
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        with raw.cursor() as cur:
            cur.execute("EXPLAIN " + statement, parameters)
            return "\n".join(row[0] for row in cur.fetchall())
