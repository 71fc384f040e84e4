"""Runs send no Celery task events, and agent workers log no Celery line per delivery, unless
`observability.run_task_events` is on; the agent worker's heartbeats (Flower's worker list,
/readyz) flow either way. Real workers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import EventTap, Fleet, RedisServer, wait_for


@pytest.fixture(scope="module")
def events_fleet() -> Iterator[Fleet]:
    server = RedisServer()
    f = Fleet(server)
    try:
        f.start_api()
        yield f
    finally:
        f.close()
        server.close()


def from_run_task(event: dict[str, Any]) -> bool:
    return (
        str(event["type"]).startswith("task-") and event.get("name", "fleet.run_agent") == "fleet.run_agent"
    )


def test_runs_send_no_task_events_by_default_and_the_setting_turns_them_on(events_fleet: Fleet) -> None:
    tap = EventTap(events_fleet)
    try:
        quiet = events_fleet.start_worker(1)
        wait_for(lambda: tap.seen(lambda e: e["type"] == "worker-heartbeat"), 15, "no heartbeat")
        run = events_fleet.submit(input={"plan": [{"final": "quiet"}]})
        assert events_fleet.wait(run["id"])["status"] == "succeeded"
        events_fleet.stop_proc(quiet)
        assert tap.seen(lambda e: str(e["type"]).startswith("task-")) == []
        assert '"run started"' in quiet.text() and "Task fleet.run_agent[" not in quiet.text()

        saved = events_fleet.env
        events_fleet.env = {**saved, "FLEET_OBSERVABILITY__RUN_TASK_EVENTS": "true"}
        try:
            loud = events_fleet.start_worker(1)
        finally:
            events_fleet.env = saved
        run = events_fleet.submit(input={"plan": [{"final": "loud"}]})
        assert events_fleet.wait(run["id"])["status"] == "succeeded"
        wait_for(
            lambda: tap.seen(lambda e: e["type"] == "task-succeeded" and from_run_task(e)),
            10,
            "the configured agent worker sent no task events",
        )
        assert {e["type"] for e in tap.seen(from_run_task)} >= {"task-received", "task-started"}
        events_fleet.stop_proc(loud)
        # and Celery's line of each delivery (its `… succeeded` line stays off: `run finished`)
        assert re.search(r"Task fleet\.run_agent\[[0-9a-f-]+\] received", loud.text()), loud.text()[-2000:]
    finally:
        tap.close()
