"""`GET /v1/runs/{id}/events` (CONTRACT.md, "Events" and "Per-tenant limits") against a real
redis-server, `fleet api`, an agent worker and a tool worker.

The module's fleet allows each tenant MAX_WAITERS open waits and event streams. Every stream is
read with httpx's streaming client under a read timeout and an overall deadline, so a server that
never closes a stream fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.api_client import Event, EventReader, assert_error, stream_client
from tests.harness import KEY_T1, KEY_T2, Fleet, RedisServer, wait_for
from worker.keys import Keys
from worker.run.events import END
from worker.run.store import Budgets, RunStore

KEYS = Keys("fleet")
MAX_WAITERS = 2


@pytest.fixture(scope="module")
def events_fleet() -> Iterator[Fleet]:
    server = RedisServer()
    fleet = Fleet(server, {}, {"FLEET_MAX_WAITERS_PER_TENANT": str(MAX_WAITERS)})
    try:
        fleet.start(workers=1, concurrency=2)
        yield fleet
    finally:
        fleet.close()
        server.close()


def events_of(resp: httpx.Response, stop_after: int | None = None) -> list[Event]:
    return EventReader(resp).take(stop_after)


def stream(fleet: Fleet, run_id: str, last_event_id: str | None = None, key: str = KEY_T1) -> list[Event]:
    """Every event of one connection, which must close by itself."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    with (
        stream_client(key) as c,
        c.stream("GET", f"{fleet.url}/v1/runs/{run_id}/events", headers=headers) as resp,
    ):
        return events_of(resp)


def submit(fleet: Fleet, plan: list[dict[str, Any]], **body: Any) -> str:
    return str(fleet.submit(input={"plan": plan}, **body)["id"])


def held_slots(fleet: Fleet, tenant: str = "t1") -> int:
    return int(fleet.r.zcard(KEYS.waiters(tenant)))


def assert_complete(events: list[Event], fleet: Fleet, run_id: str, status: str) -> None:
    """`events` is the run's whole story: queued, running, one step per step-log entry (the same
    JSON), the terminal status, then `end` equal to GET /v1/runs/{id}; ids strictly increase."""
    run = fleet.get(run_id, steps="true")
    steps = run.pop("steps")
    names = [e.name for e in events]
    assert names == ["status", "status", *["step"] * len(steps), "status", END], names
    assert [e.data["status"] for e in events if e.name == "status"] == ["queued", "running", status]
    assert [e.data for e in events if e.name == "step"] == steps
    assert events[-1].data == run == fleet.get(run_id)
    assert [e.order for e in events] == sorted({e.order for e in events})


# -- a run's whole stream ----------------------------------------------------------------------------


def test_a_multi_step_run_streams_its_statuses_every_step_and_its_end_then_closes(
    events_fleet: Fleet,
) -> None:
    plan = [
        {"sleep": 0.3},  # a sleep over runtime.park_after_ms parks: no status event for that
        {"tool": "echo", "args": {"n": 1}},
        {"sleep": 0.2},
        {"tool": "echo", "args": {"n": 2, "token": "sk-live-0123456789abcdef0123"}},
        {"final": "done"},
    ]
    run_id = submit(events_fleet, plan)
    events = stream(events_fleet, run_id)  # open at once: the run is queued or just started
    assert_complete(events, events_fleet, run_id, "succeeded")
    assert len([e for e in events if e.name == "step"]) == 4
    assert events[-2].data == {"status": "succeeded", "stop_reason": "finish"}
    assert "sk-live-0123456789abcdef0123" not in json.dumps([e.data for e in events])
    assert held_slots(events_fleet) == 0  # the stream freed its slot when it closed


def test_reconnects_with_last_event_id_lose_and_repeat_nothing(events_fleet: Fleet) -> None:
    run_id = submit(events_fleet, [{"sleep": 0.4}] * 6 + [{"final": "ok"}])
    url = f"{events_fleet.url}/v1/runs/{run_id}/events"
    with stream_client() as c:
        with c.stream("GET", url) as resp:  # leaves after the second step, mid-run
            first = events_of(resp, stop_after=4)
        assert [e.name for e in first] == ["status", "status", "step", "step"]
        assert events_fleet.get(run_id)["status"] == "running"
        with c.stream("GET", url, headers={"Last-Event-ID": first[-1].id}) as resp:  # again mid-run
            second = events_of(resp, stop_after=2)
        assert [e.name for e in second] == ["step", "step"]
        events_fleet.wait(run_id)
        # the run ended while the client was away: the rest, then `end`, at once
        third = stream(events_fleet, run_id, last_event_id=second[-1].id)
    complete = stream(events_fleet, run_id)
    assert_complete(complete, events_fleet, run_id, "succeeded")
    joined = first + second + third
    assert [(e.id, e.name, e.data) for e in joined] == [(e.id, e.name, e.data) for e in complete]
    assert len({e.id for e in joined}) == len(joined)


def test_a_run_that_has_ended_streams_everything_and_its_end_at_once(events_fleet: Fleet) -> None:
    run_id = submit(events_fleet, [{"tool": "echo", "args": {"n": 1}}, {"fail": "on purpose"}])
    assert events_fleet.wait(run_id)["status"] == "failed"
    started = time.monotonic()
    events = stream(events_fleet, run_id)
    assert time.monotonic() - started < 10  # it did not wait for anything (the keep-alive is 15 s)
    assert_complete(events, events_fleet, run_id, "failed")
    # a reconnect after `end` gets 204, which tells an EventSource to stop
    with stream_client() as c:
        again = c.get(f"{events_fleet.url}/v1/runs/{run_id}/events", headers={"Last-Event-ID": events[-1].id})
    assert again.status_code == 204 and again.content == b""


def test_an_ended_run_whose_stream_is_gone_gets_its_end_at_once(events_fleet: Fleet) -> None:
    run_id = submit(events_fleet, [{"final": "old"}])
    events_fleet.wait(run_id)
    events_fleet.r.delete(KEYS.run_events(run_id))  # expired, or written before events existed
    events = stream(events_fleet, run_id)
    assert [e.name for e in events] == [END]
    assert events[0].data == events_fleet.get(run_id)
    with stream_client() as c:
        again = c.get(f"{events_fleet.url}/v1/runs/{run_id}/events", headers={"Last-Event-ID": events[0].id})
    assert again.status_code == 204


def test_a_cancelled_queued_run_streams_its_end(events_fleet: Fleet) -> None:
    """A run cancelled while queued (written straight to the store: no message, so no worker takes
    it): the cancel script writes the status and the end."""
    store = RunStore(events_fleet.r, KEYS)
    run_id = "0" * 31 + "c"
    budgets = Budgets(max_steps=5, max_tool_calls=5, max_seconds=30)
    store.create(run_id, tenant="t1", agent="scripted", input={"plan": []}, budgets=budgets, metadata={})
    with stream_client() as c, c.stream("GET", f"{events_fleet.url}/v1/runs/{run_id}/events") as resp:
        with httpx.Client(headers={"Authorization": f"Bearer {KEY_T1}"}) as other:
            assert other.post(f"{events_fleet.url}/v1/runs/{run_id}/cancel").status_code == 202
        events = events_of(resp)
    assert [(e.name, e.data.get("status")) for e in events] == [
        ("status", "queued"),
        ("status", "cancelled"),
        (END, "cancelled"),
    ]
    assert events[-1].data == events_fleet.get(run_id)


def test_an_event_whose_notification_is_lost_arrives_when_the_subscription_is_back(
    events_fleet: Fleet,
) -> None:
    """The stream reads again at every (re)subscription: a lost PUBLISH costs latency, not the event."""
    store = RunStore(events_fleet.r, KEYS)
    run_id = "0" * 31 + "d"
    budgets = Budgets(max_steps=5, max_tool_calls=5, max_seconds=30)
    store.create(run_id, tenant="t1", agent="scripted", input={"plan": []}, budgets=budgets, metadata={})
    with stream_client() as c, c.stream("GET", f"{events_fleet.url}/v1/runs/{run_id}/events") as resp:
        reader = EventReader(resp)
        assert [e.name for e in reader.take(1)] == ["status"]
        # an event written with no notification, then the API's subscription drops
        events_fleet.r.xadd(KEYS.run_events(run_id), {"event": "step", "data": '{"step": 1}'})
        assert events_fleet.r.client_kill_filter(_type="pubsub") >= 1
        late = reader.take(1, deadline_s=15)
        assert [(e.name, e.data) for e in late] == [("step", {"step": 1})]
        store.cancel(run_id)
        assert [e.name for e in reader.take()] == ["status", END]


def test_stopping_the_api_ends_its_open_streams_so_it_exits(events_fleet: Fleet) -> None:
    """uvicorn waits for open requests before it exits: `fleet api` ends its streams first (their
    clients resume with Last-Event-ID elsewhere), so SIGTERM stops it promptly."""
    other = Fleet(events_fleet.redis, {}, {"FLEET_MAX_WAITERS_PER_TENANT": str(MAX_WAITERS)})
    try:
        api = other.start_api()
        run_id = submit(events_fleet, [{"sleep": 30}], budgets={"max_seconds": 45})
        with stream_client() as c, c.stream("GET", f"{other.url}/v1/runs/{run_id}/events") as resp:
            reader = EventReader(resp)
            assert [e.name for e in reader.take(1)] == ["status"]
            started = time.monotonic()
            api.popen.terminate()
            rest = reader.take()  # the server closes the stream (no `end`: the run goes on)
            api.popen.wait(timeout=30)
            assert time.monotonic() - started < 10  # not the 15 s of Fleet.stop_proc's patience
        assert "Application shutdown complete" in api.text()  # a graceful stop, not a kill
        assert END not in [e.name for e in rest]
    finally:
        other.close()
        with httpx.Client(headers={"Authorization": f"Bearer {KEY_T1}"}) as c:
            c.post(f"{events_fleet.url}/v1/runs/{run_id}/cancel")


# -- refusals ----------------------------------------------------------------------------------------


def test_another_tenants_run_and_a_malformed_id_are_404(events_fleet: Fleet) -> None:
    run_id = submit(events_fleet, [{"final": "mine"}])
    with stream_client(KEY_T2) as c:
        assert "no run" in assert_error(c.get(f"{events_fleet.url}/v1/runs/{run_id}/events"), 404)
    with stream_client() as c:
        for bad in (run_id + ":steps", run_id[:-1], "x" * 32):
            assert "32 hex characters" in assert_error(c.get(f"{events_fleet.url}/v1/runs/{bad}/events"), 404)
    assert held_slots(events_fleet) == 0


@pytest.mark.parametrize(
    "bad", ["abc", "1-2-3", "-1", "12", "1-", "1.5-0", "99999999999999999999999-0", "0-x"]
)
def test_a_malformed_last_event_id_is_422_with_the_error_body(events_fleet: Fleet, bad: str) -> None:
    run_id = submit(events_fleet, [{"final": "x"}])
    with stream_client() as c:
        resp = c.get(f"{events_fleet.url}/v1/runs/{run_id}/events", headers={"Last-Event-ID": bad})
    assert "Last-Event-ID" in assert_error(resp, 422)
    assert held_slots(events_fleet) == 0
    api_log = "\n".join(p.text() for p in events_fleet.procs if p.name == "api")
    assert "Traceback" not in api_log


def test_streams_past_the_tenants_cap_get_429_and_a_closed_stream_frees_its_slot_at_once(
    events_fleet: Fleet,
) -> None:
    run_id = submit(events_fleet, [{"sleep": 30}], budgets={"max_seconds": 45})
    url = f"{events_fleet.url}/v1/runs/{run_id}/events"
    with contextlib.ExitStack() as stack:
        c1, c2, c3 = (stack.enter_context(stream_client()) for _ in range(3))
        first = stack.enter_context(c1.stream("GET", url))
        leaving, held = EventReader(first), EventReader(stack.enter_context(c2.stream("GET", url)))
        try:
            assert [e.name for e in leaving.take(1)] == ["status"]
            assert [e.name for e in held.take(1)] == ["status"]
            assert held_slots(events_fleet) == MAX_WAITERS
            refused = c3.get(url)
            assert f"limit {MAX_WAITERS}" in assert_error(refused, 429)
            assert refused.json()["error"]["type"] == "too_many_waiters"
            assert int(refused.headers["retry-after"]) >= 1
            # the same slots as ?wait
            assert_error(c3.get(f"{events_fleet.url}/v1/runs/{run_id}", params={"wait": 1}), 429)
            other = submit(events_fleet, [{"final": "t2"}], key=KEY_T2)
            assert [e.name for e in stream(events_fleet, other, key=KEY_T2)][-1] == END  # tenants apart

            first.close()  # the client goes away: its slot is free at once, not at its lapse (30 s)
            wait_for(lambda: held_slots(events_fleet) == 1, 5, "the closed stream's slot is still held")
            with c3.stream("GET", url) as third:
                assert [e.name for e in events_of(third, stop_after=1)] == ["status"]
        finally:
            with httpx.Client(headers={"Authorization": f"Bearer {KEY_T1}"}) as c:
                c.post(f"{events_fleet.url}/v1/runs/{run_id}/cancel")
        rest = held.take()  # the open stream sees the cancel and its end, then closes
    assert [e.name for e in rest][-2:] == ["status", END] and rest[-1].data["status"] == "cancelled"
    wait_for(lambda: held_slots(events_fleet) == 0, 5, "slots still held after the streams closed")


# -- the per-step write --------------------------------------------------------------------------------


def test_a_checkpoint_writes_its_event_in_its_one_round_trip(redis_server: RedisServer) -> None:
    """Measured on a real redis-server: every command or pipeline that goes out is counted."""
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    store = RunStore(client, KEYS)
    budgets = Budgets(max_steps=5, max_tool_calls=5, max_seconds=30)
    store.create("r" * 32, tenant="t1", agent="scripted", input={}, budgets=budgets, metadata={})
    sent = 0
    connection_class = client.connection_pool.connection_class
    original = connection_class.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        nonlocal sent
        sent += 1
        original(self, command, check_health)

    connection_class.send_packed_command = counting  # type: ignore[method-assign]
    try:
        store.checkpoint(
            "r" * 32, cursor=1, memory={}, last_result=None, step_entry={"step": 1, "action": "sleep"}
        )
    finally:
        connection_class.send_packed_command = original  # type: ignore[method-assign]
    assert sent == 1
    entries = client.xrange(KEYS.run_events("r" * 32))
    assert [f["event"] for _, f in entries] == ["status", "step"]
    assert entries[-1][1]["data"] == client.lindex(KEYS.run_steps("r" * 32), -1)
