"""GET /v1/runs, GET /v1/usage and DELETE /v1/runs/{id} against a real `fleet api` (and workers),
with FLEET_DATABASE_URL naming a populated SQLite file or a real PostgreSQL; `fleet runs` and
`fleet usage` through that API."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, func, select

from tests.harness import KEY_T1, KEY_T2, ROOT, Fleet, RedisServer, wait_for
from tests.history_rows import insert_runs, make_record
from tests.pg import PostgresServer
from worker.history import schema
from worker.history.db import upgrade
from worker.keys import Keys

KEYS = Keys("fleet")

ADMIN_KEY = "admin-key-for-history-0001"
T0 = datetime(2026, 11, 2, 8, 0, 0, tzinfo=UTC)
MINE = [
    make_record(
        "t1",
        "alpha" if i % 3 else "beta",
        created_at=T0 + timedelta(minutes=i // 2),  # pairs share a created_at
        status="failed" if i % 5 == 0 else "succeeded",
        stop_reason="error" if i % 5 == 0 else "finish",
        metadata={"ticket": f"T-{i % 4}", "priority": i % 2},
        steps=2,
        tool_calls=1,
        tokens=100,
        cost_usd=0.25,
    )
    for i in range(30)
]
THEIRS = [make_record("t2", "alpha", created_at=T0, metadata={"ticket": "T-1"}, steps=7) for _ in range(4)]


def populate(engine: Engine) -> None:
    upgrade(engine)  # as the API would: its first use finds the schema at the newest revision
    insert_runs(engine, MINE + THEIRS)


@pytest.fixture(scope="module")
def fleet() -> Iterator[tuple[Fleet, Engine]]:
    """API, an agent worker and a tool worker; the history is an SQLite file with MINE and THEIRS."""
    folder = Path(tempfile.mkdtemp(prefix="fleet-history-"))
    url = f"sqlite:///{folder / 'history.db'}"
    engine = create_engine(url)
    populate(engine)
    server = RedisServer()
    fleet = Fleet(server, {}, {"FLEET_DATABASE_URL": url, "FLEET_ADMIN_KEYS": ADMIN_KEY})
    try:
        fleet.start(workers=1, concurrency=2)
        yield fleet, engine
    finally:
        fleet.close()
        server.close()
        engine.dispose()


def newest_first(records: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in sorted(records, key=lambda r: (r["created_at"], r["id"]), reverse=True)]


def get(fleet: Fleet, path: str, key: str = KEY_T1, **params: Any) -> httpx.Response:
    with fleet.client(key) as c:
        return c.get(path, params=params)


# -- GET /v1/runs ----------------------------------------------------------------------------------


def test_pages_of_the_tenants_runs_newest_first_lose_and_repeat_nothing(fleet: tuple[Fleet, Engine]) -> None:
    api, _ = fleet
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        resp = get(api, "/v1/runs", **params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert len(page["runs"]) <= 7
        seen += [run["id"] for run in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == newest_first(MINE)
    first = get(api, "/v1/runs", limit=1).json()["runs"][0]
    assert first == next(r for r in MINE if r["id"] == seen[0])  # the record as GET /v1/runs/{id} shows it


def test_filters_combine_and_metadata_values_read_as_json_or_text(fleet: tuple[Fleet, Engine]) -> None:
    api, _ = fleet

    def found(**params: Any) -> list[str]:
        resp = get(api, "/v1/runs", limit=1000, **params)
        assert resp.status_code == 200, resp.text
        return [run["id"] for run in resp.json()["runs"]]

    def expect(predicate: Any) -> list[str]:
        return newest_first([r for r in MINE if predicate(r)])

    assert found(agent="beta") == expect(lambda r: r["agent"] == "beta")
    assert found(status="failed") == expect(lambda r: r["status"] == "failed")
    assert found(stop_reason="finish", agent="alpha") == expect(
        lambda r: r["stop_reason"] == "finish" and r["agent"] == "alpha"
    )
    assert found(**{"metadata.ticket": "T-1"}) == expect(lambda r: r["metadata"]["ticket"] == "T-1")
    assert found(**{"metadata.ticket": "T-1", "metadata.priority": "1"}) == expect(
        lambda r: r["metadata"] == {"ticket": "T-1", "priority": 1}
    )
    assert found(**{"metadata.priority": '"1"'}) == []  # the string "1": no run has it
    since, until = T0 + timedelta(minutes=3), T0 + timedelta(minutes=6)
    window = expect(lambda r: since.isoformat() <= r["created_at"].replace("Z", "+00:00") < until.isoformat())
    assert found(since="2026-11-02T09:03:00+01:00", until=str(until.timestamp())) == window
    assert len(window) == 6


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"cursor": "bm90LWEtY3Vyc29y"}, "cursor"),
        ({"since": "2026-11-02T09:00:00"}, "since"),  # no zone
        ({"until": "yesterday"}, "until"),
        ({"since": "nan"}, "since"),
        ({"until": "1e300"}, "until"),
        ({"status": "running"}, "status"),
        ({"stop_reason": "bored"}, "stop_reason"),
        ({"agent": "no spaces"}, "agent"),
        ({"metadata.": "x"}, "metadata."),
        ({"metadata.k": "x" * 1001}, "metadata.k"),
        ({"metadata": "x"}, "metadata"),
    ],
)
def test_bad_parameters_are_422_naming_them(
    fleet: tuple[Fleet, Engine], params: dict[str, str], named: str
) -> None:
    resp = get(fleet[0], "/v1/runs", **params)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["type"] == "invalid_request"
    assert named in resp.json()["error"]["message"]


def test_a_metadata_key_given_twice_is_422(fleet: tuple[Fleet, Engine]) -> None:
    with fleet[0].client() as c:
        resp = c.get("/v1/runs?metadata.k=a&metadata.k=b")
    assert resp.status_code == 422 and "metadata.k" in resp.json()["error"]["message"]


def test_each_tenant_lists_its_own_runs_and_a_missing_key_is_401(fleet: tuple[Fleet, Engine]) -> None:
    api, _ = fleet
    theirs = get(api, "/v1/runs", key=KEY_T2).json()["runs"]
    assert sorted(r["id"] for r in theirs) == sorted(r["id"] for r in THEIRS)
    assert httpx.get(f"{api.url}/v1/runs").status_code == 401
    assert get(api, "/v1/runs", key=ADMIN_KEY).status_code == 401  # listing runs takes a tenant's key


# -- GET /v1/usage ---------------------------------------------------------------------------------


def test_usage_is_the_tenants_and_an_admin_may_ask_for_any_tenant(fleet: tuple[Fleet, Engine]) -> None:
    api, _ = fleet
    day = T0.date().isoformat()
    resp = get(api, "/v1/usage", **{"from": day, "to": day, "group_by": "agent"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    betas = sum(1 for r in MINE if r["agent"] == "beta")
    assert body["tenant"] == "t1" and body["from"] == body["to"] == day and body["group_by"] == "agent"
    alphas = 30 - betas
    assert body["usage"] == [
        {"agent": name, "steps": 2 * n, "tool_calls": n, "tokens": 100 * n, "cost_usd": 0.25 * n}
        for name, n in (("alpha", alphas), ("beta", betas))
    ]
    assert body["total"] == {"steps": 60, "tool_calls": 30, "tokens": 3000, "cost_usd": 7.5}
    by_day = get(api, "/v1/usage", **{"from": day, "to": day, "group_by": "day"}).json()
    assert by_day["usage"] == [{"day": day, "steps": 60, "tool_calls": 30, "tokens": 3000, "cost_usd": 7.5}]
    by_model = get(api, "/v1/usage", **{"from": day, "to": day, "group_by": "model"}).json()
    assert [row["model"] for row in by_model["usage"]] == [""]

    forbidden = get(api, "/v1/usage", tenant="t2")
    assert forbidden.status_code == 403, forbidden.text
    assert "tenant" in forbidden.json()["error"]["message"]
    assert get(api, "/v1/usage", tenant="t1", **{"from": day}).json()["total"]["steps"] == 60

    theirs = get(api, "/v1/usage", key=ADMIN_KEY, tenant="t2", **{"from": day, "to": day}).json()
    assert theirs["tenant"] == "t2" and theirs["total"]["steps"] == 28
    everyone = get(api, "/v1/usage", key=ADMIN_KEY, **{"from": day, "to": day}).json()
    assert everyone["tenant"] is None and everyone["total"]["steps"] == 88
    assert get(api, "/v1/usage", key="not-a-key-000000").status_code == 401


@pytest.mark.parametrize(
    ("params", "named"),
    [({"group_by": "tenant"}, "group_by"), ({"from": "2026-13-01"}, "from"), ({"to": "today"}, "to"),
     ({"to": "0"}, "to"), ({"tenant": "a b"}, "tenant")],
)  # fmt: skip
def test_bad_usage_parameters_are_422_naming_them(
    fleet: tuple[Fleet, Engine], params: dict[str, str], named: str
) -> None:
    resp = get(fleet[0], "/v1/usage", **params)
    assert resp.status_code == 422, resp.text
    assert named in resp.json()["error"]["message"]


# -- DELETE /v1/runs/{id} --------------------------------------------------------------------------


def run_keys(api: Fleet, run_id: str) -> list[str]:
    return sorted(str(k) for k in api.r.scan_iter(match=f"*{run_id}*", count=1000))


def rows_of(engine: Engine, run_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            table.name: conn.execute(
                select(func.count()).select_from(table).where(
                    (table.c.id if table is schema.runs else table.c.run_id) == run_id
                )
            ).scalar_one()
            for table in (schema.runs, schema.run_steps, schema.run_metadata, schema.run_usage)
        }  # fmt: skip


def test_delete_removes_an_ended_run_from_redis_and_the_history(fleet: tuple[Fleet, Engine]) -> None:
    api, engine = fleet
    plan = {"plan": [{"tool": "echo", "args": {"x": "personal data"}}, {"final": "done"}]}
    run = api.wait(api.submit("scripted", plan, metadata={"user": "u-1"})["id"])
    assert run["status"] == "succeeded"
    # The tool worker's archive writes the run to the history at its end. Wait until that batch
    # has settled (the run is off the archive queue): a DELETE racing a batch in flight is
    # answered right but its rows go only when the archiver settles (worker/run/erase.py).
    wait_for(
        lambda: (
            rows_of(engine, run["id"])["runs"] == 1
            and api.r.zscore(KEYS.archive_due(), run["id"]) is None
            and api.r.zscore(KEYS.archive_ended(), run["id"]) is None
        ),
        30,
        "the run was not archived",
    )
    keys = run_keys(api, run["id"])
    assert any(":call:" in key for key in keys) and any(key.endswith(":steps") for key in keys), keys
    assert rows_of(engine, run["id"])["run_steps"] == len(run["steps"])

    with api.client(KEY_T2) as c:
        assert c.delete(f"/v1/runs/{run['id']}").status_code == 404  # another tenant's
    with api.client() as c:
        resp = c.delete(f"/v1/runs/{run['id']}")
        assert resp.status_code == 204, resp.text
        assert resp.content == b""
        assert c.delete(f"/v1/runs/{run['id']}").status_code == 404
        assert c.get(f"/v1/runs/{run['id']}").status_code == 404
    assert run_keys(api, run["id"]) == []
    assert rows_of(engine, run["id"]) == {"runs": 0, "run_steps": 0, "run_metadata": 0, "run_usage": 0}


def test_delete_of_a_run_only_the_history_holds(fleet: tuple[Fleet, Engine]) -> None:
    api, engine = fleet
    record = make_record("t1", created_at=T0 - timedelta(days=400))
    insert_runs(engine, [record])
    with api.client() as c:
        assert c.delete(f"/v1/runs/{record['id']}").status_code == 204
    assert rows_of(engine, record["id"])["runs"] == 0
    assert record["id"] not in [r["id"] for r in get(api, "/v1/runs", limit=1000).json()["runs"]]


def test_delete_of_a_queued_or_running_run_is_409_and_unknown_ids_404(fleet: tuple[Fleet, Engine]) -> None:
    api, _ = fleet
    run = api.submit("scripted", {"plan": [{"sleep": 30}, {"final": "late"}]})
    api.wait_status(run["id"], "running")
    with api.client() as c:
        resp = c.delete(f"/v1/runs/{run['id']}")
        assert resp.status_code == 409, resp.text
        assert "running" in resp.json()["error"]["message"]
        assert c.post(f"/v1/runs/{run['id']}/cancel").status_code == 202
        assert api.wait(run["id"])["status"] == "cancelled"
        assert c.delete(f"/v1/runs/{run['id']}").status_code == 204
        assert c.delete("/v1/runs/" + "0" * 32).status_code == 404
        assert c.delete("/v1/runs/not-an-id").status_code == 404


# -- the CLI ---------------------------------------------------------------------------------------


def fleet_cli(api: Fleet, *args: str, key: str = KEY_T1) -> subprocess.CompletedProcess[str]:
    env = {**api.env, "FLEET_API_URL": api.url, "FLEET_API_KEY": key}
    return subprocess.run(
        [sys.executable, "-m", "fleetcli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fleet_runs_pages_and_filters_through_the_api(fleet: tuple[Fleet, Engine]) -> None:
    api, _ = fleet
    first = fleet_cli(api, "runs", "--agent", "beta", "--limit", "3")
    assert first.returncode == 0, first.stderr
    betas = newest_first([r for r in MINE if r["agent"] == "beta"])
    lines = first.stdout.splitlines()
    assert [line.split()[1] for line in lines] == betas[:3]
    cursor = first.stderr.split("--cursor ")[1].strip()
    second = fleet_cli(api, "runs", "--agent", "beta", "--limit", "3", "--cursor", cursor, "--json")
    assert [r["id"] for r in json.loads(second.stdout)["runs"]] == betas[3:6]
    tagged = fleet_cli(api, "runs", "--metadata", "ticket=T-2", "--metadata", "priority=0", "--json")
    expected = newest_first([r for r in MINE if r["metadata"] == {"ticket": "T-2", "priority": 0}])
    assert [r["id"] for r in json.loads(tagged.stdout)["runs"]] == expected
    bad = fleet_cli(api, "runs", "--since", "2026-11-02T09:00:00")
    assert bad.returncode == 1 and "since" in bad.stderr


def test_fleet_usage_prints_the_rows_and_the_total(fleet: tuple[Fleet, Engine]) -> None:
    api, _ = fleet
    day = T0.date().isoformat()
    table = fleet_cli(api, "usage", "--from", day, "--to", day, "--group-by", "agent")
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == ["alpha", "beta", "total"]
    assert rows[-1][1:] == ["60", "30", "3000", "7.500000"]
    admin = fleet_cli(api, "usage", "--from", day, "--to", day, "--tenant", "t2", "--json", key=ADMIN_KEY)
    assert json.loads(admin.stdout)["total"]["steps"] == 28
    refused = fleet_cli(api, "usage", "--tenant", "t2")
    assert refused.returncode == 1 and "403" in refused.stderr


# -- PostgreSQL --------------------------------------------------------------------------------------


def test_the_api_on_postgresql_and_through_a_database_outage() -> None:
    """The same answers from PostgreSQL; while it is down, 503 (never a 500); back up, it heals."""
    pg = PostgresServer()
    server = RedisServer()
    engine = create_engine(pg.url)
    api = Fleet(server, {}, {"FLEET_DATABASE_URL": pg.url})
    try:
        populate(engine)
        api.start_api()
        pages = [get(api, "/v1/runs", limit=16).json()]
        pages.append(get(api, "/v1/runs", limit=16, cursor=pages[0]["next_cursor"]).json())
        assert [r["id"] for p in pages for r in p["runs"]] == newest_first(MINE)
        assert pages[1]["next_cursor"] is None
        day = T0.date().isoformat()
        assert get(api, "/v1/usage", **{"from": day, "to": day}).json()["total"]["steps"] == 60
        pg.stop()
        down = get(api, "/v1/runs")
        assert down.status_code == 503, down.text
        assert get(api, "/v1/usage").status_code == 503
        pg.start()
        assert get(api, "/v1/runs", limit=1).status_code == 200
    finally:
        api.close()
        server.close()
        engine.dispose()
        pg.close()
