"""Unit tests of a run's events on fakeredis with Lua: which script writes which event
(worker/run/events.py, worker/run/store.py), and the API's reading of them (api/events.py). The
stream over HTTP, against real processes, is tested in tests/api/test_events.py."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any, cast

import fakeredis
import pytest

from api.deps import AppState
from api.errors import ApiError
from api.events import READ_BATCH, Batch, RunEvents, end_id_for, frame, parse_event_id
from tests.unit_parts import parked_run
from worker.keys import Keys
from worker.run.events import EVENTS_MAX
from worker.run.store import STEP_LOG_MAX, Budgets, RunStore, public_view
from worker.run.timers import Timers, end_killed

KEYS = Keys("fleet")
BUDGETS = Budgets(max_steps=5, max_tool_calls=2, max_seconds=30)


def new_run(store: RunStore, run_id: str = "r1", **kwargs: Any) -> None:
    store.create(
        run_id, tenant="t1", agent="scripted", input={"plan": []}, budgets=BUDGETS, metadata={}, **kwargs
    )


def events(r: fakeredis.FakeRedis, run_id: str = "r1") -> list[tuple[str, Any]]:
    """(name, data) of every entry of the run's stream; `end` has no stored data."""
    found = []
    for _, fields in r.xrange(KEYS.run_events(run_id)):
        found.append((fields["event"], json.loads(fields["data"]) if fields["data"] else None))
    return found


def checkpoint(store: RunStore, step: int, run_id: str = "r1") -> None:
    entry = {"step": step, "action": "tool", "tool": "echo", "ok": True, "duration_ms": 1.5}
    store.checkpoint(run_id, cursor=step, memory={}, last_result=None, step_entry=entry)


# -- the writers ---------------------------------------------------------------------------------------


def test_a_runs_life_writes_queued_running_each_step_then_its_status_and_end(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    new_run(store)
    store.start("r1", "host:1:a")
    store.start("r1", "host:2:b", takeover="host:1:a")  # a second attempt: no new status
    checkpoint(store, 1)
    checkpoint(store, 2)
    assert store.finish("r1", "succeeded", "finish", output="ok")
    assert not store.finish("r1", "failed", "error")  # an ended run writes nothing again
    assert events(r) == [
        ("status", {"status": "queued", "stop_reason": None}),
        ("status", {"status": "running", "stop_reason": None}),
        ("step", store.steps("r1")[0]),
        ("step", store.steps("r1")[1]),
        ("status", {"status": "succeeded", "stop_reason": "finish"}),
        ("end", None),
    ]
    # a step event is the step log's very text
    step_texts = [f["data"] for _, f in r.xrange(KEYS.run_events("r1")) if f["event"] == "step"]
    assert step_texts == r.lrange(KEYS.run_steps("r1"), 0, -1)


def test_parking_and_resuming_write_no_event(r: fakeredis.FakeRedis, store: RunStore) -> None:
    timers = Timers(r, KEYS)
    park = parked_run(store, timers)
    assert store.start("r1", "host:1:resume", wake=park).raw is not None  # the resume
    assert [name for name, _ in events(r)] == ["status", "status"]


def test_a_cancel_writes_the_end_of_a_queued_run_only(r: fakeredis.FakeRedis, store: RunStore) -> None:
    new_run(store, "queued")
    store.cancel("queued")
    assert events(r, "queued")[1:] == [
        ("status", {"status": "cancelled", "stop_reason": "cancelled"}),
        ("end", None),
    ]
    new_run(store, "running")
    store.start("running", "host:1:a")
    store.cancel("running")  # it stops at its next check; the end script writes its end then
    assert [name for name, _ in events(r, "running")] == ["status", "status"]


def test_refused_submissions_and_sweeps_that_end_nothing_write_no_event(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    from worker.run.store import AdmissionRefused

    r.set(KEYS.kill_all(), "incident")
    with pytest.raises(AdmissionRefused):
        new_run(store, "refused", admission=("agents", [KEYS.kill_all()], -1))
    assert not r.exists(KEYS.run_events("refused"))
    r.delete(KEYS.kill_all())
    new_run(store)
    store.start("r1", "host:1:a")
    assert end_killed(store, [("r1", "x", "parked")]) == []  # executing, not parked: the sweep leaves it
    assert [name for name, _ in events(r)] == ["status", "status"]


def test_the_stream_expires_with_the_run_and_keeps_at_least_the_whole_step_log() -> None:
    r = fakeredis.FakeRedis(decode_responses=True)
    store = RunStore(r, KEYS, ttl_s=1000)
    new_run(store)
    store.start("r1", "host:1:a")
    assert 0 < r.ttl(KEYS.run_events("r1")) <= 1000
    for step in range(1, EVENTS_MAX + 50):
        checkpoint(store, step)
    store.finish("r1", "stopped", "max_steps")
    assert 0 < r.ttl(KEYS.run_events("r1")) <= 1000
    assert EVENTS_MAX >= STEP_LOG_MAX + 4  # queued, running, the end's status and end
    assert r.xlen(KEYS.run_events("r1")) == EVENTS_MAX
    kept = [f["data"] for _, f in r.xrange(KEYS.run_events("r1")) if f["event"] == "step"]
    assert kept[-STEP_LOG_MAX:] == r.lrange(KEYS.run_steps("r1"), 0, -1)


# -- the reader ----------------------------------------------------------------------------------------


def test_event_ids_parse_as_redis_orders_them_and_anything_else_is_a_422() -> None:
    assert parse_event_id("1733130000000-7") == (1733130000000, 7)
    assert parse_event_id(None) is None and parse_event_id("  ") is None
    assert parse_event_id("2-0") > parse_event_id("1-99")  # type: ignore[operator]
    for bad in ("abc", "1-2-3", "-1", "12", "1-", "0x1-0", "1-0 junk", "18446744073709551616-0"):
        with pytest.raises(ApiError) as refused:
            parse_event_id(bad)
        assert refused.value.status == 422 and "Last-Event-ID" in refused.value.message


def test_a_frame_is_one_sse_event_and_an_end_the_stream_lacks_comes_after_its_last_entry() -> None:
    assert frame("5-0", "step", '{"a":1}') == b'id: 5-0\nevent: step\ndata: {"a":1}\n\n'
    assert frame("5-1", "x", "a\nb") == b"id: 5-1\nevent: x\ndata: a\ndata: b\n\n"
    assert end_id_for(None, 12.3456) == (12345, 0)
    assert end_id_for((9000, 3), 12.0) == (12000, 0)
    assert end_id_for((12000, 3), 12.0) == (12000, 4)


def reader_on(run_id: str, after: tuple[int, int] | None = None) -> tuple[fakeredis.FakeRedis, RunEvents]:
    """A sync client for the writers and an async reader on the same fake server."""
    server = fakeredis.FakeServer()
    r = fakeredis.FakeRedis(server=server, decode_responses=True)
    ar = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    state = cast(AppState, SimpleNamespace(ar=ar, keys=KEYS))
    return r, RunEvents(state, run_id, after)


def names(batch: Batch) -> list[str]:
    return [f.split(b"\n")[1].decode().removeprefix("event: ") for f in batch.frames]


def test_the_reader_sends_each_event_once_then_the_run_as_the_api_shows_it_and_stops() -> None:
    r, reader = reader_on("r1")
    store = RunStore(r, KEYS)
    new_run(store)
    store.start("r1", "host:1:a")
    first = asyncio.run(reader.read())
    assert names(first) == ["status", "status"] and not first.over
    assert asyncio.run(reader.read()) == Batch()  # nothing new: not over while the run goes on
    checkpoint(store, 1)
    store.finish("r1", "succeeded", "finish", output="fine")
    last = asyncio.run(reader.read())
    assert names(last) == ["step", "status", "end"] and last.over
    end_data = last.frames[-1].split(b"\ndata: ")[1].strip()
    assert json.loads(end_data) == json.loads(json.dumps(public_view(store.load("r1") or {})))
    # a reconnect with the end's id: nothing follows (the route answers 204)
    end_id = last.frames[-1].split(b"\n")[0].decode().removeprefix("id: ")
    again = RunEvents(reader.state, "r1", parse_event_id(end_id))
    assert asyncio.run(again.read()) == Batch(over=True)


def test_a_reader_resumes_strictly_after_its_id_and_reads_a_long_backlog_in_batches() -> None:
    r, reader = reader_on("r1")
    store = RunStore(r, KEYS)
    new_run(store)
    store.start("r1", "host:1:a")
    for step in range(1, READ_BATCH + 10):
        checkpoint(store, step)
    ids = [entry_id for entry_id, _ in r.xrange(KEYS.run_events("r1"))]
    batch = asyncio.run(reader.read())
    assert len(batch.frames) == READ_BATCH and batch.more
    rest = asyncio.run(reader.read())
    assert len(rest.frames) == len(ids) - READ_BATCH and not rest.more
    resumed = RunEvents(reader.state, "r1", parse_event_id(ids[5]))
    assert asyncio.run(resumed.read()).frames[0].startswith(f"id: {ids[6]}\n".encode())


def test_an_ended_run_without_its_stream_gets_one_end_and_a_gone_run_nothing() -> None:
    r, reader = reader_on("r1")
    store = RunStore(r, KEYS)
    new_run(store)
    store.cancel("r1")
    r.delete(KEYS.run_events("r1"))  # expired, or the run is older than the events
    batch = asyncio.run(reader.read())
    assert names(batch) == ["end"] and batch.over
    end_id = batch.frames[0].split(b"\n")[0].decode().removeprefix("id: ")
    finished_ms = int(float(store.load("r1")["finished_ts"]) * 1000)  # type: ignore[index]
    assert end_id == f"{finished_ms}-0"
    assert asyncio.run(RunEvents(reader.state, "r1", parse_event_id(end_id)).read()) == Batch(over=True)
    r.delete(KEYS.run("r1"))
    assert asyncio.run(RunEvents(reader.state, "r1", None).read()) == Batch(over=True, gone=True)
