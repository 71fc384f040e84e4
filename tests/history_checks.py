"""Checks of the run history against a running fleet, for the PostgreSQL and the SQLite modules:
a run is archived as GET /v1/runs/{id} shows it, and once Redis no longer holds it the API
answers from the history. The fleets give archived runs a hot TTL of HOT_TTL_S."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import Engine, select

from tests.harness import KEY_T2, Fleet, wait_for
from worker.history.archive import load_run
from worker.history.schema import runs
from worker.keys import Keys

KEYS = Keys("fleet")
HOT_TTL_S = 300  # the modules' fleets set FLEET_HOT_TTL_S to it
PLAN = {"plan": [{"tool": "echo", "args": {"text": "hi"}}, {"final": "done"}]}


def archived_ids(engine: Engine, run_ids: list[str]) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(runs.c.id).where(runs.c.id.in_(run_ids))).scalars())


def wait_archived(fleet: Fleet, engine: Engine, run_ids: list[str], timeout: float = 30) -> None:
    wait_for(
        lambda: (
            len(archived_ids(engine, run_ids)) == len(run_ids)
            and not any(fleet.r.zscore(KEYS.archive_ended(), run_id) for run_id in run_ids)
        ),
        timeout,
        f"runs not archived:\n{fleet.logs()}",
    )


def hot_ttls(fleet: Fleet, run_id: str) -> dict[str, int]:
    """The TTL of each of the run's keys that exist."""
    found = {}
    for key in (
        KEYS.run(run_id),
        KEYS.run_steps(run_id),
        KEYS.run_events(run_id),
        KEYS.call(f"{run_id}:1:0"),
    ):
        ttl = fleet.r.ttl(key)
        if ttl != -2:
            found[key] = ttl
    return found


def assert_archived_as_shown(fleet: Fleet, engine: Engine, run_id: str) -> dict[str, Any]:
    """The database's record and steps equal GET /v1/runs/{id}?steps=true, its Redis keys have
    the hot TTL; returns the run as shown."""
    shown = fleet.get(run_id, steps="true")
    record, steps = load_run(engine, run_id, with_steps=True) or ({}, [])
    assert {**record, "steps": steps} == shown
    ttls = hot_ttls(fleet, run_id)
    assert KEYS.run(run_id) in ttls and all(0 < ttl <= HOT_TTL_S for ttl in ttls.values()), ttls
    return shown


def forget_in_redis(fleet: Fleet, run_id: str) -> None:
    """What the hot TTL does when it passes."""
    fleet.r.delete(*(k for k in fleet.r.scan_iter(f"fleet:*{run_id}*")))


def assert_served_from_history(fleet: Fleet, run_id: str, shown: dict[str, Any]) -> None:
    assert not fleet.r.exists(KEYS.run(run_id))
    assert fleet.get(run_id, steps="true") == shown
    assert fleet.get(run_id) == {k: v for k, v in shown.items() if k != "steps"}
    with fleet.client(KEY_T2) as other:
        answer = other.get(f"/v1/runs/{run_id}")
        assert answer.status_code == 404 and answer.json()["error"]["type"] == "not_found"
        assert other.get(f"/v1/runs/{run_id}/events").status_code == 404
    with fleet.client() as client:
        began = time.monotonic()
        assert client.get(f"/v1/runs/{run_id}", params={"wait": 20}).json()["status"] == shown["status"]
        assert time.monotonic() - began < 5, "?wait on an archived run answers at once"
        events = client.get(f"/v1/runs/{run_id}/events")
        assert events.status_code == 200 and events.headers["content-type"].startswith("text/event-stream")
        end_id = events.text.split("\n")[0].removeprefix("id: ")
        assert "event: end" in events.text and f'"id":"{run_id}"' in events.text
        again = client.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": end_id})
        assert again.status_code == 204, "a reconnect after the end gets 204"
        assert client.get(f"/v1/runs/{uuid.uuid4().hex}").status_code == 404
